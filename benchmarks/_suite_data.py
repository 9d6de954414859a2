"""The benchmark suite's data: real sets from ``../shared`` and generated ones.

Every loader returns a :class:`Problem`: CSR float32 train and test parts, the
task, and, where every column belongs to a one-hot field, the fields' column
ranges (the peers DeepCTR-Torch and torchfm take one category per field and
nothing else). Real data is read from ``../shared/data`` next to the
repository and never copied into it; a missing data set is reported by the
suite, not an error.

The generated shapes plant known structure (low-rank interactions between
chosen fields, on top of per-category effects and noise), so a model that
learns interactions must beat a linear one on them:

- ``powerlaw-ids``: two id fields of 20,000 and 8,000 levels drawn with
  power-law (Zipf 1.1) frequencies, as users and items are, plus three small
  context fields; a rating-like regression target of rank-4 user x item and
  item x context interactions.
- ``many-fields``: 30 one-hot fields of 40 levels, six planted field pairs;
  a binary click-like label.
- ``mixed-real``: six one-hot fields and six real-valued standardized
  columns, with planted interactions between real columns and fields;
  regression.
- ``multi-hot``: three one-hot fields and a multi-hot tag field (1-6 of 300
  tags per row, values 1/sqrt(n)) that interacts with an item field; binary
  label.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_svmlight_file

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@dataclass
class Problem:
    name: str
    task: str  # "regression" or "classification"
    X_train: sp.csr_matrix
    y_train: np.ndarray
    X_test: sp.csr_matrix
    y_test: np.ndarray
    real: bool
    # (start, stop) column range of each one-hot field, or None when some
    # columns are not one-hot (the field-index peers cannot take the data)
    fields: list | None = None
    # the range of the target, for clipping predictions (rating scales)
    clip: tuple | None = None


def _shared_dir(name, variable):
    return Path(os.environ.get(variable, SHARED / name)).resolve()


def frappe(task):
    """Frappe as ../shared/README.md prescribes: train on frappe.validation.libfm."""
    path = _shared_dir("frappe", "SKAFM_FRAPPE_DIR")
    parts = []
    for name in ("frappe.validation.libfm", "frappe.test.libfm"):
        X, y = load_svmlight_file(
            str(path / name), n_features=5382, zero_based=True, dtype=np.float32
        )
        parts += [X.tocsr(), y if task == "regression" else (y > 0).astype(int)]
    X_train, y_train, X_test, y_test = parts
    both = np.concatenate(
        [np.sort(X.indices.reshape(X.shape[0], -1), axis=1) for X in (X_train, X_test)]
    )
    fields = [
        (int(lo), int(hi) + 1)
        for lo, hi in zip(both.min(axis=0), both.max(axis=0), strict=True)
    ]
    return Problem(
        f"frappe-{'reg' if task == 'regression' else 'clf'}",
        task,
        X_train,
        y_train,
        X_test,
        y_test,
        real=True,
        fields=fields,
    )


def movielens(task):
    """ml-latest-small with the protocol of ../shared/README.md.

    One-hot user, movie and release decade, genres multi-hot scaled to
    1/sqrt(number of genres), a random 80/20 split of the ratings with
    ``default_rng(0).permutation``. Regression predicts the rating (clipped
    to [0.5, 5]); classification whether it is at least 4.
    """
    path = _shared_dir("ml-latest-small", "SKAFM_MOVIELENS_DIR")
    ratings = np.genfromtxt(
        path / "ratings.csv", delimiter=",", skip_header=1, usecols=(0, 1, 2)
    )
    movies = _movies(path / "movies.csv")
    # the protocol's 100,836 ratings are of movies that movies.csv lists; a
    # rating of any other movie (the file has one) has no title or genres
    ratings = ratings[np.isin(ratings[:, 1].astype(np.int64), list(movies))]
    users, user_codes = np.unique(ratings[:, 0].astype(np.int64), return_inverse=True)
    movie_ids = ratings[:, 1].astype(np.int64)
    known, movie_codes = np.unique(movie_ids, return_inverse=True)
    decades = np.array([movies[m][0] for m in known])
    genre_lists = [movies[m][1] for m in known]
    genre_names = sorted({g for genres in genre_lists for g in genres})
    decade_values, decade_codes = np.unique(decades, return_inverse=True)

    n_users, n_movies, n_decades = len(users), len(known), len(decade_values)
    offsets = np.cumsum([0, n_users, n_movies, n_decades])
    rows, cols, vals = [], [], []
    n = len(ratings)
    for column_block, codes in (
        (offsets[0], user_codes),
        (offsets[1], movie_codes),
        (offsets[2], decade_codes[movie_codes]),
    ):
        rows.append(np.arange(n))
        cols.append(column_block + codes)
        vals.append(np.ones(n))
    genre_index = {g: i for i, g in enumerate(genre_names)}
    for movie, genres in enumerate(genre_lists):
        genre_lists[movie] = [genre_index[g] for g in genres]
    for row, movie in enumerate(movie_codes):
        genres = genre_lists[movie]
        rows.append(np.full(len(genres), row))
        cols.append(offsets[3] + np.asarray(genres, dtype=np.int64))
        vals.append(np.full(len(genres), 1.0 / np.sqrt(max(len(genres), 1))))
    X = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n, offsets[3] + len(genre_names)),
        dtype=np.float32,
    )
    X.sort_indices()
    y = ratings[:, 2]
    if task == "classification":
        y = (y >= 4).astype(int)
    order = np.random.default_rng(0).permutation(n)
    cut = int(0.8 * n)
    train, test = order[:cut], order[cut:]
    return Problem(
        f"movielens-{'reg' if task == 'regression' else 'clf'}",
        task,
        X[train],
        y[train],
        X[test],
        y[test],
        real=True,
        fields=None,
        clip=(0.5, 5.0) if task == "regression" else None,
    )


def _movies(path):
    """movieId -> (release decade or 0, list of genres)."""
    import csv

    movies = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            years = re.findall(r"\((\d{4})\)", row["title"])
            decade = int(years[-1]) // 10 if years else 0
            genres = [] if row["genres"] == "(no genres listed)" else row["genres"]
            if genres:
                genres = genres.split("|")
            movies[int(row["movieId"])] = (decade, genres)
    return movies


def _one_hot(codes, sizes, values=None):
    """CSR one-hot matrix of (n, n_fields) category codes, fields side by side."""
    n, n_fields = codes.shape
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    columns = (codes + starts).ravel()
    data = np.ones(n * n_fields) if values is None else values.ravel()
    X = sp.csr_matrix(
        (data, columns, np.arange(0, n * n_fields + 1, n_fields)),
        shape=(n, int(np.sum(sizes))),
        dtype=np.float32,
    )
    fields = [(int(s), int(s + z)) for s, z in zip(starts, sizes, strict=True)]
    return X, fields


def _zipf_codes(rng, n, levels, exponent=1.1):
    weights = 1.0 / np.arange(1, levels + 1) ** exponent
    codes = rng.choice(levels, size=n, p=weights / weights.sum())
    return rng.permutation(levels)[codes]


def _split(name, task, X, score, rng, fields=None, n_test=None):
    n = X.shape[0]
    if task == "classification":
        probability = 1.0 / (1.0 + np.exp(-score))
        y = (rng.random_sample(n) < probability).astype(int)
    else:
        y = score
    n_test = n_test or n // 4
    order = rng.permutation(n)
    test, train = order[:n_test], order[n_test:]
    return Problem(
        name, task, X[train], y[train], X[test], y[test], real=False, fields=fields
    )


def _low_rank(rng, levels, rank, scale):
    return rng.normal(0.0, scale / np.sqrt(rank), (levels, rank))


def powerlaw_ids(seed=0, n=120_000):
    rng = np.random.RandomState(seed)
    sizes = [20_000, 8_000, 7, 24, 5]
    codes = np.column_stack(
        [_zipf_codes(rng, n, sizes[0]), _zipf_codes(rng, n, sizes[1])]
        + [rng.randint(size, size=n) for size in sizes[2:]]
    )
    user, item, weekday, hour, device = codes.T
    rank = 4
    U, V = _low_rank(rng, sizes[0], rank, 1.0), _low_rank(rng, sizes[1], rank, 1.0)
    C, D = _low_rank(rng, sizes[3], rank, 0.7), _low_rank(rng, sizes[1], rank, 0.7)
    score = (
        rng.normal(0, 0.5, sizes[0])[user]
        + rng.normal(0, 0.5, sizes[1])[item]
        + rng.normal(0, 0.2, sizes[2])[weekday]
        + rng.normal(0, 0.2, sizes[4])[device]
        + np.einsum("ij,ij->i", U[user], V[item])
        + np.einsum("ij,ij->i", C[hour], D[item])
        + rng.normal(0, 0.5, n)
    )
    X, fields = _one_hot(codes, sizes)
    return _split("powerlaw-ids", "regression", X, score, rng, fields)


def many_fields(seed=1, n=100_000):
    rng = np.random.RandomState(seed)
    n_fields, levels = 30, 40
    codes = rng.randint(levels, size=(n, n_fields))
    score = rng.normal(0, 0.15, (n_fields, levels))[np.arange(n_fields), codes].sum(1)
    pairs = rng.choice(n_fields, size=(6, 2), replace=False)
    for first, second in pairs:
        A, B = _low_rank(rng, levels, 2, 1.2), _low_rank(rng, levels, 2, 1.2)
        score += np.einsum("ij,ij->i", A[codes[:, first]], B[codes[:, second]])
    score -= np.median(score) + 1.0  # about 30% positives, as clicks are rarer
    X, fields = _one_hot(codes, [levels] * n_fields)
    return _split("many-fields", "classification", X, score, rng, fields)


def mixed_real(seed=2, n=60_000):
    rng = np.random.RandomState(seed)
    sizes = [50, 30, 12, 8, 200, 5]
    codes = np.column_stack([rng.randint(size, size=n) for size in sizes])
    real = rng.normal(size=(n, 6))
    score = sum(rng.normal(0, 0.4, size)[codes[:, f]] for f, size in enumerate(sizes))
    score = score + real @ rng.normal(0, 0.3, 6)
    for column, field in ((0, 0), (1, 4), (2, 1)):
        score += real[:, column] * rng.normal(0, 0.8, sizes[field])[codes[:, field]]
    score += 0.6 * real[:, 3] * real[:, 4] + rng.normal(0, 0.3, n)
    X_codes, _ = _one_hot(codes, sizes)
    X = sp.hstack([X_codes, sp.csr_matrix(real.astype(np.float32))], format="csr")
    return _split("mixed-real", "regression", X, score, rng)


def multi_hot(seed=3, n=80_000):
    rng = np.random.RandomState(seed)
    sizes = [1_000, 2_000, 10]
    n_tags = 300
    codes = np.column_stack([rng.randint(size, size=n) for size in sizes])
    user, item, context = codes.T
    counts = rng.randint(1, 7, size=n)
    tag_rows = np.repeat(np.arange(n), counts)
    tag_cols = rng.randint(n_tags, size=counts.sum())
    tag_values = 1.0 / np.sqrt(counts[tag_rows])
    tags = sp.csr_matrix(
        (tag_values, (tag_rows, tag_cols)), shape=(n, n_tags), dtype=np.float32
    )
    tags.sum_duplicates()
    rank = 3
    tag_f = _low_rank(rng, n_tags, rank, 1.5)
    item_f = _low_rank(rng, sizes[1], rank, 1.5)
    user_f = _low_rank(rng, sizes[0], rank, 1.0)
    context_f = _low_rank(rng, sizes[2], rank, 1.0)
    tag_factor = np.asarray(tags @ tag_f)
    score = (
        rng.normal(0, 0.4, sizes[0])[user]
        + rng.normal(0, 0.4, sizes[1])[item]
        + np.einsum("ij,ij->i", tag_factor, item_f[item])
        + np.einsum("ij,ij->i", user_f[user], context_f[context])
        - 0.5
    )
    X_codes, _ = _one_hot(codes, sizes)
    X = sp.hstack([X_codes, tags], format="csr")
    X.sort_indices()
    return _split("multi-hot", "classification", X, score, rng)


LOADERS = {
    "frappe-reg": lambda: frappe("regression"),
    "frappe-clf": lambda: frappe("classification"),
    "movielens-reg": lambda: movielens("regression"),
    "movielens-clf": lambda: movielens("classification"),
    "powerlaw-ids": powerlaw_ids,
    "many-fields": many_fields,
    "mixed-real": mixed_real,
    "multi-hot": multi_hot,
}
