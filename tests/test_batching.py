"""Validated input to padded (index, value, mask) batches."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skafm._batching import as_active_features, iter_row_batches, pad_rows
from skafm._nn.inference import PREDICT_FLOAT_BUDGET, predict_batches


def test_explicit_zeros_and_duplicates_are_canonicalised_without_touching_input():
    data = np.array([1.0, 0.0, 2.0, 3.0, 4.0])
    col = np.array([2, 1, 2, 0, 3])
    # built from (data, indices, indptr), the stored zero and the duplicate
    # column 2 of row 0 survive construction
    X_raw = sp.csr_matrix((data, col, np.array([0, 3, 5, 5])), shape=(3, 4))
    assert not X_raw.has_canonical_format
    before = (X_raw.data.copy(), X_raw.indices.copy(), X_raw.indptr.copy())

    active = as_active_features(X_raw)

    assert active.has_canonical_format
    np.testing.assert_array_equal(
        active.toarray(), [[0, 0, 3, 0], [3, 0, 0, 4], [0, 0, 0, 0]]
    )
    assert np.all(active.data != 0)
    for original, after in zip(
        before, (X_raw.data, X_raw.indices, X_raw.indptr), strict=True
    ):
        np.testing.assert_array_equal(original, after)


@pytest.mark.parametrize(
    "convert",
    [
        sp.csc_matrix,
        sp.coo_matrix,
        sp.csr_array,
        sp.coo_array,
        sp.csc_array,
        np.asarray,
    ],
)
def test_every_input_format_gives_the_same_active_features(convert):
    rng = np.random.RandomState(0)
    dense = rng.normal(size=(20, 9)) * (rng.rand(20, 9) < 0.4)
    expected = as_active_features(sp.csr_matrix(dense))
    source = convert(dense) if convert is np.asarray else convert(sp.csr_matrix(dense))
    got = as_active_features(source)
    assert sp.isspmatrix_csr(got)
    np.testing.assert_array_equal(got.indptr, expected.indptr)
    np.testing.assert_array_equal(got.indices, expected.indices)
    np.testing.assert_array_equal(got.data, expected.data)


def test_int64_indices_are_accepted():
    X = sp.random(10, 50, density=0.2, format="csr", random_state=0)
    X.indices = X.indices.astype(np.int64)
    X.indptr = X.indptr.astype(np.int64)
    batch = pad_rows(as_active_features(X), np.arange(10))
    assert batch.index.max() < 50


def test_padding_has_zero_value_and_false_mask():
    X = as_active_features(
        sp.csr_matrix(np.array([[1.0, 2, 0, 3], [0, 0, 0, 0], [0, 5, 0, 0]]))
    )
    batch = pad_rows(X, np.array([2, 0, 1]))
    np.testing.assert_array_equal(batch.mask.numpy(), [[1, 0, 0], [1, 1, 1], [0, 0, 0]])
    np.testing.assert_array_equal(
        batch.index.numpy(), [[1, 0, 0], [0, 1, 3], [0, 0, 0]]
    )
    np.testing.assert_array_equal(
        batch.value.numpy(), [[5, 0, 0], [1, 2, 3], [0, 0, 0]]
    )


def test_rows_of_one_width_are_gathered_without_padding():
    X = as_active_features(
        sp.csr_matrix(np.array([[1.0, 2, 0, 3], [0, 4, 6, 7], [8, 0, 9, 1.5]]))
    )
    batch = pad_rows(X, np.array([2, 0]))
    assert batch.mask.all() and batch.mask.shape == (2, 3)
    np.testing.assert_array_equal(batch.index.numpy(), [[0, 2, 3], [0, 1, 3]])
    np.testing.assert_array_equal(batch.value.numpy(), [[8, 9, 1.5], [1, 2, 3]])
    assert batch.index.dtype == torch.int64 and batch.value.dtype == torch.float32


def test_row_batches_cover_every_row_once():
    rng = np.random.RandomState(0)
    batches = list(iter_row_batches(103, 10, rng))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(103))
    np.testing.assert_array_equal(
        np.concatenate(list(iter_row_batches(5, 2))), np.arange(5)
    )


def test_predict_chunks_have_equal_width_and_bounded_pairs():
    rng = np.random.RandomState(0)
    widths = rng.choice([0, 1, 2, 10, 2000], size=3000)
    chunks = list(predict_batches(widths, floats_per_pair=8))
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)), np.arange(3000))
    for rows in chunks:
        assert len(np.unique(widths[rows])) == 1
        pairs = widths[rows[0]] * (widths[rows[0]] - 1) // 2
        assert len(rows) == 1 or len(rows) * max(pairs, 1) * 8 <= PREDICT_FLOAT_BUDGET


def test_training_batches_bucket_rows_of_similar_width():
    rng = np.random.RandomState(0)
    widths = rng.randint(1, 41, size=5000)
    batches = list(iter_row_batches(5000, 50, np.random.RandomState(1), widths))
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(5000))
    padded = sum(len(b) * widths[b].max() for b in batches)
    unbucketed = list(iter_row_batches(5000, 50, np.random.RandomState(1)))
    padded_unbucketed = sum(len(b) * widths[b].max() for b in unbucketed)
    assert padded < 0.7 * padded_unbucketed
    # batches are still served in random order, not sorted by width
    maxima = [widths[b].max() for b in batches]
    assert maxima != sorted(maxima)


def test_bounded_parts_keep_every_row_and_respect_the_budget():
    from skafm._batching import pair_floats
    from skafm._training import bounded_parts

    rng = np.random.RandomState(0)
    widths = rng.randint(0, 120, size=300)
    rows = rng.permutation(300)[:128]
    assert len(bounded_parts(rows, widths, 8, budget=10**9)) == 1
    parts = bounded_parts(rows, widths, 8, budget=200_000)
    assert len(parts) > 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.sort(rows))
    for part in parts:
        cost = len(part) * pair_floats(widths[part].max(), 8)
        assert len(part) == 1 or cost <= 200_000
