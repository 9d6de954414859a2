"""Models written by an earlier skafm (tests/data, see make_old_models.py) still work.

Loaded as pickles and as skafm.io files, they predict the stored outputs bit
for bit (probabilities to within float64 rounding) with the computation that
stored them, PyTorch's operations; the fused prediction kernel, which sums
in another order, predicts them to within float32 rounding. A pickled model
trains on with ``partial_fit``.
"""

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

import skafm.io
from skafm._nn import ops

DATA = Path(__file__).parent / "data"
NAMES = ["regressor", "fm_regressor", "binary_classifier", "multiclass_classifier"]


def load_pickle(name):
    with warnings.catch_warnings():
        # written by a development version that may differ from this one
        warnings.simplefilter("ignore", skafm.exceptions.InconsistentVersionWarning)
        with open(DATA / f"old_{name}.pkl", "rb") as file:
            return pickle.load(file)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(DATA / "old_models_predictions.npz"))


def stored_inputs(expected):
    return sp.csr_matrix(
        (expected["X_data"], expected["X_indices"], expected["X_indptr"]),
        shape=tuple(expected["X_shape"]),
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("load", ["pickle", "skafm.io"])
def test_an_old_model_predicts_what_it_predicted(name, load, expected, monkeypatch):
    if load == "pickle":
        model = load_pickle(name)
    else:
        model = skafm.io.load(DATA / f"old_{name}.skafm")
    X = stored_inputs(expected)
    fused_output = model.predict(X)
    if name == "regressor":
        np.testing.assert_allclose(
            fused_output, expected[f"{name}_predict"], rtol=1e-5, atol=1e-6
        )
    else:
        np.testing.assert_array_equal(fused_output, expected[f"{name}_predict"])
    if f"{name}_proba" in expected:
        np.testing.assert_allclose(
            model.predict_proba(X), expected[f"{name}_proba"], rtol=1e-5, atol=1e-6
        )
    monkeypatch.setattr(ops, "attention_prediction", lambda module: None)
    np.testing.assert_array_equal(model.predict(X), expected[f"{name}_predict"])
    if f"{name}_proba" in expected:
        # a float64 softmax (scipy's, on numpy's exp) of the network's float32
        # outputs: its last bit may round differently from one numpy release
        # to another, while any change of those outputs moves it by 1e-8 or
        # more
        np.testing.assert_allclose(
            model.predict_proba(X), expected[f"{name}_proba"], rtol=0, atol=1e-14
        )


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("name", ["regressor", "multiclass_classifier"])
def test_an_old_pickle_trains_on(name, expected):
    model = load_pickle(name)
    X = stored_inputs(expected)
    y = expected[f"{name}_predict"]
    n_iter = model.n_iter_
    model.partial_fit(X, y)
    assert model.n_iter_ == n_iter + 1
    assert np.isfinite(model.predict(X).astype(float)).all()
