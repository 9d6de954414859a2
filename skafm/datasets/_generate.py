"""Synthetic one-hot data with planted pairwise field interactions."""

from itertools import combinations
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions, validate_params


@validate_params(
    {
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_fields": [Interval(Integral, 2, None, closed="left")],
        "n_categories": [Interval(Integral, 2, None, closed="left")],
        "interactions": [Interval(Integral, 0, None, closed="left"), "array-like"],
        "task": [StrOptions({"regression", "classification"})],
        "interaction_strength": [Interval(Real, 0, None, closed="left")],
        "linear_strength": [Interval(Real, 0, None, closed="left")],
        "noise": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_interaction_data(
    n_samples=1000,
    n_fields=10,
    n_categories=10,
    interactions=2,
    *,
    task="regression",
    interaction_strength=1.0,
    linear_strength=0.5,
    noise=0.1,
    random_state=None,
):
    """Generate one-hot categorical data whose target depends on field pairs.

    Each sample has one category, drawn uniformly, in each of ``n_fields``
    fields; X is the one-hot encoding, field ``f`` occupying columns
    ``f * n_categories`` to ``(f + 1) * n_categories - 1``. The target adds a
    random effect per category of every field (the linear part), a random
    effect per combination of categories of each planted field pair (the
    interactions), and Gaussian noise.

    Parameters
    ----------
    n_samples : int, default=1000
        Number of samples.

    n_fields : int, default=10
        Number of categorical fields.

    n_categories : int, default=10
        Number of categories of every field.

    interactions : int or array-like of shape (n_interactions, 2), default=2
        The interacting field pairs, or how many distinct pairs to draw at
        random.

    task : {"regression", "classification"}, default="regression"
        "classification" thresholds the noisy target at its median into
        balanced labels 0 and 1.

    interaction_strength : float, default=1.0
        Standard deviation of the effect of each category combination of a
        planted pair.

    linear_strength : float, default=0.5
        Standard deviation of the effect of each category of each field.

    noise : float, default=0.1
        Standard deviation of the Gaussian noise added to the target.

    random_state : int, RandomState instance or None, default=None
        Seeds the categories, the effects, the noise and the drawn pairs.

    Returns
    -------
    X : scipy.sparse.csr_matrix of shape (n_samples, n_fields * n_categories)
        One-hot encoded samples, exactly ``n_fields`` ones per row.

    y : ndarray of shape (n_samples,)
        Target values, or labels 0/1 for classification.

    interactions : ndarray of shape (n_interactions, 2)
        The planted field pairs, each as (smaller field, larger field).

    Examples
    --------
    >>> from skafm.datasets import make_interaction_data
    >>> X, y, pairs = make_interaction_data(
    ...     n_samples=5, n_fields=4, n_categories=3, interactions=[(0, 2)],
    ...     random_state=0)
    >>> X.shape
    (5, 12)
    >>> pairs
    array([[0, 2]])
    """
    rng = check_random_state(random_state)
    pairs = _interacting_pairs(interactions, n_fields, rng)
    categories = rng.randint(n_categories, size=(n_samples, n_fields))

    linear_effects = rng.normal(0.0, linear_strength, size=(n_fields, n_categories))
    score = linear_effects[np.arange(n_fields), categories].sum(axis=1)
    for first, second in pairs:
        table = rng.normal(0.0, interaction_strength, (n_categories, n_categories))
        score += table[categories[:, first], categories[:, second]]
    score += rng.normal(0.0, noise, size=n_samples)

    columns = categories + np.arange(n_fields) * n_categories
    X = sp.csr_matrix(
        (
            np.ones(n_samples * n_fields),
            columns.ravel(),
            np.arange(0, n_samples * n_fields + 1, n_fields),
        ),
        shape=(n_samples, n_fields * n_categories),
    )
    X.sort_indices()
    if task == "classification":
        score = (score > np.median(score)).astype(np.int64)
    return X, score, pairs


def _interacting_pairs(interactions, n_fields, rng):
    if isinstance(interactions, Integral):
        every_pair = np.array(list(combinations(range(n_fields), 2)))
        if interactions > len(every_pair):
            raise ValueError(
                f"interactions={interactions} pairs were asked for, but "
                f"{n_fields} fields have only {len(every_pair)} distinct pairs."
            )
        chosen = rng.choice(len(every_pair), size=interactions, replace=False)
        return every_pair[np.sort(chosen)].reshape(-1, 2)
    pairs = np.sort(np.asarray(interactions, dtype=np.int64).reshape(-1, 2), axis=1)
    if len(pairs) and (
        pairs.min() < 0 or pairs.max() >= n_fields or np.any(pairs[:, 0] == pairs[:, 1])
    ):
        raise ValueError(
            f"interactions must be pairs of distinct fields in [0, {n_fields}), "
            f"got {np.asarray(interactions).tolist()}."
        )
    return pairs
