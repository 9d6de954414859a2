"""AFMRegressor and AFMClassifier as scikit-learn users meet them."""

import io
import pickle
import warnings
from contextlib import redirect_stdout

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder

import skafm._nn.inference
import skafm._training
from skafm import AFMClassifier, AFMRegressor

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def fitted_regressor(X, y, **params):
    return AFMRegressor(**{**FAST, **params}).fit(X, y)


def test_afm_beats_linear_model_on_planted_interactions(planted_regression):
    X, y, _ = planted_regression
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    afm = AFMRegressor(random_state=0).fit(X_train, y_train)
    linear = Ridge().fit(X_train, y_train)
    afm_r2 = r2_score(y_test, afm.predict(X_test))
    linear_r2 = r2_score(y_test, linear.predict(X_test))
    assert afm_r2 > 0.9
    assert afm_r2 > linear_r2 + 0.15


def test_pipeline_with_one_hot_encoder_on_a_dataframe():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    n = 600
    frame = pd.DataFrame(
        {
            "user": rng.choice(["ann", "bob", "cy", "dee"], n),
            "item": rng.choice(["tea", "jam", "ink"], n),
            "hour": rng.randint(0, 4, n),
        }
    )
    y = (frame["user"].isin(["ann", "cy"]) == (frame["item"] == "tea")).astype(float)
    y = y.to_numpy() + rng.normal(0, 0.05, n)
    model = make_pipeline(
        OneHotEncoder(handle_unknown="ignore"), AFMRegressor(random_state=0)
    ).fit(frame, y)
    assert model.score(frame, y) > 0.9
    assert model[-1].n_features_in_ == 4 + 3 + 4
    unseen = pd.DataFrame({"user": ["zed"], "item": ["tea"], "hour": [9]})
    assert np.isfinite(model.predict(unseen)).all()


def test_feature_names_are_recorded_from_a_numeric_dataframe():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    frame = pd.DataFrame(
        rng.randint(0, 2, (50, 3)).astype(float), columns=["a", "b", "c"]
    )
    model = fitted_regressor(frame, rng.normal(size=50))
    np.testing.assert_array_equal(model.feature_names_in_, ["a", "b", "c"])


def test_grid_search_in_parallel_over_factors_and_alpha(planted_regression):
    X, y, _ = planted_regression
    search = GridSearchCV(
        AFMRegressor(**FAST),
        {"n_factors": [2, 8], "alpha": [1e-5, 1e-2]},
        cv=2,
        n_jobs=2,
    ).fit(X[:1000], y[:1000])
    assert set(search.best_params_) == {"n_factors", "alpha"}
    assert len(search.cv_results_["mean_test_score"]) == 4
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    assert search.best_estimator_.n_features_in_ == X.shape[1]


def test_clone_gives_an_unfitted_copy_with_the_same_parameters(planted_regression):
    X, y, _ = planted_regression
    model = fitted_regressor(X[:200], y[:200], alpha=0.1, attention=False)
    copy = clone(model)
    assert copy.get_params() == model.get_params()
    assert not hasattr(copy, "module_")
    with pytest.raises(NotFittedError):
        copy.predict(X[:2])


