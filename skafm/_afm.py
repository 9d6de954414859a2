"""The public estimators: AFMRegressor and AFMClassifier."""

from numbers import Real

import numpy as np
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import ClassifierMixin, RegressorMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets

from ._base import BaseAFM

_PARAMETERS_TEMPLATE = """
    n_factors : int, default=64
        Size k of the feature embeddings.

    attention_size : int, default=16
        Number of hidden units t of the attention network.

    attention : bool, default=True
        Whether to weigh feature interactions with the attention network. If
        False, interactions are summed with equal weights and the model is a
        plain factorization machine (FM).

    alpha : {alpha_type}, default={alpha}
        Strength of the L2 penalty on the embeddings and linear weights; its
        scale depends on ``penalty_scope``. Only the parameters of a batch's
        active features are penalised in a step, so the cost of a step does
        not grow with ``n_features``.{alpha_auto}
    penalty_scope : {"feature", "sample"}, default="{penalty_scope}"
        What ``alpha`` is counted per. "feature": the objective adds
        ``alpha / n_samples * sum_j |theta_j|^2`` over the features seen in
        training, a fixed Gaussian prior on each feature's parameters as in
        a Bayesian FM: a rarely seen feature (a user with three ratings) is
        shrunk strongly, a frequent one is left to its data, and the same
        ``alpha`` suits small and large data sets. Each occurrence of
        feature j carries ``alpha / n_j`` of it, ``n_j`` its (sample-weighted)
        number of occurrences; :meth:`partial_fit` counts over all its
        calls. "sample": each sample adds ``alpha`` times the squared norm of
        its own active features' parameters, so a feature's penalty grows
        with its frequency (the usual SGD factorization machine).

    attention_alpha : float, default=0.0
        Strength of the L2 penalty on the weight matrix W of the attention
        network (the paper's lambda).

    dropout : float, default={dropout}
        Dropout rate on the pooled interaction vector during training, the
        main regulariser. Never applied at prediction time.

    attention_dropout : float, default=0.0
        Dropout rate on the attention weights during training. Never applied
        at prediction time.

    average_window : "auto", float or None, default="auto"
        Span, in epochs, of an exponential moving average of the weights,
        updated after every optimizer step and started from the initial
        weights (``average = d * average + (1 - d) * weights`` with
        ``d = 1 - 1 / (average_window * steps_per_epoch)``). Predictions, the
        validation score and the weights kept by early stopping are those of
        the average: it smooths out the noise of the steps and shrinks rarely
        seen features towards their start. "auto": for the classifier, 40
        epochs when early stopping is on (the validation score then decides
        how long to train; after a fixed number of epochs a long average lags
        behind), else none; for the regressor, none (the shrinkage cost more
        than it gave on low-noise targets). None or 0 predicts with the last
        weights. Training always
        continues from the last weights (``warm_start``, ``partial_fit``).

    optimizer : {"adam", "adagrad"}, default="{optimizer}"
        Stochastic optimizer. Both update only the embedding and linear rows
        of the features present in a mini-batch ("adam" uses lazy sparse Adam
        for these tables). Adagrad's steps shrink with each feature's own
        gradients, so frequent features settle while rare ones keep learning.

    learning_rate_init : float, default={learning_rate_init}
        Learning rate of the optimizer.

    batch_size : int or "auto", default="auto"
        Number of samples per mini-batch. "auto" takes
        ``min(256, n_samples // 10)`` (at least 1), so that a small data set
        still gets ten optimizer steps per epoch; ``n_samples`` counts the
        samples trained on (without the early-stopping validation part, and
        per call in :meth:`partial_fit`).

    max_iter : int, default=100
        Maximum number of epochs (passes over the training data) of each
        training phase (see ``init``).

    tol : float, default=1e-4
        Tolerance for the optimization: training stops when the watched
        quantity (the training loss, or the validation score with early
        stopping) has not improved by at least ``tol`` for
        ``n_iter_no_change`` consecutive epochs.

    early_stopping : "auto" or bool, default="auto"
        Whether to stop training when the validation score stops improving,
        then restore the weights of the best epoch. The validation data is
        ``X_val, y_val`` when passed to :meth:`fit`, otherwise a
        ``validation_fraction`` of the training data set aside
        (stratified for the classifier). "auto" enables it when
        ``n_samples > 10_000`` or when ``X_val`` is passed.

    validation_fraction : float, default=0.1
        Proportion of the training data set aside for early stopping. Only
        used when early stopping is enabled and no ``X_val`` is passed.

    n_iter_no_change : int, default=10
        Number of epochs without improvement of at least ``tol`` before
        training stops.

    scoring : str, callable or None, default="loss"
        Validation score used for early stopping. "loss" is the negative
        loss of the model (mean squared error for the regressor, log-loss for
        the classifier), computed directly on the network; any other value is
        passed to :func:`sklearn.metrics.check_scoring` (None uses the
        estimator's ``score`` method).

    shuffle : bool, default=True
        Whether to shuffle the samples in each epoch.

    warm_start : bool, default=False
        When True, :meth:`fit` continues training the fitted network (and
        optimizer state) instead of starting anew. The classes, the number
        of features, ``n_factors``, ``attention_size`` and ``attention``
        cannot change between such calls.

    random_state : int, RandomState instance or None, default=None
        Seeds parameter initialization, shuffling and dropout. Pass an int for
        reproducible results across calls; torch's global random state is
        never used or changed.

    init : {"fm", "frozen_fm", "random"}, default="{init}"
        How :meth:`fit` initializes the network. "fm": first fit a plain
        factorization machine with the same settings (and the same early
        stopping), then start the AFM from its bias, linear weights and
        embeddings, with uniform attention and the projection scaled so that a
        row with the mean number of pairs starts at the FM's output: the
        paper's pre-training. Those tables keep the FM's optimizer state
        (Adagrad's sums, Adam's moments), so the AFM's first steps are as
        small as the FM's last. With early stopping the FM's weights are a
        candidate too: when no AFM epoch beats the FM's best validation
        score, the FM itself is kept (``best_phase_ == "fm"``; a later warm
        start trains the AFM from it again). It about doubles the fitting
        time. ``n_iter_``, ``loss_curve_`` and ``validation_scores_`` list the
        epochs of both phases, the FM's first; ``phases_`` tells them apart.
        "frozen_fm": the same start, but the FM's embeddings and linear
        weights stay fixed while the AFM trains: only the attention network,
        the projection and the bias learn, which cannot overfit the way the
        tables can (later warm starts and :meth:`partial_fit` train all the
        weights). "random": start from small random embeddings. Ignored when
        ``attention=False``, by warm starts and by :meth:`partial_fit`.

    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the network is trained and evaluated. "auto" uses a CUDA GPU
        when one is available. Fitted models are always pickled with their
        weights on the CPU, so they load on machines without a GPU.

    n_threads : int or None, default=None
        At most this many CPU threads for torch inside this estimator's
        methods, set for the calling thread only and never through torch's
        process-wide ``torch.set_num_threads``. None keeps the limits already
        in force: those joblib sets in its worker processes (so
        ``GridSearchCV(n_jobs=...)`` does not oversubscribe the CPU), an
        enclosing :func:`threadpoolctl.threadpool_limits`, or torch's own
        setting. Set it when running several fits in threads, e.g. with
        joblib's "threading" backend. Never more threads than the process may
        run on: its CPU affinity, and a container's CPU quota (cgroup v1 or
        v2, rounded up), which torch itself ignores. Within that limit,
        training uses fewer threads while other processes hold cores and
        fewer are measured to be faster, and prediction the cores others left
        free (results do not change with the count;
        ``SKAFM_ADAPTIVE_THREADS=0`` keeps it fixed at the limit).

    verbose : int, default=0
        Print the training loss and time of each epoch when positive.
"""


