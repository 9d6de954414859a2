"""The weight average that predicts (``average_window``)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

from skafm import AFMClassifier, AFMRegressor
from skafm._base import average_decay
from skafm._training import OptimizationConfig, Trainer, TrainingData

from .test_network import make_module

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


class DenseAveragingTrainer(Trainer):
    """Also keeps the plain average of every parameter, updated at every step."""

    def __init__(self, module, config):
        super().__init__(module, config)
        self.reference = [p.detach().clone() for p in module.parameters()]

    def _step(self, touched):
        super()._step(touched)
        decay = self.config.average_decay
        with torch.no_grad():
            for average, weight in zip(
                self.reference, self.module.parameters(), strict=True
            ):
                average.mul_(decay).add_(weight, alpha=1 - decay)


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_lazy_row_updates_equal_averaging_every_row_at_every_step(optimizer):
    rng = np.random.RandomState(0)
    # rare features: most batches leave most table rows untouched
    X = sp.random(300, 40, density=0.08, random_state=rng, format="csr")
    X.data[:] = 1.0
    data = TrainingData.build(
        X, rng.normal(size=300), np.ones(300), torch.device("cpu")
    )
    config = OptimizationConfig(
        loss="squared_error",
        optimizer=optimizer,
        learning_rate=0.05,
        batch_size=16,
        shuffle=True,
        alpha=1e-3,
        attention_alpha=0.0,
        average_decay=0.9,
    )
    trainer = DenseAveragingTrainer(make_module(n_features=40), config)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        trainer.run_epoch(data, rng, generator)

        averaged = list(trainer.prediction_module.parameters())
        for got, want in zip(averaged, trainer.reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the average lags behind the weights: it is not a copy of them
    assert not torch.allclose(
        trainer.prediction_module.embedding, trainer.module.embedding
    )


def test_average_decay_spans_the_window_in_steps():
    # 1000 samples in batches of 100: 10 steps per epoch
    assert average_decay(5, 1000, 100) == pytest.approx(1 - 1 / 50)
    assert average_decay(40, 1001, 100) == pytest.approx(1 - 1 / 440)
    assert average_decay(None, 1000, 100) == 0.0
    assert average_decay(0, 1000, 100) == 0.0
    # a window of a single step or less averages nothing
    assert average_decay(0.5, 100, 100) == 0.0


def test_predictions_use_the_average_and_training_the_last_weights(
    planted_regression,
):
    X, y, _ = planted_regression
    X, y = X[:500], y[:500]
    params = dict(
        n_factors=8, attention_size=4, max_iter=5, init="random", random_state=0
    )
    averaged = AFMRegressor(average_window=3, **params).fit(X, y)
    last = AFMRegressor(average_window=None, **params).fit(X, y)

    assert last.module_ is last._trainer.module
    assert averaged.module_ is not averaged._trainer.module
    # the same training path, only the predicting weights differ
    torch.testing.assert_close(
        averaged._trainer.module.embedding, last._trainer.module.embedding
    )
    assert not np.allclose(averaged.predict(X), last.predict(X))


def test_early_stopping_keeps_the_best_average(planted_classification):
    X, y, _ = planted_classification
    X_train, X_val, y_train, y_val = train_test_split(X, y, random_state=0)
    model = AFMClassifier(
        n_factors=8,
        attention_size=4,
        average_window=2,
        early_stopping=True,
        n_iter_no_change=3,
        max_iter=40,
        learning_rate_init=0.05,
        random_state=0,
    ).fit(X_train, y_train, X_val=X_val, y_val=y_val)
    restored = -log_loss(y_val, model.predict_proba(X_val))
    assert restored == pytest.approx(model.best_validation_score_, rel=1e-4)


def test_warm_start_turns_averaging_on_and_off(planted_regression):
    X, y, _ = planted_regression
    X, y = X[:300], y[:300]
    model = AFMRegressor(
        n_factors=8,
        attention_size=4,
        max_iter=2,
        average_window=None,
        warm_start=True,
        random_state=0,
    ).fit(X, y)
    assert model._trainer.average is None
    model.set_params(average_window=4).fit(X, y)
    assert model._trainer.average is not None
    assert model.module_ is model._trainer.average.module
    model.set_params(average_window=None).fit(X, y)
    assert model._trainer.average is None
    assert model.module_ is model._trainer.module


def test_auto_window_averages_only_for_the_classifier_with_early_stopping(
    planted_classification,
):
    X, y, _ = planted_classification
    X, y = X[:400], y[:400]
    params = dict(n_factors=8, attention_size=4, max_iter=3, random_state=0)
    fixed_epochs = AFMClassifier(**params).fit(X, y)
    assert fixed_epochs._trainer.average is None
    stopped = AFMClassifier(early_stopping=True, validation_fraction=0.25, **params)
    stopped.fit(X, y)
    # 300 training rows in batch_size="auto" batches of 30: 10 steps per
    # epoch, 40 epochs
    assert stopped._trainer.average.decay == pytest.approx(1 - 1 / 400)
    regressor = AFMRegressor(early_stopping=True, validation_fraction=0.25, **params)
    assert regressor.fit(X, y)._trainer.average is None
