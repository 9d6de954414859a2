"""ONNX export: onnxruntime computes what predict and predict_proba return."""

import numpy as np
import pytest
import scipy.sparse as sp

from skafm import AFMClassifier, AFMRegressor
from skafm.datasets import make_interaction_data

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("skl2onnx")
skafm_onnx = pytest.importorskip("skafm.onnx")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SMALL = dict(n_factors=8, attention_size=4, max_iter=5, random_state=0)


def session(model):
    return ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def run_bare(estimator, X, input_format):
    X = sp.csr_matrix(X, dtype=np.float32)
    if input_format == "sparse":
        feeds = {
            "indices": X.indices.astype(np.int64),
            "values": X.data,
            "offsets": X.indptr.astype(np.int64),
        }
    else:
        feeds = {"X": X.toarray()}
    model = skafm_onnx.to_onnx(estimator, input_format=input_format)
    return session(model).run(None, feeds)


def ragged_rows(n_features=20, seed=0):
    """Rows with 0, 1, 2 and many active features, values not all 1, an explicit 0."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((8, n_features), dtype=np.float32)
    dense[1, 3] = 2.0
    dense[2, [0, 7]] = [1.0, -0.5]
    dense[3, :] = rng.normal(size=n_features)
    dense[4, ::2] = 1.0
    dense[5, [1, 2, 3]] = [0.3, 1.0, 1.0]
    dense[6, [4, 19]] = 1.0
    dense[7, 5:15] = rng.uniform(0.5, 2, size=10)
    X = sp.csr_matrix(dense)
    # an explicit zero entry is not an active feature
    X = sp.csr_matrix(
        (np.append(X.data, 0.0), np.append(X.indices, 9), X.indptr.copy()),
        shape=X.shape,
    )
    X.indptr[-1] = len(X.data)
    return X


@pytest.fixture(scope="module")
def training_data():
    X, y, _ = make_interaction_data(600, n_fields=4, n_categories=5, random_state=0)
    return sp.csr_matrix(X), y


@pytest.mark.parametrize("input_format", ["sparse", "dense"])
@pytest.mark.parametrize(
    "params",
    [{}, {"attention": False}, {"average_window": 2.0}],
    ids=["afm", "fm", "averaged"],
)
def test_regressor_graphs_predict_as_predict(training_data, input_format, params):
    X, y = training_data
    model = AFMRegressor(**SMALL, **params).fit(X, 100 * y + 7)
    for rows in (X[:50], ragged_rows()):
        (output,) = run_bare(model, rows, input_format)
        assert output.shape == (rows.shape[0], 1)
        np.testing.assert_allclose(
            output[:, 0], model.predict(rows), rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("input_format", ["sparse", "dense"])
@pytest.mark.parametrize(
    "labels",
    [[0, 1], ["no", "yes"], [3, 5, 9], ["a", "b", "c"]],
    ids=["binary-int", "binary-str", "3-int", "3-str"],
)
def test_classifier_graphs_give_labels_and_probabilities(
    training_data, input_format, labels
):
    X, score = training_data
    bins = np.quantile(score, np.linspace(0, 1, len(labels) + 1)[1:-1])
    y = np.asarray(labels, dtype=object if isinstance(labels[0], str) else None)[
        np.digitize(score, bins)
    ]
    model = AFMClassifier(**SMALL).fit(X, y)
    for rows in (X[:50], ragged_rows()):
        label, proba = run_bare(model, rows, input_format)
        assert proba.shape == (rows.shape[0], len(labels))
        np.testing.assert_allclose(proba, model.predict_proba(rows), atol=1e-5)
        assert label.tolist() == model.predict(rows).tolist()


def test_float_class_labels_come_out_as_int64_of_the_same_values(training_data):
    X, score = training_data
    model = AFMClassifier(**SMALL).fit(X, np.where(score > 0, 2.0, -1.0))
    label, _ = run_bare(model, X[:50], "sparse")
    assert label.dtype == np.int64
    np.testing.assert_array_equal(label, model.predict(X[:50]))


def test_bad_export_arguments_are_refused(training_data):
    X, y = training_data
    model = AFMRegressor(**SMALL).fit(X, y)
    with pytest.raises(ValueError, match="input_format"):
        skafm_onnx.to_onnx(model, input_format="coo")
    with pytest.raises(ValueError, match="opset"):
        skafm_onnx.to_onnx(model, opset=13)
    from sklearn.exceptions import NotFittedError
    from sklearn.pipeline import make_pipeline

    with pytest.raises(TypeError, match="skl2onnx.to_onnx"):
        skafm_onnx.to_onnx(make_pipeline(AFMRegressor()))
    with pytest.raises(NotFittedError):
        skafm_onnx.to_onnx(AFMRegressor())


def frame_data(n=400, seed=0):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "city": rng.choice(["paris", "rome", "oslo", "lima"], n),
            "day": rng.choice(["mon", "tue", "wed"], n),
            "price": rng.normal(10, 3, n),
        }
    )
    effect = (frame.city == "rome") & (frame.day == "tue")
    return frame, 2.0 * effect + 0.1 * frame.price + rng.normal(0, 0.1, n)


def pipeline_feeds(frame):
    feeds = {}
    for name in frame.columns:
        column = frame[name].to_numpy()
        if column.dtype == object:
            feeds[name] = column.astype(str).reshape(-1, 1)
        else:
            # skl2onnx types each input as the sample column's dtype
            feeds[name] = column.reshape(-1, 1)
    return feeds


@pytest.mark.parametrize("task", ["regression", "binary", "multiclass"])
def test_a_whole_pipeline_converts_with_skl2onnx(task):
    from skl2onnx import to_onnx
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = frame_data()
    encode = ColumnTransformer(
        [
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "day"]),
            ("num", StandardScaler(), ["price"]),
        ]
    )
    if task == "regression":
        estimator, y = AFMRegressor(**SMALL), target
    elif task == "binary":
        estimator = AFMClassifier(**SMALL)
        y = np.where(target > target.median(), "high", "low")
    else:
        estimator = AFMClassifier(**SMALL)
        y = np.digitize(target, np.quantile(target, [0.33, 0.66]))
    pipeline = make_pipeline(encode, estimator).fit(frame, y)

    test, _ = frame_data(60, seed=1)
    # categories never seen in training: all-zero one-hot blocks
    test.loc[:9, "city"] = "tokyo"
    test.loc[5:14, "day"] = "sun"
    # skl2onnx's classifier convention: zipmap=False for an (n, n_classes) tensor
    options = None if task == "regression" else {id(estimator): {"zipmap": False}}
    graph = to_onnx(pipeline, frame[:1], options=options)
    outputs = session(graph).run(None, pipeline_feeds(test))
    if task == "regression":
        np.testing.assert_allclose(
            outputs[0][:, 0], pipeline.predict(test), rtol=1e-5, atol=1e-4
        )
    else:
        label, proba = outputs
        assert label.tolist() == pipeline.predict(test).tolist()
        np.testing.assert_allclose(proba, pipeline.predict_proba(test), atol=1e-5)


def test_a_one_hot_pipeline_with_integer_codes_converts():
    from skl2onnx import to_onnx
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(0)
    X = rng.integers(0, 6, size=(500, 4))
    y = (X[:, 0] == X[:, 1]).astype(float) + rng.normal(0, 0.1, 500)
    pipeline = make_pipeline(
        OneHotEncoder(handle_unknown="ignore"), AFMRegressor(**SMALL)
    ).fit(X, y)
    test = rng.integers(0, 8, size=(40, 4))  # codes 6 and 7 never seen
    graph = to_onnx(pipeline, X[:1].astype(np.int64))
    (output,) = session(graph).run(None, {"X": test.astype(np.int64)})
    np.testing.assert_allclose(
        output[:, 0], pipeline.predict(test), rtol=1e-5, atol=1e-4
    )