def _parameters_doc(**defaults):
    """The shared parameter docs, with this estimator's own defaults filled in."""
    doc = _PARAMETERS_TEMPLATE
    for name, value in defaults.items():
        doc = doc.replace("{" + name + "}", str(value))
    return doc


_ATTRIBUTES_DOC = """
    n_features_in_ : int
        Number of features seen during :meth:`fit`.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during :meth:`fit`. Defined only when `X`
        has feature names that are all strings.

    n_iter_ : int
        Number of epochs run, over all training phases and calls (warm
        starts and :meth:`partial_fit`); the length of ``loss_curve_``.
    phases_ : list of dict
        One entry per training phase run, in order: ``"phase"`` ("fm" for
        the factorization machine of ``init="fm"`` or ``"frozen_fm"`` or of
        ``attention=False``, "afm" for the attentional one), ``"n_iter"``
        (its epochs) and ``"best_validation_score"`` (None without early
        stopping).
    best_phase_ : str
        The phase whose weights predict: "afm", or "fm" when the
        attentional phase never beat the factorization machine it started
        from (or ``attention=False``).
    alpha_ : float
        Strength of the L2 penalty when the predicting weights' training
        ended: ``alpha`` itself, or where ``alpha="auto"`` took it.

    t_ : int
        Number of training samples seen by the optimizer.

    loss_curve_ : list of float
        Training objective (mean loss plus penalties) of each epoch.

    validation_scores_ : list of float or None
        Validation score of each epoch; None without early stopping.

    best_validation_score_ : float or None
        Best validation score, ``max(validation_scores_)``, that of the
        weights that predict; None without early stopping.

    best_loss_ : float or None
        Lowest training objective reached; None with early stopping.

    module_ : torch.nn.Module
        The fitted network.
"""

