"""Property-based tests: messy inputs end in finite outputs or a clear ValueError.

Hypothesis draws matrices in every accepted format and dtype, with int32 or
int64 indices, unsorted indices, duplicate entries, explicit zeros, empty rows
or no entries at all, values from 1e-30 to 1e38, and rows of 0 to 500 active
features; and labels of many types. Examples are derandomized and bounded so
that CI runs the same cases in a few seconds.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from skafm import AFMClassifier, AFMRegressor

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")

SETTINGS = hypothesis.settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
TINY = dict(n_factors=4, attention_size=4, max_iter=2, batch_size=8, random_state=0)
FORMATS = ["csr", "csc", "coo", "csr_array", "dense"]


def compressed(major, minor, values, shape, unsorted, rng):
    """A CSR matrix built from raw arrays, keeping duplicates and the given order."""
    order = np.lexsort((rng.rand(len(major)) if unsorted else minor, major))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(major, minlength=shape[0]))])
    return sp.csr_matrix((values[order], minor[order], indptr), shape=shape)


@st.composite
def messy_matrices(draw):
    n_rows = draw(st.integers(1, 12))
    n_features = draw(st.integers(1, 600))
    max_width = draw(st.sampled_from([1, 2, 10, 40, 500]))
    magnitude = draw(st.sampled_from([1e-30, 1e-6, 1.0, 1e4, 1e19, 1e38]))
    layout = dict(
        fmt=draw(st.sampled_from(FORMATS)),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        index_dtype=draw(st.sampled_from([np.int32, np.int64])),
        unsorted=draw(st.booleans()),
        duplicates=draw(st.booleans()),
        explicit_zeros=draw(st.booleans()),
        empty=draw(st.booleans()),
    )
    rng = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))

    widths = rng.randint(0, min(max_width, n_features) + 1, size=n_rows)
    if layout["empty"]:
        widths[:] = 0
    rows = np.repeat(np.arange(n_rows), widths)
    cols = np.concatenate(
        [rng.choice(n_features, w, replace=False) for w in widths] + [[]]
    ).astype(np.int64)
    values = magnitude * rng.uniform(-2, 2, size=len(rows))
    if layout["duplicates"] and len(rows):
        extra = rng.randint(len(rows), size=max(1, len(rows) // 4))
        rows, cols = np.r_[rows, rows[extra]], np.r_[cols, cols[extra]]
        values = np.r_[values, values[extra]]
    if layout["explicit_zeros"] and len(rows):
        values[rng.rand(len(values)) < 0.3] = 0.0
    values = values.astype(layout["dtype"])
    shape = (n_rows, n_features)

    fmt = layout["fmt"]
    if fmt == "csc":
        X = compressed(cols, rows, values, shape[::-1], layout["unsorted"], rng).T
    elif fmt == "coo":
        X = sp.coo_matrix((values, (rows, cols)), shape=shape)
    else:
        X = compressed(rows, cols, values, shape, layout["unsorted"], rng)
        if fmt == "csr_array":
            X = sp.csr_array(X)
        elif fmt == "dense":
            with np.errstate(over="ignore"):
                X = X.toarray()
    if sp.issparse(X):
        if fmt == "coo":
            X.row = X.row.astype(layout["index_dtype"])
            X.col = X.col.astype(layout["index_dtype"])
        else:
            X.indices = X.indices.astype(layout["index_dtype"])
            X.indptr = X.indptr.astype(layout["index_dtype"])
    return X


LABELS = {
    "int": np.array([0, 1, 2]),
    "negative int": np.array([-1, 1]),
    "str": np.array(["cat", "dog", "eel"]),
    "object": np.array(["yes", "no"], dtype=object),
    "bool": np.array([True, False]),
    "float": np.array([0.5, 2.5, -1.0]),
    "uint8": np.array([3, 7], dtype=np.uint8),
}


def ends_finite_or_value_error(fit_and_predict):
    """Run; a ValueError is a clear refusal, anything else must be finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning of 2-epoch fits
        try:
            outputs = fit_and_predict()
        except ValueError as error:
            assert str(error), "a ValueError must say what is wrong"
            hypothesis.event(f"ValueError: {str(error)[:50]}")
            return None
    hypothesis.event("finite outputs")
    for output in outputs:
        assert np.all(np.isfinite(output))
    return outputs