@pytest.mark.parametrize(
    "dump, load", [(pickle.dumps, pickle.loads), ("joblib", "joblib")]
)
def test_pickle_round_trip_gives_identical_predictions(
    planted_classification, dump, load
):
    X, y, _ = planted_classification
    model = AFMClassifier(**FAST).fit(X, y)
    if dump == "joblib":
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        buffer.seek(0)
        restored = joblib.load(buffer)
    else:
        restored = load(dump(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert all(p.device.type == "cpu" for p in restored.module_.parameters())


def test_same_random_state_gives_identical_models_without_touching_torch_rng(
    planted_regression,
):
    X, y, _ = planted_regression
    torch_state = torch.get_rng_state()
    params = dict(dropout=0.3, attention_dropout=0.2)
    first = fitted_regressor(X[:500], y[:500], **params).predict(X)
    second = fitted_regressor(X[:500], y[:500], **params).predict(X)
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(first, second)
    other = fitted_regressor(X[:500], y[:500], **params, random_state=1).predict(X)
    assert not np.array_equal(first, other)


def test_string_labels():
    rng = np.random.RandomState(0)
    X = sp.csr_matrix(np.eye(4)[rng.randint(0, 4, 400)])
    y = np.array(["cat", "dog"])[(X.argmax(1).A1 >= 2).astype(int)]
    model = AFMClassifier(**{**FAST, "max_iter": 40}).fit(X, y)
    np.testing.assert_array_equal(model.classes_, ["cat", "dog"])
    assert model.predict(X).dtype == y.dtype
    assert model.score(X, y) == 1.0
    assert model.decision_function(X).shape == (400,)


def test_boolean_labels(planted_classification):
    X, y, _ = planted_classification
    model = AFMClassifier(**FAST).fit(X, y.astype(bool))
    np.testing.assert_array_equal(model.classes_, [False, True])
    assert model.predict(X).dtype == bool


def test_three_class_problem():
    rng = np.random.RandomState(0)
    n = 900
    fields = rng.randint(0, 3, size=(n, 2))
    X = OneHotEncoder().fit_transform(fields)
    y = np.array(["low", "mid", "high"])[(fields[:, 0] + fields[:, 1]) % 3]
    model = AFMClassifier(**{**FAST, "max_iter": 60}).fit(X, y)
    np.testing.assert_array_equal(model.classes_, ["high", "low", "mid"])
    proba = model.predict_proba(X)
    assert proba.shape == (n, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), proba, rtol=1e-6)
    assert model.decision_function(X).shape == (n, 3)
    # the label is a pure interaction of the two fields
    assert model.score(X, y) > 0.95


def test_binary_probabilities_are_consistent(planted_classification):
    X, y, _ = planted_classification
    model = AFMClassifier(**FAST).fit(X, y)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(model.predict_log_proba(X), np.log(proba), atol=1e-10)
    decision = model.decision_function(X)
    np.testing.assert_array_equal(
        model.predict(X), model.classes_[(decision > 0).astype(int)]
    )


def test_rows_with_zero_one_and_many_active_features():
    rng = np.random.RandomState(0)
    widths = np.r_[np.zeros(30, int), np.ones(30, int), rng.randint(2, 60, 60)]
    rows, cols = [], []
    for row, width in enumerate(widths):
        rows += [row] * width
        cols += list(rng.choice(200, size=width, replace=False))
    X = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(widths), 200))
    y = widths + rng.normal(0, 0.1, len(widths))
    model = fitted_regressor(X, y)
    pred = model.predict(X)
    assert np.isfinite(pred).all()
    # an empty row has no linear term and no pairs: the bias alone
    np.testing.assert_allclose(pred[:30], pred[0])


@pytest.mark.parametrize("n_classes", [None, 3])
def test_predictions_do_not_depend_on_prediction_chunks(
    planted_regression, monkeypatch, n_classes
):
    """Rows predicted alone, in small chunks or all at once: the same bits."""
    X, y, _ = planted_regression
    X, y = X[:600], y[:600]
    if n_classes is None:
        model = fitted_regressor(X, y)
        output = model.predict
    else:
        labels = np.digitize(y, np.quantile(y, [1 / 3, 2 / 3]))
        model = AFMClassifier(**FAST).fit(X, labels)
        output = model.decision_function
    whole = output(X)
    monkeypatch.setattr(skafm._nn.inference, "PREDICT_MAX_ROWS", 7)
    np.testing.assert_array_equal(output(X), whole)
    for row in range(0, 600, 97):
        np.testing.assert_array_equal(output(X[row]), whole[row : row + 1])


@pytest.mark.parametrize(
    "convert",
    [sp.csc_matrix, sp.coo_matrix, sp.csr_array, sp.csc_array, sp.coo_array, "dense"],
)
def test_other_input_formats_give_the_same_predictions_as_csr(
    planted_regression, convert
):
    X, y, _ = planted_regression
    X, y = X[:400], y[:400]
    other = X.toarray() if convert == "dense" else convert(X)
    reference = fitted_regressor(X, y)
    np.testing.assert_array_equal(reference.predict(other), reference.predict(X))
    np.testing.assert_array_equal(
        fitted_regressor(other, y).predict(X), reference.predict(X)
    )


def test_float32_and_float64_inputs_agree(planted_regression):
    X, y, _ = planted_regression
    model = fitted_regressor(X[:400], y[:400])
    np.testing.assert_array_equal(
        model.predict(X.astype(np.float32)), model.predict(X.astype(np.float64))
    )


def test_explicit_zeros_and_duplicate_entries(planted_regression):
    X, y, _ = planted_regression
    X = X[:300]
    model = fitted_regressor(X, y[:300])
    coo = X.tocoo()
    # every entry split into two halves, plus a stored zero in every row
    n_rows = X.shape[0]
    messy = sp.coo_matrix(
        (
            np.r_[coo.data / 2, coo.data / 2, np.zeros(n_rows)],
            (
                np.r_[coo.row, coo.row, np.arange(n_rows)],
                np.r_[coo.col, coo.col, np.zeros(n_rows, int)],
            ),
        ),
        shape=X.shape,
    )
    np.testing.assert_allclose(model.predict(messy), model.predict(X), rtol=1e-6)


def test_sparse_input_is_never_densified(planted_regression, monkeypatch):
    X, y, _ = planted_regression

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse matrix was densified")

    for cls in (sp.csr_matrix, sp.csc_matrix, sp.coo_matrix, sp.csr_array):
        monkeypatch.setattr(cls, "toarray", refuse)
        monkeypatch.setattr(cls, "todense", refuse)
    model = fitted_regressor(X.tocsc()[:300], y[:300])
    assert np.isfinite(model.predict(sp.coo_matrix(X[:10]))).all()