_REFERENCES_DOC = """
    References
    ----------
    Jun Xiao, Hao Ye, Xiangnan He, Hanwang Zhang, Fei Wu and Tat-Seng Chua.
    "Attentional Factorization Machines: Learning the Weight of Feature
    Interactions via Attention Networks." IJCAI 2017. arXiv:1708.04617.
"""


def _validation_triplet(X_val, y_val, sample_weight_val):
    """None, or the validation data passed to fit."""
    if X_val is None and y_val is None:
        if sample_weight_val is not None:
            raise ValueError("sample_weight_val is passed without X_val and y_val.")
        return None
    return X_val, y_val, sample_weight_val


# Chosen on a validation part of the Frappe training file (see
# benchmarks/README.md): a large embedding, a small attention network, strong
# dropout on the pooled interactions and FM pre-training generalise best.
_DEFAULTS = dict(
    n_factors=64,
    attention_size=16,
    attention=True,
    # the regressor's (see ALPHA_PER_NOISE)
    alpha="auto",
    penalty_scope="feature",
    attention_alpha=0.0,
    dropout=0.5,
    attention_dropout=0.0,
    average_window="auto",
    # the regressor's optimizer and rate, chosen with search_defaults.py on
    # the validation parts of Frappe and ml-latest-small together
    optimizer="adagrad",
    learning_rate_init=0.05,
    batch_size="auto",
    max_iter=100,
    tol=1e-4,
    early_stopping="auto",
    validation_fraction=0.1,
    n_iter_no_change=10,
    scoring="loss",
    shuffle=True,
    warm_start=False,
    random_state=None,
    init="fm",
    device="cpu",
    n_threads=None,
    verbose=0,
)


# |y| above this overflows the standardisation's squares in float64 or the
# float32 network's outputs once scaled back
MAX_TARGET = 1e30


# alpha="auto": the penalty's strength per unit of noise variance (in units
# of the target's variance), i.e. the parameters' prior precision. Chosen
# with search_defaults.py on the validation parts of Frappe and
# ml-latest-small together, confirmed by bench_suite.py
ALPHA_PER_NOISE = 12.0

_REGRESSOR_PARAMETERS_DOC = _parameters_doc(
    optimizer=_DEFAULTS["optimizer"],
    dropout=_DEFAULTS["dropout"],
    alpha='"auto"',
    alpha_type='float or "auto"',
    alpha_auto=f"""
        "auto" lets it follow the noise in the data: after each epoch alpha
        is set to {ALPHA_PER_NOISE:g} times the mean squared error of the
        held-out part (the early stopping split or ``X_val``; without one,
        the epoch's training loss), measured in units of the target's
        variance. It starts at {ALPHA_PER_NOISE:g}, all of the variance
        counted as noise. A MAP estimate's penalty is the noise variance
        times the prior precision of the parameters, so noisy targets get
        strong shrinkage and clean ones weak; ``alpha_`` is the value
        reached.""",
    init=_DEFAULTS["init"],
    penalty_scope=_DEFAULTS["penalty_scope"],
    learning_rate_init=_DEFAULTS["learning_rate_init"],
)


