"""Bad input gets a clear error and leaves a fitted model as it was."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import NotFittedError

from skafm import AFMClassifier, AFMRegressor

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    X = sp.csr_matrix((rng.rand(80, 6) < 0.5).astype(float))
    return X, rng.normal(size=80), (rng.rand(80) < 0.5).astype(int)


def with_nan(X):
    X = X.copy()
    X.data[0] = np.nan
    return X


def with_inf(X):
    X = X.toarray()
    X[1, 2] = np.inf
    return X


BAD_FITS = {
    "nan in X": (lambda X, y, w: (with_nan(X), y, w), "Input X contains NaN"),
    "inf in X": (lambda X, y, w: (with_inf(X), y, w), "Input X contains infinity"),
    "nan in y": (lambda X, y, w: (X, np.r_[np.nan, y[1:]], w), "Input y contains NaN"),
    "inf in sample_weight": (
        lambda X, y, w: (X, y, np.r_[np.inf, w[1:]]),
        "Input sample_weight contains infinity",
    ),
    "negative sample_weight": (
        lambda X, y, w: (X, y, np.r_[-1.0, w[1:]]),
        "Negative values in data passed to `sample_weight`",
    ),
    "all-zero sample_weight": (
        lambda X, y, w: (X, y, np.zeros_like(w)),
        "Sample weights must contain at least one non-zero number",
    ),
    "wrong length of y": (
        lambda X, y, w: (X, y[:-1], w),
        "inconsistent numbers of samples",
    ),
}


def assert_same_model(model, snapshot, X):
    state, predictions = snapshot
    assert model.__dict__.keys() == state.keys()
    for key, value in state.items():
        assert model.__dict__[key] is value, key
    np.testing.assert_array_equal(model.predict(X), predictions)


def snapshot_of(model, X):
    return dict(model.__dict__), model.predict(X)


@pytest.mark.parametrize("estimator_class", [AFMRegressor, AFMClassifier])
@pytest.mark.parametrize("case", list(BAD_FITS))
def test_bad_fit_input_raises_and_keeps_the_fitted_model(data, estimator_class, case):
    X, y_reg, y_clf = data
    y = y_reg if estimator_class is AFMRegressor else y_clf
    if estimator_class is AFMClassifier and case == "nan in y":
        y = y.astype(float)
    model = estimator_class(**FAST).fit(X, y)
    snapshot = snapshot_of(model, X)
    make_bad, message = BAD_FITS[case]
    bad_X, bad_y, bad_w = make_bad(X, y, np.ones(len(y)))
    with pytest.raises(ValueError, match=message):
        model.fit(bad_X, bad_y, sample_weight=bad_w)
    assert_same_model(model, snapshot, X)


def test_wider_data_in_a_failed_refit_does_not_change_n_features_in(data):
    X, y, _ = data
    model = AFMRegressor(**FAST).fit(X, y)
    snapshot = snapshot_of(model, X)
    wider = sp.hstack([X, X]).tocsr()
    # sample weights are checked after X and y have been validated and recorded
    with pytest.raises(ValueError, match="Negative values"):
        model.fit(wider, y, sample_weight=np.r_[-1.0, np.ones(len(y) - 1)])
    assert model.n_features_in_ == X.shape[1]
    assert_same_model(model, snapshot, X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_failure_after_target_encoding_keeps_the_fitted_model(data):
    X, y, _ = data
    model = AFMRegressor(**FAST).fit(X, y)
    snapshot = snapshot_of(model, X)
    with pytest.raises(ValueError, match="device='cuda'"):
        model.set_params(device="cuda").fit(X, 100.0 * y + 7.0)
    model.set_params(device="cpu")
    assert_same_model(model, snapshot, X)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function"])
def test_wrong_number_of_features_at_predict(data, method):
    X, _, y = data
    model = AFMClassifier(**FAST).fit(X, y)
    with pytest.raises(
        ValueError, match="X has 5 features, but AFMClassifier is expecting 6"
    ):
        getattr(model, method)(X[:, :5])


def test_nan_at_predict(data):
    X, y, _ = data
    model = AFMRegressor(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        model.predict(with_nan(X))


def test_a_float_csr_is_predicted_without_scikit_learns_validation(data, monkeypatch):
    import skafm._base

    X, y, _ = data
    model = AFMRegressor(**FAST).fit(X, y)
    expected = model.predict(X.toarray())
    calls = []
    real_validate_data = skafm._base.validate_data

    def counting_validate_data(*args, **kwargs):
        calls.append(type(args[1]).__name__)
        return real_validate_data(*args, **kwargs)

    monkeypatch.setattr(skafm._base, "validate_data", counting_validate_data)
    for csr in (X.astype(np.float32), X, sp.csr_array(X)):
        np.testing.assert_allclose(model.predict(csr), expected, rtol=1e-6)
    assert calls == []
    # what the shortcut does not take still goes through the validation
    model.predict(X.tocoo())
    model.predict(X.astype(np.int64))
    assert calls == ["coo_matrix", "csr_matrix"]
    with pytest.raises(ValueError, match="Input X contains NaN"):
        model.predict(with_nan(X))


def test_a_model_fitted_on_named_columns_still_warns_on_a_csr(data):
    pd = pytest.importorskip("pandas")
    X, y, _ = data
    frame = pd.DataFrame(X.toarray(), columns=[f"c{i}" for i in range(X.shape[1])])
    model = AFMRegressor(**FAST).fit(frame, y)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        model.predict(X)


@pytest.mark.parametrize("labels", [np.zeros(80, int), np.array(["only"] * 80)])
def test_single_class_is_refused(data, labels):
    X, _, y = data
    model = AFMClassifier(**FAST).fit(X, y)
    snapshot = snapshot_of(model, X)
    with pytest.raises(ValueError, match="only one class"):
        model.fit(X, labels)
    assert_same_model(model, snapshot, X)


def test_single_class_with_positive_weight_is_refused(data):
    X, _, y = data
    weights = (y == 1).astype(float)
    with pytest.raises(
        ValueError, match="only one class: np.int64\\(1\\)|only one class: 1"
    ):
        AFMClassifier(**FAST).fit(X, y, sample_weight=weights)


def test_continuous_target_is_refused_by_the_classifier(data):
    X, y, _ = data
    with pytest.raises(ValueError, match="Unknown label type"):
        AFMClassifier(**FAST).fit(X, y)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"device": "tpu"}, "'device' parameter"),
        ({"n_factors": 0}, "'n_factors' parameter"),
        ({"dropout": 1.0}, "'dropout' parameter"),
        ({"optimizer": "sgd"}, "'optimizer' parameter"),
        ({"learning_rate_init": 0.0}, "'learning_rate_init' parameter"),
    ],
)
def test_invalid_parameters_are_named(data, params, message):
    X, y, _ = data
    model = AFMRegressor(**FAST).fit(X, y)
    snapshot = snapshot_of(model, X)
    model.set_params(**params)
    with pytest.raises(ValueError, match=message):
        model.fit(X, y)
    model.set_params(
        **{key: FAST.get(key, AFMRegressor().get_params()[key]) for key in params}
    )
    assert_same_model(model, snapshot, X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(data):
    X, y, _ = data
    with pytest.raises(ValueError, match="device='cuda' was requested"):
        AFMRegressor(**FAST, device="cuda").fit(X, y)


@pytest.mark.parametrize("estimator_class", [AFMRegressor, AFMClassifier])
def test_unfitted_use_raises_not_fitted(data, estimator_class):
    X = data[0]
    methods = ["predict"]
    if estimator_class is AFMClassifier:
        methods += ["predict_proba", "predict_log_proba", "decision_function"]
    for method in methods:
        with pytest.raises(NotFittedError):
            getattr(estimator_class(), method)(X)


def test_x_val_through_a_pipeline_with_transform_input():
    import sklearn
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.RandomState(0)
    X = rng.choice(["a", "b", "c"], size=(300, 3))
    y = (X[:, 0] == "a") * 1.0 + (X[:, 1] == X[:, 2])
    X_val, y_val = X[:60], y[:60]
    with sklearn.config_context(enable_metadata_routing=True):
        model = AFMRegressor(max_iter=3, early_stopping=True, random_state=0)
        model.set_fit_request(X_val=True, y_val=True)
        pipeline = Pipeline(
            [("encode", OneHotEncoder(handle_unknown="ignore")), ("afm", model)],
            transform_input=["X_val"],
        )
        pipeline.fit(X, y, X_val=X_val, y_val=y_val)
    # scored on the given validation set: the loss of its transformed rows
    assert len(pipeline[-1].validation_scores_) == pipeline[-1].n_iter_
    untransformed = Pipeline(
        [("encode", OneHotEncoder()), ("afm", AFMRegressor(max_iter=3))]
    )
    with pytest.raises(ValueError, match="transform_input=\\['X_val'\\]"):
        untransformed.fit(X, y, afm__X_val=X_val, afm__y_val=y_val)


def test_a_class_too_small_to_split_names_early_stopping():
    X = np.random.RandomState(0).rand(30, 3)
    y = np.r_[np.zeros(29), 1]
    with pytest.raises(ValueError, match="Early stopping could not set aside"):
        AFMClassifier(early_stopping=True, max_iter=2).fit(X, y)


def test_a_single_class_is_named_as_a_plain_value():
    X = np.random.RandomState(0).rand(30, 3)
    with pytest.raises(ValueError, match=r"only one class: 0\.0\.$"):
        AFMClassifier().fit(X, np.zeros(30))
    with pytest.raises(ValueError, match=r"only one class: 'spam'\.$"):
        AFMClassifier().fit(X, np.array(["spam"] * 30))