def test_wide_feature_space_stays_cheap():
    # 5 million features, 50 rows: dense input would need 2 GB; embeddings are
    # 5e6 x 2 floats, the only per-feature cost
    rng = np.random.RandomState(0)
    columns = rng.randint(0, 5_000_000, size=(50, 10))
    X = sp.csr_matrix(
        (np.ones(500), columns.ravel(), np.arange(0, 501, 10)), shape=(50, 5_000_000)
    )
    model = AFMRegressor(n_factors=2, attention_size=2, max_iter=2, random_state=0)
    model.fit(X, rng.normal(size=50))
    assert model.predict(X).shape == (50,)


def test_sample_weight_of_ones_equals_no_weight(planted_regression):
    X, y, _ = planted_regression
    unweighted = fitted_regressor(X[:300], y[:300]).predict(X[:50])
    weighted = AFMRegressor(**FAST).fit(X[:300], y[:300], sample_weight=np.ones(300))
    np.testing.assert_array_equal(weighted.predict(X[:50]), unweighted)


def test_sample_weight_steers_the_fit():
    X = sp.csr_matrix(np.ones((200, 1)))
    y = np.r_[np.zeros(100), np.ones(100)]
    weights = np.r_[np.full(100, 9.0), np.ones(100)]
    model = AFMRegressor(**{**FAST, "max_iter": 60}).fit(X, y, sample_weight=weights)
    assert model.predict(X[:1])[0] == pytest.approx(0.1, abs=0.03)


def test_regression_targets_keep_their_units(planted_regression):
    X, y, _ = planted_regression
    X, y = X[:600], y[:600]
    small = fitted_regressor(X, y).predict(X)
    large = fitted_regressor(X, 1000.0 * y + 5000.0).predict(X)
    np.testing.assert_allclose(large, 1000.0 * small + 5000.0, rtol=1e-4)
    constant = fitted_regressor(X, np.full(600, 3.0)).predict(X)
    np.testing.assert_allclose(constant, 3.0, atol=1e-2)


def test_fitted_attributes(planted_regression):
    X, y, _ = planted_regression
    model = fitted_regressor(X[:256], y[:256])
    assert model.n_features_in_ == X.shape[1]
    assert 1 <= model.n_iter_ <= FAST["max_iter"]
    assert len(model.loss_curve_) == model.n_iter_
    assert model.t_ == model.n_iter_ * 256
    assert model.loss_curve_[-1] < model.loss_curve_[0]


def test_convergence_warning_when_max_iter_stops_training(planted_regression):
    X, y, _ = planted_regression
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        AFMRegressor(max_iter=2, random_state=0).fit(X[:200], y[:200])


def test_training_stops_when_loss_stops_improving():
    X = sp.csr_matrix(np.ones((64, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = AFMRegressor(max_iter=500, tol=1.0, n_iter_no_change=3).fit(
            X, np.ones(64)
        )
    # in each phase the first epoch sets the reference; three more without
    # improvement stop it
    assert [phase["n_iter"] for phase in model.phases_] == [1 + 3, 1 + 3]
    assert model.n_iter_ == 2 * (1 + 3)


def test_verbose_prints_one_line_per_epoch(planted_regression):
    X, y, _ = planted_regression
    output = io.StringIO()
    with redirect_stdout(output):
        fitted_regressor(X[:100], y[:100], max_iter=3, verbose=1)
    assert output.getvalue().count("Epoch") == 3


def test_plain_fm_and_afm_differ(planted_regression):
    X, y, _ = planted_regression
    fm = fitted_regressor(X[:300], y[:300], attention=False)
    afm = fitted_regressor(X[:300], y[:300], attention=True)
    assert not hasattr(fm.module_, "attention_weight")
    assert not np.allclose(fm.predict(X[:20]), afm.predict(X[:20]))


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_both_optimizers_learn(planted_regression, optimizer):
    X, y, _ = planted_regression
    lr = 0.05 if optimizer == "adagrad" else 0.01
    model = fitted_regressor(
        X, y, optimizer=optimizer, learning_rate_init=lr, max_iter=20
    )
    assert model.score(X, y) > 0.8


def test_auto_device_runs_where_torch_can(planted_regression):
    X, y, _ = planted_regression
    model = fitted_regressor(X[:100], y[:100], device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.module_.bias.device.type == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_pickles_to_cpu(planted_regression):
    X, y, _ = planted_regression
    model = fitted_regressor(X[:300], y[:300], device="cuda")
    restored = pickle.loads(pickle.dumps(model))
    assert restored.module_.bias.device.type == "cpu"
    assert model.module_.bias.device.type == "cuda"
    np.testing.assert_allclose(
        restored.predict(X), model.predict(X), rtol=1e-5, atol=1e-6
    )
