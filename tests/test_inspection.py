"""Explaining predictions and ranking interactions."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from skafm import AFMClassifier, AFMRegressor
from skafm.datasets import make_interaction_data
from skafm.inspection import InteractionDisplay, explain, interaction_importance

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def fields_of(n_fields, n_categories):
    return {
        f"f{f}": range(f * n_categories, (f + 1) * n_categories)
        for f in range(n_fields)
    }


@pytest.fixture(scope="module")
def fitted_regressor(planted_regression):
    X, y, _ = planted_regression
    return AFMRegressor(**FAST).fit(X, y), X


def test_contributions_add_up_to_predict(fitted_regressor):
    model, X = fitted_regressor
    explanation = model.explain(X[:200])
    rows, pairs = explanation.rows, explanation.pairs
    prediction = model.predict(X[:200])
    np.testing.assert_allclose(rows["output"], prediction, rtol=1e-5, atol=1e-5)
    total = rows["bias"] + rows["linear"] + rows["interactions"]
    np.testing.assert_allclose(total, prediction, rtol=1e-5, atol=1e-5)
    per_row = np.bincount(pairs["row"], weights=pairs["contribution"], minlength=200)
    np.testing.assert_allclose(per_row, rows["interactions"], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_contributions_add_up_to_decision_function(n_classes):
    X, score, _ = make_interaction_data(600, n_fields=4, n_categories=3, random_state=0)
    y = np.digitize(score, np.quantile(score, np.linspace(0, 1, n_classes + 1)[1:-1]))
    model = AFMClassifier(**FAST).fit(X, y)
    explanation = model.explain(X[:50])
    decision = model.decision_function(X[:50]).reshape(50, -1)
    if n_classes == 2:
        np.testing.assert_allclose(
            explanation.rows["output"], decision[:, 0], atol=1e-5
        )
    else:
        for j, label in enumerate(model.classes_):
            column = f"output[{label}]"
            np.testing.assert_allclose(
                explanation.rows[column], decision[:, j], atol=1e-5
            )
            assert f"contribution[{label}]" in explanation.pairs


def test_attention_weights_of_each_row_sum_to_one(fitted_regressor):
    model, X = fitted_regressor
    pairs = model.explain(X[:100]).pairs
    # six one-hot fields: 15 pairs per row
    assert len(pairs) == 100 * 15
    totals = np.bincount(pairs["row"], weights=pairs["attention"])
    np.testing.assert_allclose(totals, 1.0, rtol=1e-5)
    assert (pairs["feature_a"] < pairs["feature_b"]).all()


def test_rows_without_pairs_have_no_interactions():
    X = sp.csr_matrix(np.array([[0.0, 0, 0], [0, 2, 0], [1, 1, 1]]))
    model = AFMRegressor(**FAST).fit(X, [0.0, 1.0, 2.0])
    explanation = model.explain(X)
    np.testing.assert_array_equal(explanation.rows["interactions"][:2], 0.0)
    np.testing.assert_array_equal(explanation.pairs["row"], [2, 2, 2])


def test_numpy_tables_without_pandas(fitted_regressor):
    model, X = fitted_regressor
    explanation = model.explain(X[:5], as_frame=False)
    assert isinstance(explanation.pairs, np.ndarray)
    assert explanation.pairs.dtype.names[:3] == ("row", "feature_a", "feature_b")
    assert explanation.pairs["name_a"][0].startswith("x")


def test_planted_field_pairs_rank_on_top():
    n_fields, n_categories = 10, 5
    X, y, planted = make_interaction_data(
        8000, n_fields, n_categories, interactions=2, noise=0.1, random_state=3
    )
    model = AFMRegressor(learning_rate_init=0.01, max_iter=20, random_state=0)
    model.fit(X, y)
    importance = interaction_importance(
        model, X, groups=fields_of(n_fields, n_categories)
    )
    assert importance.field_importance.shape == (n_fields, n_fields)
    np.testing.assert_allclose(
        importance.field_importance, importance.field_importance.T
    )
    top_two = {tuple(sorted((a, b))) for a, b, _ in importance.top_field_pairs(2)}
    expected = {(f"f{a}", f"f{b}") for a, b in planted}
    assert top_two == expected
    feature_pairs = importance.top_feature_pairs(5)
    assert len(feature_pairs) == 5 and feature_pairs[0][2] >= feature_pairs[-1][2]


def test_pipeline_names_features_and_derives_fields():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    n = 1500
    frame = pd.DataFrame(
        {
            "user": rng.choice(["ann", "bob", "cy"], n),
            "item": rng.choice(["tea", "jam", "ink", "pen"], n),
            "hour": rng.choice(["am", "pm"], n),
        }
    )
    y = ((frame["user"] == "ann") == (frame["item"] == "tea")).to_numpy() * 2.0
    y = y + (frame["hour"] == "am").to_numpy() * 0.3 + rng.normal(0, 0.05, n)
    pipeline = make_pipeline(OneHotEncoder(), AFMRegressor(**FAST)).fit(frame, y)

    pairs = explain(pipeline, frame[:3]).pairs
    assert set(pairs["name_a"]) | set(pairs["name_b"]) <= set(
        pipeline[0].get_feature_names_out()
    )
    assert "user_ann" in set(pairs["name_a"]) | set(pairs["name_b"])

    importance = interaction_importance(pipeline, frame)
    assert list(importance.field_names) == ["user", "item", "hour"]
    assert importance.top_field_pairs(1)[0][:2] == ("user", "item")


def test_fields_from_a_column_transformer():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    frame = pd.DataFrame(
        {
            "city": rng.choice(["a", "b", "c"], 300),
            "day": rng.choice(["mon", "tue"], 300),
            "price": rng.normal(size=300),
        }
    )
    encode = ColumnTransformer(
        [
            ("cat", OneHotEncoder(), ["city", "day"]),
            ("num", StandardScaler(), ["price"]),
        ]
    )
    pipeline = make_pipeline(encode, AFMRegressor(**FAST)).fit(
        frame, rng.normal(size=300)
    )
    importance = interaction_importance(pipeline, frame)
    assert list(importance.field_names) == ["cat__city", "cat__day", "num__price"]


def test_explicit_group_labels_must_match_columns(fitted_regressor):
    model, X = fitted_regressor
    with pytest.raises(ValueError, match="one field per column"):
        interaction_importance(model, X[:10], groups=["a", "b"])


def test_display_renders_to_png(tmp_path, planted_regression):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    X, y, _ = planted_regression
    model = AFMRegressor(**FAST).fit(X, y)
    display = InteractionDisplay.from_estimator(
        model, X[:500], groups=fields_of(6, 5), top_n=4
    )
    assert len(display.bars_) == 4
    assert display.heatmap_.get_array().shape == (6, 6)
    path = tmp_path / "interactions.png"
    display.figure_.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    matplotlib.pyplot.close(display.figure_)


def test_top_pairs_list_only_field_pairs_that_occur(fitted_regressor):
    model, X = fitted_regressor
    importance = interaction_importance(model, X[:300], groups=fields_of(6, 5))
    top = importance.top_field_pairs(100)
    # six one-hot fields: 15 pairs of distinct fields, none of a field with itself
    assert len(top) == 15
    assert all(a != b for a, b, _ in top)
    assert np.all(np.diag(importance.field_pair_counts) == 0)
    np.testing.assert_array_equal(
        importance.field_pair_counts, importance.field_pair_counts.T
    )
    # every row holds one feature of each field: each pair once per row
    assert np.all(importance.field_pair_counts[np.triu_indices(6, 1)] == 300)


def test_a_multi_hot_field_pairs_with_itself_and_is_labelled_within():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    rng = np.random.default_rng(0)
    n = 400
    # columns 0-2: one-hot "user"; columns 3-6: multi-hot "genre"
    user = np.eye(3)[rng.integers(0, 3, n)]
    genre = (rng.random((n, 4)) < 0.5).astype(float)
    X = sp.csr_matrix(np.hstack([user, genre]))
    y = X @ rng.normal(size=7) + genre[:, 0] * genre[:, 1]
    model = AFMRegressor(**FAST).fit(X, y)
    groups = ["user"] * 3 + ["genre"] * 4
    display = InteractionDisplay.from_estimator(model, X, groups=groups, top_n=10)
    pairs = {(a, b) for a, b, _ in display.importance.top_field_pairs(10)}
    assert pairs == {("user", "genre"), ("genre", "genre")}
    labels = {label.get_text() for label in display.ax_[1].get_yticklabels()}
    assert labels == {"user x genre", "genre (within)"}
    # the heatmap leaves user x user blank: it never occurs
    shown = display.heatmap_.get_array()
    names = list(display.importance.field_names)
    assert shown.mask[names.index("user"), names.index("user")]
    assert not shown.mask[names.index("genre"), names.index("genre")]
    matplotlib.pyplot.close(display.figure_)


@pytest.mark.parametrize(
    "figure_options",
    [None, {"figsize": (5, 3)}, {"figsize": (6, 4), "layout": "constrained"}],
)
def test_display_titles_fit_in_the_figure(fitted_regressor, figure_options):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, X = fitted_regressor
    groups = [f"a_long_field_name_{column // 5}" for column in range(30)]
    ax = None if figure_options is None else plt.subplots(1, 2, **figure_options)[1]
    display = InteractionDisplay.from_estimator(model, X[:200], groups=groups, ax=ax)
    figure = display.figure_
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    heat_title, bar_title = (a.title.get_window_extent(renderer) for a in display.ax_)
    assert heat_title.x0 >= figure.bbox.x0 and bar_title.x1 <= figure.bbox.x1
    assert heat_title.x1 < bar_title.x0
    plt.close(figure)
