"""Found by an adversarial review: pickling side effects and weight scales."""

import copy
import pickle

import numpy as np
import pytest
import torch

import skafm.io
from skafm import AFMClassifier, AFMRegressor

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
