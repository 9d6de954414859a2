"""Which feature interactions a fitted AFM model relies on, per row and overall."""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

from .._batching import as_active_features
from .._nn.inference import explained_chunks
from .._threads import thread_limit
from ._groups import feature_names_of, field_groups, split_pipeline


def iter_additive_parts(model, X):
    """Yield, chunk by chunk, the additive parts of a fitted model's outputs.

    Each item is a dict with ``rows`` (n_rows,), ``linear`` (n_rows, n_outputs)
    and, for every real pair, ``pair_row`` (index into ``rows``),
    ``feature_a``, ``feature_b``, ``attention`` and ``contribution``
    (n_pairs, n_outputs), all in the units of ``decision_function`` (the
    classifier) or ``predict`` (the regressor).
    """
    check_is_fitted(model)
    X_csr = as_active_features(model._validate_data(X, reset=False))
    module = model.module_
    scale, _ = model._output_units()
    with thread_limit(model.n_threads):
        for rows, batch, parts in explained_chunks(module, X_csr):
            linear, weights, contributions, left, right = parts
            pair_mask = (batch.mask[:, left] & batch.mask[:, right]).cpu().numpy()
            index = batch.index.cpu().numpy()
            pair_row, pair = np.nonzero(pair_mask)
            yield {
                "rows": rows,
                "linear": scale * linear.cpu().double().numpy(),
                "pair_row": pair_row,
                "feature_a": index[pair_row, left.cpu().numpy()[pair]],
                "feature_b": index[pair_row, right.cpu().numpy()[pair]],
                "attention": weights.cpu().double().numpy()[pair_row, pair],
                "contribution": scale
                * contributions.cpu().double().numpy()[pair_row, pair],
            }


def explain(estimator, X, *, feature_names=None, as_frame="auto"):
    """Explain each prediction as a sum of bias, linear and pair terms.

    Parameters
    ----------
    estimator : AFMRegressor, AFMClassifier or Pipeline ending in one
        Fitted model. For a Pipeline, X goes through its preprocessing steps
        and the features are named by their ``get_feature_names_out``.
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Samples to explain (raw input of the Pipeline, if one is passed).
    feature_names : array-like of str, default=None
        Names of the model's input columns; overrides derived names.
    as_frame : "auto" or bool, default="auto"
        Return pandas DataFrames ("auto": when pandas is installed) or numpy
        structured arrays.

    Returns
    -------
    explanation : Bunch
        ``pairs``: one record per pair of active features of each row, with
        ``row``, ``feature_a`` and ``feature_b`` (column indices),
        ``name_a``, ``name_b``, ``attention`` (the pair's attention weight;
        a row's weights sum to 1) and ``contribution`` (the pair's term of
        the output; one ``contribution[class]`` column per class for a
        multiclass model). ``rows``: one record per row with ``row``,
        ``bias``, ``linear``, ``interactions`` and ``output``, where
        ``output = bias + linear + interactions`` equals ``predict`` (the
        regressor) or ``decision_function`` (the classifier), and
        ``interactions`` is the sum of the row's pair contributions.
    """
    preprocessing, model = split_pipeline(estimator)
    Xt = preprocessing.transform(X) if preprocessing is not None else X
    check_is_fitted(model)
    names = feature_names_of(preprocessing, model, model.n_features_in_, feature_names)
    parts = list(iter_additive_parts(model, Xt))
    n_rows = sum(len(part["rows"]) for part in parts)
    n_outputs = model.module_.bias.shape[0]
    scale, offset = model._output_units()
    bias = scale * model.module_.bias.detach().cpu().double().numpy() + offset

    linear = np.zeros((n_rows, n_outputs))
    interactions = np.zeros((n_rows, n_outputs))
    pair_columns = {key: [] for key in ("row", "feature_a", "feature_b", "attention")}
    contributions = []
    for part in parts:
        rows = part["rows"]
        linear[rows] = part["linear"]
        row_of_pair = rows[part["pair_row"]]
        np.add.at(interactions, row_of_pair, part["contribution"])
        pair_columns["row"].append(row_of_pair)
        for key in ("feature_a", "feature_b", "attention"):
            pair_columns[key].append(part[key])
        contributions.append(part["contribution"])

    pairs = {key: np.concatenate(values) for key, values in pair_columns.items()}
    contribution = np.concatenate(contributions).reshape(-1, n_outputs)
    order = np.argsort(pairs["row"], kind="stable")
    pairs = {key: value[order] for key, value in pairs.items()}
    contribution = contribution[order]
    pairs["name_a"] = names[pairs["feature_a"]]
    pairs["name_b"] = names[pairs["feature_b"]]

    output_labels = _output_labels(model, n_outputs)
    pair_table = {
        k: pairs[k] for k in ("row", "feature_a", "feature_b", "name_a", "name_b")
    }
    pair_table["attention"] = pairs["attention"]
    row_table = {"row": np.arange(n_rows)}
    for j, label in enumerate(output_labels):
        pair_table[f"contribution{label}"] = contribution[:, j]
    for name, values in (
        ("bias", np.broadcast_to(bias, (n_rows, n_outputs))),
        ("linear", linear),
        ("interactions", interactions),
        ("output", bias + linear + interactions),
    ):
        for j, label in enumerate(output_labels):
            row_table[f"{name}{label}"] = values[:, j]
    return Bunch(
        pairs=_as_table(pair_table, as_frame), rows=_as_table(row_table, as_frame)
    )


