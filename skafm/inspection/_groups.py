"""Feature names and field groups of the columns an AFM model sees."""

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder


def split_pipeline(estimator):
    """(preprocessing steps or None, final AFM estimator)."""
    if isinstance(estimator, Pipeline):
        return estimator[:-1], estimator[-1]
    return None, estimator


def feature_names_of(preprocessing, model, n_features, feature_names=None):
    """Names of the model's input columns, from the most specific source."""
    if feature_names is not None:
        names = np.asarray(feature_names, dtype=object)
    elif preprocessing is not None and hasattr(preprocessing, "get_feature_names_out"):
        names = np.asarray(preprocessing.get_feature_names_out(), dtype=object)
    elif hasattr(model, "feature_names_in_"):
        names = np.asarray(model.feature_names_in_, dtype=object)
    else:
        names = np.array([f"x{i}" for i in range(n_features)], dtype=object)
    if len(names) != n_features:
        raise ValueError(f"{len(names)} feature names given for {n_features} features.")
    return names


def field_groups(preprocessing, feature_names, groups=None):
    """Map every column to a field.

    Parameters
    ----------
    preprocessing : transformer or None
        The steps before the model in a Pipeline. A fitted OneHotEncoder makes
        one field of the columns each of its inputs became; a fitted
        ColumnTransformer does so for each OneHotEncoder inside it (alone or
        ending a Pipeline) and makes a field of every other output column.
    feature_names : ndarray of str
        Names of the columns, used for columns that form a field alone.
    groups : dict or array-like, default=None
        Explicit fields: ``{field name: column indices}`` or one field label
        per column. Columns left out of a dict form fields of their own.

    Returns
    -------
    field_of_column : ndarray of int, shape (n_features,)
    field_names : ndarray of str
    """
    if groups is not None:
        return _from_labels(_explicit_labels(groups, feature_names))
    labels = _derived_labels(preprocessing, feature_names)
    if labels is None:
        return np.arange(len(feature_names)), np.asarray(feature_names, dtype=object)
    return _from_labels(labels)


def _explicit_labels(groups, feature_names):
    n_features = len(feature_names)
    if isinstance(groups, dict):
        labels = np.array(feature_names, dtype=object)
        for name, columns in groups.items():
            labels[np.asarray(columns)] = name
        return labels
    labels = np.asarray(groups, dtype=object)
    if labels.shape != (n_features,):
        raise ValueError(
            f"groups must give one field per column ({n_features}), "
            f"got shape {labels.shape}."
        )
    return labels


def _from_labels(labels):
    """Field numbers in order of first appearance, and the fields' names."""
    labels = np.asarray([str(label) for label in labels], dtype=object)
    _, first, field_of_column = np.unique(
        labels, return_index=True, return_inverse=True
    )
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[field_of_column], labels[np.sort(first)]


def _derived_labels(preprocessing, feature_names):
    """One field label per column, or None when the steps say nothing of fields."""
    if preprocessing is None:
        return None
    last = preprocessing[-1] if isinstance(preprocessing, Pipeline) else preprocessing
    if isinstance(last, OneHotEncoder):
        return _encoder_labels(last)
    if isinstance(last, ColumnTransformer):
        labels = np.array(feature_names, dtype=object)
        for name, transformer, _ in last.transformers_:
            columns = last.output_indices_.get(name, slice(0, 0))
            inner = (
                transformer[-1] if isinstance(transformer, Pipeline) else transformer
            )
            if isinstance(inner, OneHotEncoder) and columns.stop > columns.start:
                labels[columns] = [
                    f"{name}__{label}" for label in _encoder_labels(inner)
                ]
        return labels
    return None


def _encoder_labels(encoder):
    """The input column each output column of a fitted OneHotEncoder comes from."""
    inputs = (
        encoder.feature_names_in_
        if hasattr(encoder, "feature_names_in_")
        else np.array([f"x{i}" for i in range(len(encoder.categories_))])
    )
    labels = []
    for i, (name, categories) in enumerate(
        zip(inputs, encoder.categories_, strict=True)
    ):
        n_out = len(categories)
        if encoder.drop_idx_ is not None and encoder.drop_idx_[i] is not None:
            n_out -= 1
        infrequent = getattr(encoder, "infrequent_categories_", None)
        if infrequent is not None and infrequent[i] is not None:
            n_out -= len(infrequent[i]) - 1
        labels += [str(name)] * n_out
    return np.asarray(labels, dtype=object)
