"""skafm.io: saving fitted models as tensors and plain values."""

import io
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.testing import assert_array_equal

from skafm import AFMClassifier, AFMRegressor
from skafm.io import dump, load

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def round_trip(estimator):
    buffer = io.BytesIO()
    dump(estimator, buffer)
    buffer.seek(0)
    return load(buffer)


@pytest.mark.parametrize(
    "labels",
    [
        np.array(["no", "yes"]),
        np.array([3, 7, 9]),
        np.array(["a", "b", "c"], dtype=object),
    ],
)
def test_classifier_round_trip_predicts_identically(planted_classification, labels):
    X, y, _ = planted_classification
    y = labels[np.arange(len(y)) % len(labels)]
    model = AFMClassifier(**FAST).fit(X, y)
    loaded = round_trip(model)
    assert type(loaded) is AFMClassifier
    assert_array_equal(loaded.classes_, model.classes_)
    assert loaded.classes_.dtype == model.classes_.dtype
    assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.get_params() == model.get_params()
    assert loaded.loss_curve_ == model.loss_curve_


def test_regressor_round_trip_keeps_feature_names_and_state(planted_regression):
    X, y, _ = planted_regression
    frame = pd.DataFrame(X.toarray(), columns=[f"f{i}" for i in range(X.shape[1])])
    model = AFMRegressor(**FAST, early_stopping=True).fit(frame, y)
    loaded = round_trip(model)
    assert_array_equal(loaded.feature_names_in_, model.feature_names_in_)
    assert_array_equal(loaded.predict(frame), model.predict(frame))
    assert loaded.validation_scores_ == model.validation_scores_
    # the optimizer state and random state come back too: training goes on
    # exactly as it would have without the round trip
    loaded.set_params(early_stopping=False)
    model.set_params(early_stopping=False)
    via_pickle = pickle.loads(pickle.dumps(model))
    loaded.partial_fit(frame, y)
    via_pickle.partial_fit(frame, y)
    assert_array_equal(loaded.predict(frame), via_pickle.predict(frame))


def test_file_loads_with_torch_weights_only(planted_regression, tmp_path):
    X, y, _ = planted_regression
    path = tmp_path / "model.skafm"
    params = {**FAST, "random_state": np.random.RandomState(3)}
    model = AFMRegressor(**params).fit(X, y)
    dump(model, path)
    state = torch.load(path, weights_only=True)
    assert state["estimator"] == "AFMRegressor"
    loaded = load(path)
    assert isinstance(loaded.random_state, np.random.RandomState)
    assert_array_equal(loaded.predict(X), model.predict(X))


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_with_code_is_refused_without_running_it(tmp_path, capsys):
    path = tmp_path / "evil.skafm"
    with open(path, "wb") as file:
        torch.save({"format": "skafm.io", "payload": Payload()}, file)
    with pytest.raises(ValueError, match="not a file written by skafm.io.dump|plain"):
        load(path)
    assert "must never run" not in capsys.readouterr().out


def test_refusals(planted_regression):
    X, y, _ = planted_regression
    with pytest.raises(ValueError, match="not fitted"):
        dump(AFMRegressor(), io.BytesIO())
    with pytest.raises(TypeError, match="AFMRegressor and AFMClassifier"):
        dump(object(), io.BytesIO())
    model = AFMRegressor(**FAST, scoring=lambda est, X, y: 0.0).fit(X, y)
    with pytest.raises(ValueError, match="scoring"):
        dump(model, io.BytesIO())
    buffer = io.BytesIO()
    torch.save({"format": "something else"}, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="not written by skafm.io.dump"):
        load(buffer)


def saved_state(planted_regression):
    X, y, _ = planted_regression
    buffer = io.BytesIO()
    dump(AFMRegressor(**FAST).fit(X, y), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def reloaded(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return load(buffer)


def test_every_malformed_file_is_one_clear_value_error(planted_regression, tmp_path):
    raw = io.BytesIO()
    dump(AFMRegressor(**FAST).fit(*planted_regression[:2]), raw)
    data = raw.getvalue()
    for content in (b"", data[: len(data) // 2], b"not a model at all"):
        path = tmp_path / "broken.skafm"
        path.write_bytes(content)
        with pytest.raises(ValueError, match="Not a valid skafm model file"):
            load(path)

    state = saved_state(planted_regression)
    broken = []
    missing = dict(state)
    del missing["network"]
    broken.append(missing)
    broken.append(dict(state, network=dict(state["network"], n_factors="8")))
    broken.append(dict(state, optimizers=[]))
    for bad in broken:
        with pytest.raises(ValueError, match="Not a valid skafm model file"):
            reloaded(bad)


def test_only_known_attribute_names_are_restored(planted_regression):
    state = saved_state(planted_regression)
    state["fitted"]["__dict__"] = {}
    with pytest.raises(ValueError, match="unknown fitted attributes"):
        reloaded(state)


def test_declared_sizes_are_checked_before_allocating(planted_regression):
    state = saved_state(planted_regression)
    network = dict(state["network"], n_features=20_000_000)
    with pytest.raises(ValueError, match="declared shape"):
        reloaded(dict(state, network=network))
    # an expanded view: a few bytes on disk that claim 2e9 elements
    bomb = torch.zeros(1, dtype=torch.float64).expand(2_000_000_000)
    fitted = dict(state["fitted"], loss_curve_={"__ndarray__": bomb})
    with pytest.raises(ValueError, match="more than its stored data"):
        reloaded(dict(state, fitted=fitted))


def test_models_saved_before_the_penalty_scope_load_as_the_sample_scope(
    planted_regression,
):
    state = saved_state(planted_regression)
    del state["params"]["penalty_scope"]
    del state["feature_counts"]
    model = reloaded(state)
    assert model.penalty_scope == "sample"
    X, y, _ = planted_regression
    model.partial_fit(X[:100], y[:100])