@dataclass
class InteractionImportance:
    """Mean absolute contribution of feature pairs and field pairs to the outputs.

    Returned by :func:`interaction_importance`; each parameter is kept as an
    attribute of the same name.

    Parameters
    ----------
    feature_importance : scipy.sparse.csr_matrix of shape (n_features, n_features)
        Symmetric; entry (a, b) is the mean over samples of the absolute
        contribution of the pair of features a and b (0 when absent),
        summed over outputs for a multiclass model.

    feature_names : ndarray of str of shape (n_features,)
        Names of the model's input columns.

    field_importance : ndarray of shape (n_fields, n_fields)
        The same, summed over the feature pairs of each pair of fields.

    field_names : ndarray of str of shape (n_fields,)
        Names of the fields.

    field_of_feature : ndarray of int of shape (n_features,)
        The field of each feature.

    field_pair_counts : ndarray of int of shape (n_fields, n_fields), default=None
        How many times a pair of features of each pair of fields occurs in
        the rows of the data (symmetric). A field pairs with itself only when
        a row can hold two of its features (a multi-hot field); pairs that
        never occur are left out of :meth:`top_field_pairs`.
    """

    feature_importance: sp.csr_matrix
    feature_names: np.ndarray
    field_importance: np.ndarray
    field_names: np.ndarray
    field_of_feature: np.ndarray
    field_pair_counts: np.ndarray = None

    def top_field_pairs(self, n=10):
        """The ``n`` most important field pairs, most important first.

        Only pairs that occur in the data are listed, so there may be fewer
        than ``n``; a field paired with itself (two features of one
        multi-hot field in a row) appears as ``(field, field, importance)``.

        Parameters
        ----------
        n : int, default=10
            Number of pairs.

        Returns
        -------
        pairs : list of tuple
            ``(field a, field b, importance)`` for each pair.
        """
        rows, cols = np.triu_indices(len(self.field_names))
        if self.field_pair_counts is not None:
            occurs = self.field_pair_counts[rows, cols] > 0
            rows, cols = rows[occurs], cols[occurs]
        values = self.field_importance[rows, cols]
        order = np.argsort(-values, kind="stable")[:n]
        names = self.field_names
        return [(names[rows[i]], names[cols[i]], values[i]) for i in order]

    def top_feature_pairs(self, n=10):
        """The ``n`` most important feature pairs, most important first.

        Parameters
        ----------
        n : int, default=10
            Number of pairs.

        Returns
        -------
        pairs : list of tuple
            ``(feature a, feature b, importance)`` for each pair.
        """
        upper = sp.triu(self.feature_importance).tocoo()
        order = np.argsort(-upper.data, kind="stable")[:n]
        return [
            (
                self.feature_names[upper.row[i]],
                self.feature_names[upper.col[i]],
                upper.data[i],
            )
            for i in order
        ]