@SETTINGS
@hypothesis.given(
    X=messy_matrices(),
    scale=st.sampled_from([1e-8, 1.0, 1e6]),
    seed=st.integers(0, 1000),
)
def test_regressor_on_messy_input(X, scale, seed):
    rng = np.random.RandomState(seed)
    y = scale * rng.normal(size=X.shape[0])
    snapshot = X.copy()

    def fit_and_predict():
        model = AFMRegressor(**TINY).fit(X, y)
        return [model.predict(X)]

    outputs = ends_finite_or_value_error(fit_and_predict)
    if outputs is not None:
        assert outputs[0].shape == (X.shape[0],)
    # the caller's matrix is never modified
    if sp.issparse(X):
        assert (X != snapshot).nnz == 0 and X.format == snapshot.format
    else:
        np.testing.assert_array_equal(X, snapshot)


@SETTINGS
@hypothesis.given(
    X=messy_matrices(),
    label_kind=st.sampled_from(sorted(LABELS)),
    seed=st.integers(0, 1000),
)
def test_classifier_on_messy_input(X, label_kind, seed):
    rng = np.random.RandomState(seed)
    # every class present when there are enough rows
    y = rng.permutation(np.resize(LABELS[label_kind], X.shape[0]))

    def fit_and_predict():
        model = AFMClassifier(**TINY).fit(X, y)
        return [model.predict_proba(X), model.decision_function(X)], model

    def run():
        outputs, model = fit_and_predict()
        predicted = model.predict(X)
        assert set(predicted) <= set(y)
        assert predicted.dtype == model.classes_.dtype
        return outputs

    outputs = ends_finite_or_value_error(run)
    if outputs is not None:
        np.testing.assert_allclose(outputs[0].sum(axis=1), 1, rtol=1e-6)


@SETTINGS
@hypothesis.given(train=messy_matrices(), test=messy_matrices())
def test_predict_on_messy_input_of_a_fitted_model(train, test):
    n_features = train.shape[1]
    if test.shape[1] != n_features:
        test = sp.random(3, n_features, density=0.5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AFMRegressor(**TINY).fit(train, np.arange(train.shape[0]))
        except ValueError:
            return
    ends_finite_or_value_error(lambda: [model.predict(test)])


PLANTED_X = np.random.RandomState(0).rand(40, 6)
PLANTED_Y = PLANTED_X @ np.arange(6) + PLANTED_X[:, 0] * PLANTED_X[:, 1]


@SETTINGS
@hypothesis.given(
    exponent=st.integers(-300, 300),
    uniform=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_sample_weights_of_any_scale_train_as_the_same_weights_scaled_to_one(
    exponent, uniform, seed
):
    rng = np.random.RandomState(seed)
    weights = np.ones(len(PLANTED_Y)) if uniform else rng.uniform(0.5, 2.0, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = AFMRegressor(**TINY).fit(PLANTED_X, PLANTED_Y, weights)
        scaled = AFMRegressor(**TINY).fit(
            PLANTED_X, PLANTED_Y, weights * 10.0**exponent
        )
    np.testing.assert_allclose(
        scaled.predict(PLANTED_X), reference.predict(PLANTED_X), rtol=1e-5, atol=1e-6
    )
    if uniform:
        unweighted = AFMRegressor(**TINY).fit(PLANTED_X, PLANTED_Y)
        np.testing.assert_allclose(
            scaled.predict(PLANTED_X), unweighted.predict(PLANTED_X), rtol=1e-5
        )


@SETTINGS
@hypothesis.given(
    exponent=st.integers(-300, 300),
    offset=st.sampled_from([0.0, 1.0, -1e6]),
    seed=st.integers(0, 1000),
)
def test_targets_of_any_magnitude_train_or_are_refused_as_out_of_range(
    exponent, offset, seed
):
    rng = np.random.RandomState(seed)
    y = offset + 10.0**exponent * rng.normal(size=len(PLANTED_Y))
    model = AFMRegressor(**TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if np.abs(y).max() > 1e30:
            with pytest.raises(ValueError, match="out of range"):
                model.fit(PLANTED_X, y)
            return
        predicted = model.fit(PLANTED_X, y).predict(PLANTED_X)
    assert np.isfinite(predicted).all()
    # predictions stay on the target's scale: within its range, give or take
    # its spread (a model trained two epochs may still be far from the fit)
    # (for a constant target, given or take 1)
    spread = np.ptp(y) or 1.0
    assert (predicted >= y.min() - 10 * spread).all()
    assert (predicted <= y.max() + 10 * spread).all()
