"""The L2 penalty's scope: per feature (a fixed prior) or per sample."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skafm import AFMClassifier, AFMRegressor
from skafm._batching import pad_rows
from skafm._training import OptimizationConfig, Trainer, TrainingData

from .conftest import FAST
from .test_network import make_module

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def config(scope, alpha=0.3):
    return OptimizationConfig(
        loss="squared_error",
        optimizer="adam",
        learning_rate=0.01,
        batch_size=32,
        shuffle=False,
        alpha=alpha,
        attention_alpha=0.0,
        penalty_scope=scope,
    )


def skewed_rows(rng, n_rows=200, n_features=30):
    # feature frequencies from 1 to n_rows: a rare feature and common ones
    X = sp.random(n_rows, n_features, density=0.15, random_state=rng, format="csr")
    X.data[:] = rng.uniform(0.5, 2.0, size=X.nnz)
    return X


@pytest.mark.parametrize("scope", ["feature", "sample"])
def test_the_penalty_over_all_rows_is_the_scope_formula(scope, training_ops, rng):
    X = skewed_rows(rng)
    weight = rng.uniform(0.2, 3.0, size=X.shape[0])
    data = TrainingData.build(
        X, rng.normal(size=X.shape[0]), weight, torch.device("cpu")
    )
    trainer = Trainer(make_module(n_features=X.shape[1]), config(scope))
    trainer.set_feature_counts(data.feature_counts())
    batch = pad_rows(X, np.arange(X.shape[0]))
    module = trainer.module
    with torch.no_grad():
        _, squared = module.forward_with_penalty(
            batch.index,
            batch.value,
            batch.mask,
            penalty_weight=trainer._entry_penalty(batch),
        )
        got = float((data.weight * squared).mean())
        norms = (
            module.embedding.square().sum(1) + module.linear.square().sum(1)
        ).numpy()
    seen = np.diff(X.tocsc().indptr) > 0
    if scope == "feature":
        # alpha / n * sum_j |theta_j|^2 over the features seen, once each
        want = norms[seen].sum() / X.shape[0]
    else:
        counts = data.feature_counts()
        want = (counts * norms).sum() / X.shape[0]
    assert got == pytest.approx(want, rel=1e-5)


def test_feature_counts_are_weighted_like_the_samples(rng):
    X = sp.csr_matrix(np.array([[1.0, 0, 2.0], [0, 1.0, 3.0], [0, 0, 1.0]]))
    data = TrainingData.build(X, np.zeros(3), [1.0, 2.0, 3.0], torch.device("cpu"))
    # weights are normalised to mean 1: 0.5, 1, 1.5
    np.testing.assert_allclose(data.feature_counts(), [0.5, 1.0, 3.0])


def test_partial_fit_counts_over_all_its_calls(planted_regression):
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST)
    model.partial_fit(X[:1000], y[:1000])
    first = model._trainer.feature_counts.copy()
    model.partial_fit(X[1000:2000], y[1000:2000])
    np.testing.assert_allclose(
        model._trainer.feature_counts, first + np.asarray(X[1000:2000].sum(0)).ravel()
    )


@pytest.mark.parametrize("Estimator", [AFMRegressor, AFMClassifier])
def test_the_feature_scope_shrinks_a_rare_feature_and_spares_a_frequent_one(
    Estimator, rng
):
    # the same effect of +1 on y through feature 0 (in 4 of 800 rows) and
    # feature 2 (in half the rows): a prior per feature keeps the rare
    # feature near 0 and leaves the frequent one to its data
    n = 800
    X = np.zeros((n, 4))
    X[:, 1] = 1.0
    X[:4, 0] = 1.0
    X[:, 2] = rng.randint(0, 2, n)
    X[:, 3] = 1.0 - X[:, 2]
    y = X[:, 0] + X[:, 2] + rng.normal(0, 0.1, n)
    if Estimator is AFMClassifier:
        y = (y > 0.5).astype(int)
    params = dict(FAST, max_iter=40, attention=False, early_stopping=False)
    weights = {
        alpha: Estimator(penalty_scope="feature", alpha=alpha, **params)
        .fit(X, y)
        .module_.linear.detach()[:, 0]
        .abs()
        for alpha in (0.0, 50.0)
    }
    kept = weights[50.0] / weights[0.0]
    assert kept[0] < 0.5 * kept[2]


def test_auto_alpha_follows_the_noise_of_the_target(planted_regression, rng):
    X, y, _ = planted_regression
    params = dict(FAST, max_iter=10, early_stopping=True)
    clean = AFMRegressor(**params).fit(X, y)
    noisy = AFMRegressor(**params).fit(X, y + rng.normal(0, 3 * y.std(), y.size))
    # 12 x the held-out squared error in units of y's variance: the noisy
    # target's is near 12 (almost all of its variance is noise)
    assert clean.alpha_ < 0.5 * noisy.alpha_
    assert 8.0 < noisy.alpha_ < 16.0
    # without a held-out part the epoch's training loss stands in for it
    small = AFMRegressor(**dict(params, early_stopping=False)).fit(X, y)
    assert 0.0 < small.alpha_ < 12.0


@pytest.mark.parametrize("scoring", ["loss", "r2"])
def test_auto_alpha_predicts_the_held_out_part_once_per_epoch(
    planted_regression, monkeypatch, scoring
):
    import skafm._training

    X, y, _ = planted_regression
    passes = []
    real_mean_loss = skafm._training.Trainer.mean_loss

    def counting_mean_loss(self, data):
        passes.append(data.n_samples)
        return real_mean_loss(self, data)

    monkeypatch.setattr(skafm._training.Trainer, "mean_loss", counting_mean_loss)
    params = dict(FAST, max_iter=4, n_iter_no_change=10, early_stopping=True)
    model = AFMRegressor(scoring=scoring, **params).fit(X, y)
    # "loss": the score's pass gives the noise too; another scorer needs
    # the loss besides its own predictions
    assert len(passes) == model.n_iter_ == 4


def test_a_float_alpha_stays_fixed_and_the_classifier_takes_no_auto(
    planted_regression, planted_classification
):
    X, y, _ = planted_regression
    model = AFMRegressor(alpha=3.0, **dict(FAST, max_iter=3)).fit(X, y)
    assert model.alpha_ == 3.0
    X, y, _ = planted_classification
    with pytest.raises(ValueError, match="alpha"):
        AFMClassifier(alpha="auto", **FAST).fit(X, y)


def test_a_warm_start_goes_on_from_the_alpha_reached(planted_regression):
    X, y, _ = planted_regression
    model = AFMRegressor(warm_start=True, **dict(FAST, max_iter=4)).fit(X, y)
    reached = model.alpha_
    continued = model._trainer.continued(
        model._optimization_config("squared_error", len(y), False), torch.device("cpu")
    )
    assert continued.config.alpha == reached != 12.0
