"""Shared machinery of the AFM estimators: parameters, validation, fit, pickling."""

import contextlib
import copy
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
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

from ._batching import as_active_features
from ._device import resolve_device
from ._network import AttentionalFactorizationMachine
from ._training import TrainingConfig, predict_raw, train

ACCEPTED_SPARSE_FORMATS = ("csr", "csc", "coo")


@contextlib.contextmanager
def unchanged_on_failure(estimator):
    """Restore the estimator's attributes if the body raises.

    ``fit`` builds its fitted state step by step (``validate_data`` alone sets
    ``n_features_in_``); on any error the estimator is put back exactly as it
    was, so a bad call never damages a previously fitted model.
    """
    saved = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(saved)
        raise


class BaseAFM(BaseEstimator, metaclass=ABCMeta):
    """Base class for AFM estimators; not meant to be used directly."""

    _parameter_constraints: dict = {
        "n_factors": [Interval(Integral, 1, None, closed="left")],
        "attention_size": [Interval(Integral, 1, None, closed="left")],
        "attention": ["boolean"],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "attention_alpha": [Interval(Real, 0, None, closed="left")],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "attention_dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [StrOptions({"adam", "adagrad"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "device": [StrOptions({"cpu", "cuda", "auto"})],
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
        attention_alpha,
        dropout,
        attention_dropout,
        optimizer,
        learning_rate_init,
        batch_size,
        max_iter,
        tol,
        n_iter_no_change,
        shuffle,
        random_state,
        device,
        verbose,
    ):
        self.n_factors = n_factors
        self.attention_size = attention_size
        self.attention = attention
        self.alpha = alpha
        self.attention_alpha = attention_alpha
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.optimizer = optimizer
        self.learning_rate_init = learning_rate_init
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.shuffle = shuffle
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    @abstractmethod
    def _encode_target(self, y, sample_weight):
        """Set target-related fitted attributes; return the training target.

        Returns ``(target, n_outputs, loss, initial_bias)``.
        """

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

    def _fit(self, X, y, sample_weight):
        X, y = self._validate_data(X, y, reset=True)
        sample_weight = _check_sample_weight(
            sample_weight, X, dtype=np.float64, ensure_non_negative=True
        )
        target, n_outputs, loss, initial_bias = self._encode_target(y, sample_weight)
        device = resolve_device(self.device)
        rng = check_random_state(self.random_state)

        module = self._build_module(X.shape[1], n_outputs, initial_bias, rng)
        module.to(device)
        result = train(
            module,
            as_active_features(X),
            target,
            sample_weight,
            self._training_config(loss),
            rng,
            device,
        )
        self.module_ = module
        self.n_iter_ = result.n_iter
        self.t_ = result.t
        self.loss_curve_ = result.loss_curve
        if not result.converged:
            warnings.warn(
                f"Maximum iterations ({self.max_iter}) reached and the "
                "optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=3,
            )
        return self

    def _build_module(self, n_features, n_outputs, initial_bias, rng):
        generator = torch.Generator()
        generator.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
        module = AttentionalFactorizationMachine(
            n_features,
            n_outputs,
            self.n_factors,
            self.attention_size,
            attention=self.attention,
            dropout=self.dropout,
            attention_dropout=self.attention_dropout,
            generator=generator,
        )
        with torch.no_grad():
            module.bias.copy_(torch.as_tensor(initial_bias, dtype=torch.float32))
        return module

    def _training_config(self, loss):
        return TrainingConfig(
            loss=loss,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate_init,
            batch_size=self.batch_size,
            max_iter=self.max_iter,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            shuffle=self.shuffle,
            alpha=self.alpha,
            attention_alpha=self.attention_alpha,
            verbose=self.verbose,
        )

    def _raw_output(self, X):
        """Validated X -> network outputs, float64 of shape (n_samples, n_outputs)."""
        check_is_fitted(self)
        X = self._validate_data(X, reset=False)
        device = self.module_.bias.device
        return predict_raw(self.module_, as_active_features(X), device)

    def __getstate__(self):
        state = super().__getstate__()
        module = state.get("module_")
        if module is not None and module.bias.device.type != "cpu":
            # pickles hold CPU tensors so they load on machines without a GPU
            state["module_"] = copy.deepcopy(module).to("cpu")
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
