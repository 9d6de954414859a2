"""Found by an adversarial review: pickling side effects and weight scales."""

import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import skafm._batching
import skafm._training
import skafm.io
from skafm import AFMClassifier, AFMRegressor
from skafm.exceptions import TrainingDivergedError

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def snapshot(estimator):
    """The estimator's attributes, with tensors and arrays compared by value."""
    return {key: repr(value) for key, value in vars(estimator).items()}


def test_pickling_never_changes_the_estimator(planted_regression):
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    before = snapshot(model)
    pickle.dumps(model)
    copy.deepcopy(model)
    assert snapshot(model) == before
    assert "_skafm_versions" not in vars(model)


def test_a_pickled_or_copied_model_dumps_a_file_that_loads(
    tmp_path, planted_regression
):
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    pickle.dumps(model)
    for name, candidate in (("model", model), ("copy", copy.deepcopy(model))):
        path = tmp_path / f"{name}.skafm"
        skafm.io.dump(candidate, path)
        np.testing.assert_array_equal(skafm.io.load(path).predict(X), model.predict(X))


@pytest.mark.parametrize("Estimator", [AFMRegressor, AFMClassifier])
@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_uniform_weights_of_any_size_train_as_no_weights(
    Estimator, scale, planted_classification
):
    X, y, _ = planted_classification
    params = dict(FAST, max_iter=3)
    plain = Estimator(**params).fit(X, y)
    weighted = Estimator(**params).fit(X, y, sample_weight=np.full(len(y), scale))
    assert np.isfinite(weighted.loss_curve_).all()
    np.testing.assert_array_equal(weighted.loss_curve_, plain.loss_curve_)
    for a, b in zip(
        weighted.module_.state_dict().values(),
        plain.module_.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_weights_that_are_all_zero_are_refused(planted_regression):
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    before = model.predict(X[:5])
    with pytest.raises(ValueError, match="non-zero"):
        model.fit(X, y, sample_weight=np.zeros(len(y)))
    np.testing.assert_array_equal(model.predict(X[:5]), before)


def test_a_failed_partial_fit_leaves_the_random_state_as_it_was(
    planted_regression, monkeypatch
):
    X, y, _ = planted_regression
    failing = AFMRegressor(**FAST).partial_fit(X[:100], y[:100])
    twin = AFMRegressor(**FAST).partial_fit(X[:100], y[:100])
    real_run_epoch = skafm._training.Trainer.run_epoch

    def failing_run_epoch(trainer, data, rng, *args):
        rng.randint(10)  # what shuffling does before a fault
        raise RuntimeError("a fault during the epoch")

    monkeypatch.setattr(skafm._training.Trainer, "run_epoch", failing_run_epoch)
    with pytest.raises(RuntimeError, match="fault"):
        failing.partial_fit(X[100:200], y[100:200])
    monkeypatch.setattr(skafm._training.Trainer, "run_epoch", real_run_epoch)
    failing.partial_fit(X[100:200], y[100:200])
    twin.partial_fit(X[100:200], y[100:200])
    np.testing.assert_array_equal(failing.predict(X[:50]), twin.predict(X[:50]))


def test_a_failed_call_swaps_the_old_state_back_in_one_step(planted_regression):
    # a predict in another thread must never see a half-restored estimator:
    # the old attributes come back as one dict, not key by key
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    before = vars(model)
    with pytest.raises(ValueError):
        model.partial_fit(X[:10, :-1], y[:10])
    restored = vars(model)
    assert restored is not before
    assert restored.keys() == before.keys()
    assert model.predict(X[:5]).shape == (5,)


def test_a_scorer_that_returns_nan_is_refused(planted_regression):
    X, y, _ = planted_regression
    model = AFMRegressor(
        **FAST, early_stopping=True, scoring=lambda est, X, y: float("nan")
    )
    with pytest.raises(ValueError, match="validation score is NaN"):
        model.fit(X, y)
    assert not hasattr(model, "n_iter_")


def test_a_run_that_only_grew_its_loss_raises():
    rng = np.random.RandomState(0)
    X = sp.random(3000, 50, density=0.1, format="csr", random_state=0)
    y = X @ rng.normal(size=50)
    model = AFMRegressor(learning_rate_init=10.0, max_iter=5, random_state=0)
    with pytest.raises(TrainingDivergedError, match="constant prediction"):
        model.fit(X, y)
    assert not hasattr(model, "module_")


def test_a_loss_that_recovers_from_unscaled_features_is_kept():
    rng = np.random.RandomState(0)
    X = rng.normal(loc=100, size=(100, 2))
    # Adam's small steps recover from features of 100; the default Adagrad's
    # steps of 0.05 times the feature's value do not, and are refused (below)
    model = AFMRegressor(
        optimizer="adam", learning_rate_init=1e-3, random_state=0, max_iter=30
    ).fit(X, rng.normal(size=100))
    assert np.isfinite(model.predict(X)).all()


def test_the_defaults_refuse_unscaled_features_and_say_to_scale_them():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.RandomState(0)
    X = rng.normal(loc=100, size=(100, 2))
    y = rng.normal(size=100)
    model = AFMRegressor(random_state=0, max_iter=30)
    with pytest.raises(TrainingDivergedError, match="MaxAbsScaler"):
        model.fit(X, y)
    assert not hasattr(model, "module_")
    scaled = make_pipeline(StandardScaler(), model).fit(X, y)
    assert np.isfinite(scaled.predict(X)).all()


def test_ctrl_c_in_the_validation_scorer_keeps_the_best_weights(planted_regression):
    X, y, _ = planted_regression
    calls = {"n": 0}

    def scorer(estimator, X_val, y_val):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return -float(np.mean((estimator.predict(X_val) - y_val) ** 2))

    model = AFMRegressor(
        **{**FAST, "max_iter": 50}, early_stopping=True, scoring=scorer
    )
    with pytest.warns(UserWarning, match="interrupted by the user"):
        model.fit(X, y)
    # three scored epochs; the interrupted one is not counted
    assert model.n_iter_ == len(model.validation_scores_) == 3
    assert model.best_validation_score_ == max(model.validation_scores_)
    assert np.isfinite(model.predict(X[:5])).all()


def test_a_target_out_of_range_is_refused_and_keeps_the_model(planted_regression):
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    before = model.predict(X[:5])
    with pytest.raises(ValueError, match="target is out of range"):
        model.fit(X, y * 1e200)
    np.testing.assert_array_equal(model.predict(X[:5]), before)
    # large but representable targets train
    assert np.isfinite(AFMRegressor(**FAST).fit(X, y * 1e20).predict(X[:5])).all()


def test_explanations_refuse_rows_too_wide_as_predict_does(
    planted_regression, monkeypatch
):
    from skafm.inspection import explain, interaction_importance

    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    monkeypatch.setattr(skafm._batching, "MAX_ROW_FLOATS", 8)
    for call in (explain, interaction_importance):
        with pytest.raises(ValueError, match="limit of"):
            call(model, X[:5])


CTRL_C_DURING_TORCH_IMPORTS = """
import importlib.abc
import os
import signal
import sys
import warnings

import numpy as np

from skafm import AFMRegressor

warnings.simplefilter("ignore")
# a process started in the background inherits SIGINT ignored: take it back
signal.signal(signal.SIGINT, signal.default_int_handler)


class CtrlC(importlib.abc.MetaPathFinder):
    # Ctrl-C arrives while torch imports sympy lazily for its optimizers
    fired = False

    def find_spec(self, name, path, target=None):
        if name == "sympy.polys" and not CtrlC.fired:
            CtrlC.fired = True
            os.kill(os.getpid(), signal.SIGINT)


sys.meta_path.insert(0, CtrlC())
X = np.random.default_rng(0).random((100, 4))
try:
    AFMRegressor(max_iter=1).fit(X, X.sum(1))
except KeyboardInterrupt:
    print("interrupted")
sys.meta_path.pop(0)
print("sympy imported:", CtrlC.fired)
AFMRegressor(max_iter=1).fit(X, X.sum(1))
print("fitted again")
"""


def test_ctrl_c_during_torchs_lazy_imports_breaks_no_later_fit():
    result = subprocess.run(
        [sys.executable, "-c", CTRL_C_DURING_TORCH_IMPORTS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    if "sympy imported: False" in result.stdout:
        pytest.skip("this torch imports no sympy while it builds an optimizer")
    assert "interrupted" in result.stdout and "fitted again" in result.stdout
