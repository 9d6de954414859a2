"""The validation data early stopping scores: set aside, or checked when passed."""

import copy

import numpy as np
import scipy.sparse as sp
from sklearn.base import is_classifier
from sklearn.metrics import check_scoring
from sklearn.model_selection import train_test_split
from sklearn.utils.validation import _check_sample_weight, check_consistent_length

from ._batching import as_active_features
from ._training import TrainingData

UNTRANSFORMED_X_VAL = (
    "X_val holds values that are not numbers ({error}). In a Pipeline, X_val "
    "reaches the model as it was passed, not transformed by the steps before "
    "it, unless the pipeline transforms it: with "
    "sklearn.set_config(enable_metadata_routing=True), build the pipeline with "
    "Pipeline(steps, transform_input=['X_val']), request the data with "
    "model.set_fit_request(X_val=True, y_val=True) and call "
    "pipeline.fit(X, y, X_val=X_val, y_val=y_val) (see the user guide's "
    "'Early stopping' section)."
)


def holds_non_numbers(X):
    if sp.issparse(X):
        return False
    try:
        return np.asarray(X).dtype.kind in "OUSV"
    except (TypeError, ValueError):
        return True


def split_validation(estimator, X, y, sample_weight, rng):
    """Set ``validation_fraction`` of the data aside, stratified for a classifier."""
    stratify = y if is_classifier(estimator) else None
    try:
        split = train_test_split(
            X,
            y,
            sample_weight,
            test_size=estimator.validation_fraction,
            stratify=stratify,
            random_state=rng,
        )
    except ValueError as error:
        # scikit-learn's message speaks of groups and test sizes
        raise ValueError(
            "Early stopping could not set aside a validation part of "
            f"validation_fraction={estimator.validation_fraction} of the training "
            f"data, stratified by class: {error} Pass early_stopping=False, a "
            "larger validation_fraction, or your own X_val and y_val."
        ) from error
    X_train, X_val, y_train, y_val, w_train, w_val = split
    if X_val.shape[0] == 0:
        raise ValueError(
            f"validation_fraction={estimator.validation_fraction} leaves no sample "
            "for validation; raise it or pass X_val and y_val."
        )
    return X_train, y_train, w_train, (X_val, y_val, w_val)


def checked_validation_set(estimator, X_val, y_val, sample_weight_val):
    """The validation data passed to ``fit``, checked as the training data is."""
    if X_val is None or y_val is None:
        missing = "y_val" if y_val is None else "X_val"
        raise ValueError(f"{missing} is needed too when the other is passed.")
    try:
        X_val = estimator._validate_data(X_val, reset=False)
    except ValueError as error:
        if holds_non_numbers(X_val):
            raise ValueError(UNTRANSFORMED_X_VAL.format(error=error)) from error
        raise
    y_val = np.asarray(y_val)
    if y_val.ndim != 1:
        y_val = y_val.ravel()
    check_consistent_length(X_val, y_val)
    if not is_classifier(estimator) and not np.all(np.isfinite(y_val.astype(float))):
        raise ValueError("Input y_val contains NaN or infinity.")
    sample_weight_val = _check_sample_weight(
        sample_weight_val, X_val, dtype=np.float64, ensure_non_negative=True
    )
    return X_val, y_val, sample_weight_val


def validation_label(estimator):
    """How ``verbose`` names the validation score."""
    return estimator.scoring if isinstance(estimator.scoring, str) else None


def validation_mean_loss(estimator, trainer, validation, collective=None):
    """A callable returning the mean loss of ``trainer``'s network on ``validation``.

    In training units (the regressor's standardised target), summed over the
    workers' parts in a data-parallel fit.
    """
    X_val, y_val, sample_weight_val = validation
    data = TrainingData.build(
        as_active_features(X_val),
        estimator._encode_target(y_val),
        sample_weight_val,
        trainer.device,
        collective,
    )
    return lambda: trainer.mean_loss(data)


def validation_score_and_noise(estimator, trainer, validation, collective=None):
    """Callables for :func:`.fit_epochs`: the validation score and the noise.

    The noise estimate is the validation mean loss. With ``scoring="loss"``
    the score is that same loss, scaled: the noise then takes the value the
    score computed for the same weights, and the held-out part is predicted
    once per epoch instead of twice (``fit_epochs`` scores before it reads
    the noise).
    """
    if estimator.scoring != "loss":
        score = validation_scorer(estimator, trainer, validation, collective)
        return score, validation_mean_loss(estimator, trainer, validation, collective)
    mean_loss = validation_mean_loss(estimator, trainer, validation, collective)
    scale = estimator._loss_scale()
    scored = []

    def score():
        scored[:] = [mean_loss()]
        return -scale * scored[0]

    def noise():
        # the loss the score took for these weights, or afresh without one
        return scored.pop() if scored else mean_loss()

    return score, noise


def validation_scorer(estimator, trainer, validation, collective=None):
    """A callable returning the validation score of ``trainer``'s network.

    With ``collective`` (a data-parallel fit), ``validation`` holds this
    worker's part: the loss is summed over the workers' parts; a scorer,
    which need not be a sum over rows, scores all parts gathered on every
    worker.
    """
    X_val, y_val, sample_weight_val = validation
    if estimator.scoring == "loss":
        mean_loss = validation_mean_loss(estimator, trainer, validation, collective)
        scale = estimator._loss_scale()
        return lambda: -scale * mean_loss()

    if collective is not None:
        parts = collective.gather_objects(
            (
                sp.csr_matrix(X_val) if sp.issparse(X_val) else X_val,
                y_val,
                sample_weight_val,
            )
        )
        X_val = (
            sp.vstack([part[0] for part in parts], format="csr")
            if sp.issparse(parts[0][0])
            else np.concatenate([part[0] for part in parts])
        )
        y_val = np.concatenate([part[1] for part in parts])
        sample_weight_val = np.concatenate([part[2] for part in parts])

    scorer = check_scoring(estimator, scoring=estimator.scoring)
    # a user's scorer(estimator, X, y) need not take sample_weight
    weights = (
        {} if np.all(sample_weight_val == 1) else {"sample_weight": sample_weight_val}
    )

    def score():
        # a shallow copy that predicts with the network being trained
        view = copy.copy(estimator)
        view.module_ = trainer.prediction_module
        return scorer(view, X_val, y_val, **weights)

    return score
