"""Shared machinery of the AFM estimators: parameters, validation and fit."""

import contextlib
import copy
import dataclasses
import math
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, is_regressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from ._batching import as_active_features, mean_pair_count
from ._collective import total
from ._device import resolve_device
from ._nn import AttentionalFactorizationMachine
from ._nn.inference import predict_raw
from ._state import StateMixin, unchanged_on_failure
from ._threads import prediction_threads, thread_limit
from ._training import (
    OptimizationConfig,
    StoppingRule,
    Trainer,
    TrainingData,
    fit_epochs,
)
from ._validation_set import (
    checked_validation_set,
    split_validation,
    validation_label,
    validation_score_and_noise,
    validation_scorer,
)

ACCEPTED_SPARSE_FORMATS = ("csr", "csc", "coo")


# batch_size="auto": this many samples per batch, fewer when a data set would
# otherwise take under AUTO_MIN_STEPS optimizer steps per epoch
AUTO_BATCH_SIZE = 256
AUTO_MIN_STEPS = 10


def worker_rng(rng, rank):
    """A random state of a worker's own, drawn without advancing ``rng``.

    The workers of a data-parallel fit share ``rng`` (their models start
    alike and they draw one batch order); what each does on its own rows,
    as setting aside its part of the validation data, must differ.
    """
    seed = copy.deepcopy(rng).randint(np.iinfo(np.int32).max)
    return np.random.RandomState(np.random.SeedSequence([seed, rank]).generate_state(1))


def average_decay(window, n_samples, batch_size):
    """Per-step decay of a weight average spanning ``window`` epochs (0: none).

    An exponential moving average with decay d spans 1 / (1 - d) steps.
    """
    steps = window * math.ceil(n_samples / batch_size) if window else 0.0
    return 0.0 if steps <= 1.0 else 1.0 - 1.0 / steps


# as HistGradientBoosting: early_stopping="auto" turns it on above this size
AUTO_EARLY_STOPPING_MIN_SAMPLES = 10_000


@contextlib.contextmanager
def fixed_tables(module, fixed):
    """Keep the embedding and linear tables out of training within the block."""
    if not fixed:
        yield
        return
    tables = module.sparse_parameters()
    for table in tables:
        table.requires_grad_(False)
    try:
        yield
    finally:
        for table in tables:
            table.requires_grad_(True)