class AFMRegressor(RegressorMixin, BaseAFM):
    __doc__ = f"""Attentional factorization machine for regression.

    Models a target as a global bias, a linear term and the attention-weighted
    sum of the pairwise interactions of each sample's active (non-zero)
    features, trained on the squared error. Built for sparse one-hot data such
    as the output of :class:`~sklearn.preprocessing.OneHotEncoder`; dense
    real-valued features work too (each embedding is scaled by its value).
    Sparse inputs are never densified.

    The target is standardized internally; predictions are in its original
    units.

    Parameters
    ----------{_REGRESSOR_PARAMETERS_DOC}
    Attributes
    ----------{_ATTRIBUTES_DOC}
    See Also
    --------
    AFMClassifier : Attentional factorization machine for classification.
{_REFERENCES_DOC}
    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import OneHotEncoder
    >>> from skafm import AFMRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 4, size=(300, 3))
    >>> y = (X[:, 0] == X[:, 1]) * 2.0 + X[:, 2] + rng.normal(0, 0.1, 300)
    >>> model = make_pipeline(
    ...     OneHotEncoder(handle_unknown="ignore"),
    ...     AFMRegressor(random_state=0),
    ... ).fit(X, y)
    >>> model.predict(X[:2]).shape
    (2,)
    >>> model.score(X, y) > 0.9
    True
    """

    def __init__(
        self,
        *,
        n_factors=_DEFAULTS["n_factors"],
        attention_size=_DEFAULTS["attention_size"],
        attention=_DEFAULTS["attention"],
        alpha=_DEFAULTS["alpha"],
        penalty_scope=_DEFAULTS["penalty_scope"],
        attention_alpha=_DEFAULTS["attention_alpha"],
        dropout=_DEFAULTS["dropout"],
        attention_dropout=_DEFAULTS["attention_dropout"],
        average_window=_DEFAULTS["average_window"],
        optimizer=_DEFAULTS["optimizer"],
        learning_rate_init=_DEFAULTS["learning_rate_init"],
        batch_size=_DEFAULTS["batch_size"],
        max_iter=_DEFAULTS["max_iter"],
        tol=_DEFAULTS["tol"],
        early_stopping=_DEFAULTS["early_stopping"],
        validation_fraction=_DEFAULTS["validation_fraction"],
        n_iter_no_change=_DEFAULTS["n_iter_no_change"],
        scoring=_DEFAULTS["scoring"],
        shuffle=_DEFAULTS["shuffle"],
        warm_start=_DEFAULTS["warm_start"],
        random_state=_DEFAULTS["random_state"],
        init=_DEFAULTS["init"],
        device=_DEFAULTS["device"],
        n_threads=_DEFAULTS["n_threads"],
        verbose=_DEFAULTS["verbose"],
    ):
        super().__init__(
            n_factors=n_factors,
            attention_size=attention_size,
            attention=attention,
            alpha=alpha,
            penalty_scope=penalty_scope,
            attention_alpha=attention_alpha,
            dropout=dropout,
            attention_dropout=attention_dropout,
            average_window=average_window,
            optimizer=optimizer,
            learning_rate_init=learning_rate_init,
            batch_size=batch_size,
            max_iter=max_iter,
            tol=tol,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            scoring=scoring,
            shuffle=shuffle,
            warm_start=warm_start,
            random_state=random_state,
            init=init,
            device=device,
            n_threads=n_threads,
            verbose=verbose,
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self,
        X,
        y,
        sample_weight=None,
        *,
        X_val=None,
        y_val=None,
        sample_weight_val=None,
    ):
        """Fit the model to data X and target y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. CSR, CSC and COO matrices and arrays are accepted;
            CSR avoids a conversion.

        y : array-like of shape (n_samples,)
            Target values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples. None gives every sample
            weight 1.

        X_val : {array-like, sparse matrix} of shape (n_val, n_features), \
                default=None
            Validation data for early stopping, instead of a
            ``validation_fraction`` of the training data.

        y_val : array-like of shape (n_val,), default=None
            Targets of ``X_val``.

        sample_weight_val : array-like of shape (n_val,), default=None
            Weights of the validation samples.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        validation = _validation_triplet(X_val, y_val, sample_weight_val)
        return self._fit(X, y, sample_weight, validation=validation)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Train for one epoch over the given samples.

        The first call fixes the number of features and the standardization
        of the target (from this first batch of samples); later calls, and a
        previous :meth:`fit`, are continued.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data.

        y : array-like of shape (n_samples,)
            Target values.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        return self._fit(X, y, sample_weight, incremental=True)

    def _init_target_encoding(self, y, sample_weight, classes=None, collective=None):
        y = np.asarray(y, dtype=np.float64)

        def largest_of(values):
            largest = np.abs(values).max(initial=0.0)
            return largest if collective is None else float(collective.max(largest))

        def average(values):
            if collective is None:
                return np.average(values, weights=sample_weight)
            sums = collective.sum([np.dot(values, sample_weight), sample_weight.sum()])
            return sums[0] / sums[1]

        largest = largest_of(y)
        if largest > MAX_TARGET:
            raise ValueError(
                f"The target reaches {largest:.3g}, beyond the {MAX_TARGET:.0e} "
                "that training in float32 can represent after standardising: "
                "the target is out of range. Rescale it (e.g. divide it by a "
                "constant or fit on its logarithm)."
            )
        mean = average(y)
        deviations = y - mean
        # the squares of deviations under 1e-154 underflow: scaled first
        largest_deviation = largest_of(deviations)
        if largest_deviation > 0:
            relative = deviations / largest_deviation
            scale = largest_deviation * np.sqrt(average(relative**2))
        else:
            scale = 0.0
        if not np.isfinite(scale) or scale <= 0:
            # a constant target: nothing to standardise
            scale = 1.0
        self._target_mean, self._target_scale = float(mean), float(scale)
        return 1, "squared_error", [0.0]

    def _check_target_unchanged(self, y):
        """Any real-valued target can continue a fitted regressor."""

    def _encode_target(self, y):
        return (
            np.asarray(y, dtype=np.float64) - self._target_mean
        ) / self._target_scale

    _parameter_constraints: dict = {
        **BaseAFM._parameter_constraints,
        "alpha": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
    }

    # a fixed p keeps the FM's embeddings under alpha's penalty: on both
    # real sets' validation parts it beat a trained one (benchmarks/README.md)
    _learns_fm_projection = False

    def _alpha_settings(self):
        if self.alpha == "auto":
            # the standardised target's variance is 1: all noise to begin with
            return {"alpha": ALPHA_PER_NOISE, "alpha_per_noise": ALPHA_PER_NOISE}
        return super()._alpha_settings()

    def _loss_scale(self):
        return self._target_scale**2

    def _output_units(self):
        return self._target_scale, self._target_mean

    def predict(self, X):
        """Predict targets for the samples in X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted values.
        """
        raw = self._raw_output(X)[:, 0]
        return raw * self._target_scale + self._target_mean


# The classifier's own defaults, chosen as the regressor's (on both real
# sets' validation parts): its log-loss wants a weaker penalty and a faster
# learning rate than squared error (benchmarks/README.md, "Defaults")
_CLASSIFIER_DROPOUT = 0.7
_CLASSIFIER_ALPHA = 1.0
_CLASSIFIER_LEARNING_RATE = 0.01
# Adagrad, the regressor's, won on Frappe's log-loss and lost on
# ml-latest-small's (benchmarks/README.md, "How the defaults were chosen")
_CLASSIFIER_OPTIMIZER = "adam"
_CLASSIFIER_INIT = "frozen_fm"
_CLASSIFIER_PARAMETERS_DOC = _parameters_doc(
    optimizer=_CLASSIFIER_OPTIMIZER,
    dropout=_CLASSIFIER_DROPOUT,
    alpha=_CLASSIFIER_ALPHA,
    alpha_type="float",
    alpha_auto="",
    init=_CLASSIFIER_INIT,
    penalty_scope=_DEFAULTS["penalty_scope"],
    learning_rate_init=_CLASSIFIER_LEARNING_RATE,
)


class AFMClassifier(ClassifierMixin, BaseAFM):
    __doc__ = f"""Attentional factorization machine for classification.

    Models the logit of each class as a global bias, a linear term and the
    attention-weighted sum of the pairwise interactions of each sample's
    active (non-zero) features, trained on the log-loss: a sigmoid output for
    two classes, a softmax over ``n_classes`` outputs for more. Labels may be
    of any type (integers, strings, booleans). Sparse inputs are never
    densified.

    Parameters
    ----------{_CLASSIFIER_PARAMETERS_DOC}
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
{_ATTRIBUTES_DOC}
    See Also
    --------
    AFMRegressor : Attentional factorization machine for regression.
{_REFERENCES_DOC}
    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import OneHotEncoder
    >>> from skafm import AFMClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 4, size=(300, 3))
    >>> y = np.where(X[:, 0] == X[:, 1], "same", "different")
    >>> model = make_pipeline(
    ...     OneHotEncoder(handle_unknown="ignore"),
    ...     AFMClassifier(random_state=0),
    ... ).fit(X, y)
    >>> model.predict(X[:3])
    array(['different', 'different', 'same'], dtype='<U9')
    >>> y[:3]
    array(['different', 'different', 'same'], dtype='<U9')
    >>> model.predict_proba(X[:3]).shape
    (3, 2)
    """

    # Frappe's validation log-loss 0.2635 -> 0.2186 (benchmarks/README.md)
    _auto_average_window = 40.0

    def __init__(
        self,
        *,
        n_factors=_DEFAULTS["n_factors"],
        attention_size=_DEFAULTS["attention_size"],
        attention=_DEFAULTS["attention"],
        alpha=_CLASSIFIER_ALPHA,
        penalty_scope=_DEFAULTS["penalty_scope"],
        attention_alpha=_DEFAULTS["attention_alpha"],
        dropout=_CLASSIFIER_DROPOUT,
        attention_dropout=_DEFAULTS["attention_dropout"],
        average_window=_DEFAULTS["average_window"],
        optimizer=_CLASSIFIER_OPTIMIZER,
        learning_rate_init=_CLASSIFIER_LEARNING_RATE,
        batch_size=_DEFAULTS["batch_size"],
        max_iter=_DEFAULTS["max_iter"],
        tol=_DEFAULTS["tol"],
        early_stopping=_DEFAULTS["early_stopping"],
        validation_fraction=_DEFAULTS["validation_fraction"],
        n_iter_no_change=_DEFAULTS["n_iter_no_change"],
        scoring=_DEFAULTS["scoring"],
        shuffle=_DEFAULTS["shuffle"],
        warm_start=_DEFAULTS["warm_start"],
        random_state=_DEFAULTS["random_state"],
        init=_CLASSIFIER_INIT,
        device=_DEFAULTS["device"],
        n_threads=_DEFAULTS["n_threads"],
        verbose=_DEFAULTS["verbose"],
    ):
        super().__init__(
            n_factors=n_factors,
            attention_size=attention_size,
            attention=attention,
            alpha=alpha,
            penalty_scope=penalty_scope,
            attention_alpha=attention_alpha,
            dropout=dropout,
            attention_dropout=attention_dropout,
            average_window=average_window,
            optimizer=optimizer,
            learning_rate_init=learning_rate_init,
            batch_size=batch_size,
            max_iter=max_iter,
            tol=tol,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            scoring=scoring,
            shuffle=shuffle,
            warm_start=warm_start,
            random_state=random_state,
            init=init,
            device=device,
            n_threads=n_threads,
            verbose=verbose,
        )

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(
        self,
        X,
        y,
        sample_weight=None,
        *,
        X_val=None,
        y_val=None,
        sample_weight_val=None,
    ):
        """Fit the model to data X and class labels y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. CSR, CSC and COO matrices and arrays are accepted;
            CSR avoids a conversion.

        y : array-like of shape (n_samples,)
            Class labels; at least two distinct classes.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples. None gives every sample
            weight 1.

        X_val : {array-like, sparse matrix} of shape (n_val, n_features), \
                default=None
            Validation data for early stopping, instead of a
            ``validation_fraction`` of the training data.

        y_val : array-like of shape (n_val,), default=None
            Targets of ``X_val``.

        sample_weight_val : array-like of shape (n_val,), default=None
            Weights of the validation samples.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        validation = _validation_triplet(X_val, y_val, sample_weight_val)
        return self._fit(X, y, sample_weight, validation=validation)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train for one epoch over the given samples.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. The first call fixes the number of features.

        y : array-like of shape (n_samples,)
            Class labels, all among ``classes``.

        classes : array-like of shape (n_classes,), default=None
            Every class of the problem. Required on the first call (unless the
            model was fitted before) since one batch may miss some classes;
            may be omitted or must be the same on later calls.

        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the samples.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        first_call = not hasattr(self, "classes_")
        if first_call and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        if not first_call and classes is not None:
            if not np.array_equal(self.classes_, np.unique(classes)):
                raise ValueError(
                    f"classes={np.unique(classes)!r} is not the same as on the first "
                    f"call to partial_fit, {self.classes_!r}."
                )
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def _init_target_encoding(self, y, sample_weight, classes=None, collective=None):
        check_classification_targets(y)
        if classes is None:
            classes = np.unique(y)
            weighted = np.unique(np.searchsorted(classes, y)[sample_weight > 0])
            if collective is not None:
                # the labels of all workers' rows, and those with weight
                parts = collective.gather_objects((classes, classes[weighted]))
                classes = np.unique(np.concatenate([part[0] for part in parts]))
                weighted = np.searchsorted(
                    classes, np.unique(np.concatenate([part[1] for part in parts]))
                )
            if len(weighted) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs samples of at least 2 classes with "
                    "positive sample_weight, but the data contains only one class: "
                    f"{classes[weighted[0]].tolist()!r}."
                )
        else:
            classes = np.unique(classes)
            if len(classes) < 2:
                raise ValueError(
                    f"classes must hold at least 2 classes, got {classes!r}."
                )
        self.classes_ = classes
        encoded = self._encode_target(y).astype(np.int64)
        prior = np.bincount(encoded, weights=sample_weight, minlength=len(classes))
        if collective is not None:
            prior = collective.sum(prior)
        prior = np.clip(prior / prior.sum(), 1e-6, 1.0)
        if len(classes) == 2:
            return 1, "log_loss", np.log(prior[1:] / prior[0])
        return len(classes), "multinomial_log_loss", np.log(prior)

    def _check_target_unchanged(self, y):
        check_classification_targets(y)
        if not np.array_equal(np.unique(y), self.classes_):
            raise ValueError(
                "warm_start can only be used where `y` has the same classes as in "
                f"the previous call to fit. Previously got {self.classes_}, `y` has "
                f"{np.unique(y)}."
            )

    def _encode_target(self, y):
        y = np.asarray(y)
        codes = np.searchsorted(self.classes_, y)
        codes = np.clip(codes, 0, len(self.classes_) - 1)
        unknown = self.classes_[codes] != y
        if np.any(unknown):
            raise ValueError(
                f"`y` has classes not in `self.classes_`: {np.unique(y[unknown])!r}; "
                f"the classes are {self.classes_!r}."
            )
        return codes.astype(np.float64)

    def decision_function(self, X):
        """Raw scores (logits) of the samples in X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            For two classes, the logit of ``classes_[1]``; otherwise one logit
            per class.
        """
        raw = self._raw_output(X)
        return raw[:, 0] if len(self.classes_) == 2 else raw

    def predict(self, X):
        """Predict class labels for the samples in X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels, taken from ``classes_``.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X):
        """Probability of each class for the samples in X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Class probabilities, columns in the order of ``classes_``.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = expit(scores)
            return np.column_stack([1.0 - positive, positive])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X):
        """Logarithm of the probability of each class for the samples in X.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
            Log-probabilities, columns in the order of ``classes_``; computed
            without underflow for confident predictions.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack([log_expit(-scores), log_expit(scores)])
        return log_softmax(scores, axis=1)