def interaction_importance(estimator, X, *, groups=None, feature_names=None):
    """Importance of every feature pair and field pair over a data set.

    Parameters
    ----------
    estimator : AFMRegressor, AFMClassifier or Pipeline ending in one
        Fitted model. Fields are derived from a Pipeline's fitted
        OneHotEncoder or ColumnTransformer (the columns one input column
        became), unless ``groups`` is given.
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Data over which the importance is averaged.
    groups : dict or array-like, default=None
        Explicit fields: ``{field name: column indices}`` or one label per
        column of the model's input. Without groups or a Pipeline to derive
        them from, every column is its own field.
    feature_names : array-like of str, default=None
        Names of the model's input columns.

    Returns
    -------
    importance : InteractionImportance

    Examples
    --------
    >>> from skafm import AFMRegressor
    >>> from skafm.datasets import make_interaction_data
    >>> from skafm.inspection import interaction_importance
    >>> X, y, pairs = make_interaction_data(
    ...     2000, n_fields=5, n_categories=4, interactions=[(1, 3)],
    ...     random_state=0)
    >>> model = AFMRegressor(random_state=0).fit(X, y)
    >>> fields = {f"field{f}": range(4 * f, 4 * f + 4) for f in range(5)}
    >>> importance = interaction_importance(model, X, groups=fields)
    >>> importance.top_field_pairs(1)[0][:2]
    ('field1', 'field3')
    """
    preprocessing, model = split_pipeline(estimator)
    Xt = preprocessing.transform(X) if preprocessing is not None else X
    check_is_fitted(model)
    n_features = model.n_features_in_
    names = feature_names_of(preprocessing, model, n_features, feature_names)
    field_of_feature, field_names = field_groups(preprocessing, names, groups)

    n_fields = len(field_names)
    totals = sp.csr_matrix((n_features, n_features))
    field_pair_counts = np.zeros((n_fields, n_fields), dtype=np.int64)
    n_rows = 0
    for part in iter_additive_parts(model, Xt):
        n_rows += len(part["rows"])
        magnitude = np.abs(part["contribution"]).sum(axis=1)
        totals = totals + sp.csr_matrix(
            (magnitude, (part["feature_a"], part["feature_b"])),
            shape=(n_features, n_features),
        )
        np.add.at(
            field_pair_counts,
            (field_of_feature[part["feature_a"]], field_of_feature[part["feature_b"]]),
            1,
        )
    totals = (totals + totals.T).tocsr() / max(n_rows, 1)
    field_pair_counts = field_pair_counts + field_pair_counts.T
    field_pair_counts[np.diag_indices(n_fields)] //= 2
    coo = totals.tocoo()
    field_importance = np.zeros((n_fields, n_fields))
    np.add.at(
        field_importance,
        (field_of_feature[coo.row], field_of_feature[coo.col]),
        coo.data,
    )
    # a pair inside one field was counted from both sides of the symmetric matrix
    field_importance[np.diag_indices(n_fields)] /= 2
    return InteractionImportance(
        feature_importance=sp.csr_matrix(totals),
        feature_names=names,
        field_importance=field_importance,
        field_names=field_names,
        field_of_feature=field_of_feature,
        field_pair_counts=field_pair_counts,
    )


def _output_labels(model, n_outputs):
    if n_outputs == 1:
        return [""]
    return [f"[{label}]" for label in model.classes_]


def _as_table(columns, as_frame):
    if as_frame in ("auto", True):
        try:
            import pandas as pd
        except ImportError:
            if as_frame is True:
                raise
        else:
            return pd.DataFrame(columns)
    dtype = [
        (name, values.dtype if values.dtype != object else "O")
        for name, values in columns.items()
    ]
    table = np.empty(len(next(iter(columns.values()))), dtype=dtype)
    for name, values in columns.items():
        table[name] = values
    return table