class BaseAFM(StateMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class for AFM estimators; not meant to be used directly."""

    _parameter_constraints: dict = {
        "n_factors": [Interval(Integral, 1, None, closed="left")],
        "attention_size": [Interval(Integral, 1, None, closed="left")],
        "attention": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "penalty_scope": [StrOptions({"feature", "sample"})],
        "attention_alpha": [Interval(Real, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "attention_dropout": [Interval(Real, 0, 1, closed="left")],
        "average_window": [
            StrOptions({"auto"}),
            Interval(Real, 0, None, closed="left"),
            None,
        ],
        "optimizer": [StrOptions({"adam", "adagrad"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "early_stopping": [StrOptions({"auto"}), "boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "scoring": [StrOptions({"loss"}), str, callable, None],
        "shuffle": ["boolean"],
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "init": [StrOptions({"random", "fm", "frozen_fm"})],
        "device": [StrOptions({"cpu", "cuda", "auto"})],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
    }

    @abstractmethod
    def __init__(
        self,
        *,
        n_factors,
        attention_size,
        attention,
        alpha,
        penalty_scope,
        attention_alpha,
        dropout,
        attention_dropout,
        average_window,
        optimizer,
        learning_rate_init,
        batch_size,
        max_iter,
        tol,
        early_stopping,
        validation_fraction,
        n_iter_no_change,
        scoring,
        shuffle,
        warm_start,
        random_state,
        init,
        device,
        n_threads,
        verbose,
    ):
        self.n_factors = n_factors
        self.attention_size = attention_size
        self.attention = attention
        self.alpha = alpha
        self.penalty_scope = penalty_scope
        self.attention_alpha = attention_alpha
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.average_window = average_window
        self.optimizer = optimizer
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.scoring = scoring
        self.shuffle = shuffle
        self.warm_start = warm_start
        self.random_state = random_state
        self.init = init
        self.device = device
        self.n_threads = n_threads
        self.verbose = verbose

    # -- target encoding, provided by the regressor and the classifier --------

    @abstractmethod
    def _init_target_encoding(self, y, sample_weight, classes=None, collective=None):
        """Set the target's fitted attributes on a first fit.

        With ``collective``, from the targets of all workers' rows.
        Returns ``(n_outputs, loss, initial_bias)``.
        """

    @abstractmethod
    def _check_target_unchanged(self, y):
        """On a warm start or later partial_fit: refuse a target that does not fit."""

    @abstractmethod
    def _encode_target(self, y):
        """y -> float targets of the network (standardised values or class codes)."""

    def _loss_scale(self):
        """Factor that brings the network's loss to the units of y."""
        return 1.0

    def _output_units(self):
        """(scale, offset) mapping raw network outputs to the estimator's units."""
        return 1.0, 0.0

    def explain(self, X, *, feature_names=None, as_frame="auto"):
        """Explain each prediction as a sum of bias, linear and pair terms.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Samples to explain.

        feature_names : array-like of str, default=None
            Names of the input columns; defaults to ``feature_names_in_``
            when fitted on a DataFrame, ``x0, x1, ...`` otherwise. For a model
            inside a Pipeline, use :func:`skafm.inspection.explain` on the
            Pipeline to name the encoded columns.

        as_frame : "auto" or bool, default="auto"
            Return pandas DataFrames ("auto": when pandas is installed) or
            numpy structured arrays.

        Returns
        -------
        explanation : Bunch
            ``pairs``: for each row and each pair of its active features, the
            features' indices and names, the pair's attention weight (a
            row's weights sum to 1) and its contribution to the output.
            ``rows``: each row's ``bias``, ``linear`` and ``interactions``
            terms and their sum ``output``, equal to ``predict`` for the
            regressor and ``decision_function`` for the classifier. See
            :func:`skafm.inspection.explain`.
        """
        from .inspection import explain

        return explain(self, X, feature_names=feature_names, as_frame=as_frame)

    # -- fitting ---------------------------------------------------------------

    def _fit(self, X, y, sample_weight, **kwargs):
        with unchanged_on_failure(self), thread_limit(self.n_threads):
            return self._fit_unguarded(X, y, sample_weight, **kwargs)

    def _fit_unguarded(
        self,
        X,
        y,
        sample_weight,
        *,
        validation=None,
        incremental=False,
        classes=None,
        collective=None,
    ):
        """One fit, partial_fit or warm-started fit.

        ``collective`` makes it one worker's part of a data-parallel fit
        (:mod:`skafm.distributed`): ``X`` and ``validation`` hold this
        worker's rows, and every data-wide figure is reduced over the workers.
        """
        continuing = (self.warm_start or incremental) and hasattr(self, "_trainer")
        X, y = self._validate_data(X, y, reset=not continuing)
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True
        )
        if continuing:
            if not incremental:
                # partial_fit batches may miss classes; a warm-started fit may not
                self._check_target_unchanged(y)
            self._check_architecture_unchanged()
        else:
            n_outputs, loss, initial_bias = self._init_target_encoding(
                y, sample_weight, classes, collective
            )
        early_stopping = self._early_stopping_enabled(
            int(total(collective, X.shape[0])), validation, incremental
        )
        device = resolve_device(self.device)
        rng = (
            # a copy, so that a failed call leaves the random state as it was
            copy.deepcopy(self._rng)
            if continuing and incremental
            else check_random_state(self.random_state)
        )

        if early_stopping and validation is None:
            X, y, sample_weight, validation = split_validation(
                self,
                X,
                y,
                sample_weight,
                rng if collective is None else worker_rng(rng, collective.rank),
            )
        elif validation is not None:
            validation = checked_validation_set(self, *validation)

        config = self._optimization_config(
            loss if not continuing else self._loss,
            n_samples=int(total(collective, X.shape[0])),
            early_stopping=early_stopping,
            n_workers=1 if collective is None else collective.size,
        )
        data = TrainingData.build(
            as_active_features(X),
            self._encode_target(y),
            sample_weight,
            device,
            collective,
        )
        rule = StoppingRule(
            max_iter=1 if incremental else self.max_iter,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            early_stopping=early_stopping,
        )
        counts = data.feature_counts()
        # each phase: (name, its trainer, its history); the AFM's start from
        # an FM must beat the FM's best validation score to be kept
        phases, fm_trainer = [], None
        if continuing:
            trainer = self._trainer.continued(config, device)
            if self.attention and not trainer.module.attention:
                # the FM phase won the last fit: the AFM phase starts from it
                fm_trainer, trainer = trainer, None
        elif self.init in ("fm", "frozen_fm") and self.attention and not incremental:
            fm = self._build_module(
                X.shape[1], n_outputs, initial_bias, rng, attention=False
            )
            fm_trainer = Trainer(fm.to(device), config)
            fm_trainer.set_feature_counts(counts)
            fm_history = self._pretrain(fm_trainer, data, rng, rule, validation)
            phases.append(("fm", fm_trainer, fm_history))
            if fm_history.interrupted:
                # Ctrl-C during pre-training stops the whole fit
                rule = dataclasses.replace(rule, max_iter=0)
        if fm_trainer is not None:
            fm_network = fm_trainer.prediction_module
            module = self._build_module(
                X.shape[1], fm_network.n_outputs, [0.0] * fm_network.n_outputs, rng
            )
            module.start_from_factorization_machine(
                fm_network, mean_pair_count(data.all_widths)
            )
            # a penalty that follows the noise starts where the FM left it
            trainer = Trainer(
                module.to(device),
                dataclasses.replace(config, alpha=fm_trainer.config.alpha)
                if config.alpha_per_noise > 0.0
                else config,
            )
            # the tables continue with the step sizes the FM reached: a fresh
            # Adagrad or Adam state would move every converged weight by a
            # full learning rate in the first steps and lose the FM's fit
            trainer.adopt_optimizer_state(fm_trainer)
        elif not continuing:
            module = self._build_module(X.shape[1], n_outputs, initial_bias, rng)
            trainer = Trainer(module.to(device), config)
        trainer.module.set_dropout(self.dropout, self.attention_dropout)
        trainer.set_feature_counts(counts, accumulate=continuing and incremental)
        fm_best = None
        if fm_trainer is not None and early_stopping:
            fm_best = (
                max(phases[0][2].validation_scores)
                if phases and phases[0][2].validation_scores
                else getattr(self, "best_validation_score_", None)
            )

        frozen = fm_trainer is not None and self.init == "frozen_fm" and not continuing
        with fixed_tables(trainer.module, frozen):
            history = self._train(
                trainer,
                data,
                rng,
                rule,
                validation,
                first_epoch=(self.n_iter_ if continuing else 0)
                + sum(len(h.loss_curve) for _, _, h in phases)
                + 1,
                # the FM it starts from is a candidate: never end worse than it
                score_to_beat=fm_best,
                warning_stacklevel=7,
            )
        history.interrupted = history.interrupted or rule.max_iter == 0
        phases.append(("afm" if self.attention else "fm", trainer, history))
        if history.start_kept:
            if self.verbose:
                print(
                    "The attentional phase did not improve on the factorization "
                    "machine it started from: keeping the factorization machine"
                )
            winner, winner_name = fm_trainer, "fm"
        else:
            winner, winner_name = trainer, phases[-1][0]
        self._record(
            phases, winner, winner_name, continuing, early_stopping, config.loss
        )
        self._rng = rng
        if not (history.converged or history.interrupted or incremental):
            warnings.warn(
                f"Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=5,
            )
        return self

    def _pretrain(self, trainer, data, rng, rule, validation):
        """Train the plain FM that ``init="fm"`` and ``"frozen_fm"`` start from.

        Returns its training history; ``trainer`` holds the fitted FM.
        """
        if self.verbose:
            print(
                "Phase 1 of 2: pre-training a factorization machine "
                f"(init={self.init!r})"
            )
        history = self._train(
            trainer, data, rng, rule, validation, warning_stacklevel=8
        )
        if self.verbose and not history.interrupted:
            print(
                "Phase 2 of 2: training the attentional factorization machine from it"
            )
        return history

    def _train(self, trainer, data, rng, rule, validation, **options):
        """:func:`fit_epochs` scored on ``validation`` when early stopping is on.

        ``options`` go to :func:`fit_epochs`; ``warning_stacklevel`` counts
        the frames from there to the user's call.
        """
        score = noise = None
        if rule.early_stopping and trainer.config.alpha_per_noise > 0.0:
            score, noise = validation_score_and_noise(
                self, trainer, validation, data.collective
            )
        elif rule.early_stopping:
            score = validation_scorer(self, trainer, validation, data.collective)
        return fit_epochs(
            trainer,
            data,
            rng,
            rule,
            validation_score=score,
            noise_variance=noise,
            validation_label=validation_label(self),
            loss_scale=self._loss_scale(),
            verbose=self.verbose,
            **options,
        )

    def _record(self, phases, winner, winner_name, continuing, early_stopping, loss):
        """Set the fitted attributes from a finished training call.

        ``phases`` lists each phase's (name, trainer, history) in order;
        ``winner`` is the trainer whose network predicts, and ``winner_name``
        the phase it comes from.
        """
        scale = self._loss_scale()
        losses, scores, summaries = [], [], []
        for name, _, history in phases:
            losses += [scale * value for value in history.loss_curve]
            scores += history.validation_scores
            summaries.append(
                {
                    "phase": name,
                    "n_iter": len(history.loss_curve),
                    "best_validation_score": max(history.validation_scores)
                    if early_stopping and history.validation_scores
                    else None,
                }
            )
        previous_losses = self.loss_curve_ if continuing else []
        previous_scores = (
            self.validation_scores_ or [] if continuing and early_stopping else []
        )
        self._trainer = winner
        self._loss = loss
        self.alpha_ = winner.config.alpha
        self.module_ = winner.prediction_module
        self.loss_curve_ = previous_losses + losses
        self.n_iter_ = len(self.loss_curve_)
        self.t_ = (self.t_ if continuing else 0) + sum(
            history.samples_seen for _, _, history in phases
        )
        # models saved before phases_ existed continue with their new phases
        earlier = getattr(self, "phases_", []) if continuing else []
        self.phases_ = earlier + summaries
        self.best_phase_ = winner_name
        if early_stopping:
            self.validation_scores_ = previous_scores + scores
            self.best_validation_score_ = (
                max(self.validation_scores_) if self.validation_scores_ else None
            )
            self.best_loss_ = None
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = min(self.loss_curve_) if self.loss_curve_ else None

    # epochs averaged by average_window="auto" with early stopping, None for
    # no average; set by the regressor and the classifier
    _auto_average_window = None

    def _average_window(self, early_stopping):
        if self.average_window != "auto":
            return self.average_window
        # the validation score tells how long to train for the average to be
        # good; without it, a fixed number of epochs leaves a long average
        # lagging behind the weights
        return self._auto_average_window if early_stopping else None

    def _early_stopping_enabled(self, n_samples, validation, incremental):
        if incremental:
            if self.early_stopping is True:
                raise ValueError("partial_fit does not support early_stopping=True.")
            return False
        if validation is not None and self.early_stopping is False:
            raise ValueError(
                "X_val and y_val are passed to fit while early_stopping is False. "
                "Set early_stopping to 'auto' or True to use them."
            )
        if self.early_stopping == "auto":
            return validation is not None or n_samples > AUTO_EARLY_STOPPING_MIN_SAMPLES
        return self.early_stopping

    def _check_architecture_unchanged(self):
        module = self._trainer.module
        fitted = (module.n_factors, module.attention_size, module.attention)
        wanted = (self.n_factors, self.attention_size, self.attention)
        fm_won = getattr(self, "best_phase_", None) == "fm"
        if fitted[2] is False and self.attention and fm_won:
            # the FM phase won: continuing trains the AFM from it
            fitted, wanted = fitted[:1], wanted[:1]
        elif fitted[2] is False:
            fitted, wanted = fitted[::2], wanted[::2]
        if fitted != wanted:
            raise ValueError(
                "warm_start and partial_fit continue the fitted network, whose "
                "n_factors, attention_size and attention cannot change: fitted "
                f"with {fitted}, now {wanted}. Set warm_start=False to refit."
            )

    # whether a one-output FM trains its projection (see
    # AttentionalFactorizationMachine); the classifier's defaults were chosen
    # with it trained
    _learns_fm_projection = True

    def _build_module(self, n_features, n_outputs, initial_bias, rng, attention=None):
        attention = self.attention if attention is None else attention
        generator = torch.Generator()
        generator.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
        module = AttentionalFactorizationMachine(
            n_features,
            n_outputs,
            self.n_factors,
            self.attention_size,
            attention=attention,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            generator=generator,
            learned_projection=attention or n_outputs > 1 or self._learns_fm_projection,
        )
        with torch.no_grad():
            module.bias.copy_(torch.as_tensor(initial_bias, dtype=torch.float32))
        return module

    def _batch_size(self, n_samples):
        if self.batch_size != "auto":
            return self.batch_size
        # small data sets still get AUTO_MIN_STEPS steps per epoch
        return max(1, min(AUTO_BATCH_SIZE, n_samples // AUTO_MIN_STEPS))

    def _alpha_settings(self):
        """``alpha`` and ``alpha_per_noise`` of the optimization config."""
        return {"alpha": self.alpha, "alpha_per_noise": 0.0}

    def _optimization_config(self, loss, n_samples, early_stopping, n_workers=1):
        # batch_size is each worker's: a step of n workers takes n batches
        batch_size = n_workers * self._batch_size(n_samples // n_workers)
        return OptimizationConfig(
            loss=loss,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate_init,
            batch_size=batch_size,
            shuffle=self.shuffle,
            **self._alpha_settings(),
            attention_alpha=self.attention_alpha,
            penalty_scope=self.penalty_scope,
            average_decay=average_decay(
                self._average_window(early_stopping), n_samples, batch_size
            ),
        )

    # -- prediction ------------------------------------------------------------

    def _validate_data(self, X, y="no_validation", *, reset):
        """validate_data with the input rules every method shares."""
        check_params = dict(
            reset=reset,
            accept_sparse=ACCEPTED_SPARSE_FORMATS,
            accept_large_sparse=True,
            dtype=(np.float64, np.float32),
        )
        if isinstance(y, str) and y == "no_validation":
            return validate_data(self, X, **check_params)
        return validate_data(self, X, y, y_numeric=is_regressor(self), **check_params)

    def _prediction_input(self, X):
        """X as ``_validate_data(X, reset=False)`` returns it.

        A CSR matrix of floats that validation would return unchanged is
        checked here directly: scikit-learn's checks (for dataframes among
        them) take longer than predicting a row, which a server does one
        request at a time.
        """
        if (
            isinstance(X, (sp.csr_matrix, sp.csr_array))
            and X.dtype in (np.float32, np.float64)
            and X.ndim == 2
            and X.shape[0] > 0
            and X.shape[1] == self.n_features_in_
            and not hasattr(self, "feature_names_in_")
            and np.isfinite(X.data).all()
        ):
            return X
        return self._validate_data(X, reset=False)

    def _raw_output(self, X):
        """Validated X -> network outputs, float64 of shape (n_samples, n_outputs)."""
        check_is_fitted(self)
        X = self._prediction_input(X)
        with prediction_threads(self.n_threads, X.shape[0]):
            return predict_raw(self.module_, as_active_features(X))

    def __sklearn_is_fitted__(self):
        # what check_is_fitted asks; without it, it scans every attribute's
        # name, which takes longer than predicting a row
        return hasattr(self, "module_")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
