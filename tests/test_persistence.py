"""Pickles across versions, and prediction from many threads."""

import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import skafm
from skafm import AFMClassifier
from skafm.exceptions import InconsistentVersionWarning

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def model(planted_classification):
    X, y, _ = planted_classification
    return AFMClassifier(**FAST).fit(X, y), X


def test_pickle_records_versions_and_loads_silently_under_the_same(model):
    estimator, X = model
    state = estimator.__getstate__()
    assert state["_skafm_versions"]["skafm"] == skafm.__version__
    assert {"torch", "sklearn"} <= set(state["_skafm_versions"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", InconsistentVersionWarning)
        restored = pickle.loads(pickle.dumps(estimator))
    assert "_skafm_versions" not in restored.__dict__
    np.testing.assert_array_equal(restored.predict_proba(X), estimator.predict_proba(X))


def test_loading_under_another_skafm_version_warns(model, monkeypatch):
    estimator, X = model
    data = pickle.dumps(estimator)
    monkeypatch.setattr(skafm, "__version__", "99.0")
    with pytest.warns(InconsistentVersionWarning, match="pickled with skafm") as record:
        restored = pickle.loads(data)
    assert record[0].message.current_versions["skafm"] == "99.0"
    np.testing.assert_array_equal(restored.predict(X), estimator.predict(X))


def test_concurrent_predict_matches_sequential_and_does_not_mutate(model):
    estimator, X = model
    chunks = [X[i::8] for i in range(8)]
    expected = [estimator.predict_proba(chunk) for chunk in chunks]
    before = dict(estimator.__dict__)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            results = list(pool.map(estimator.predict_proba, chunks))
            for got, want in zip(results, expected, strict=True):
                np.testing.assert_array_equal(got, want)
    assert estimator.__dict__.keys() == before.keys()
    assert all(estimator.__dict__[key] is value for key, value in before.items())
