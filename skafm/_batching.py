"""From validated input to batches of padded (index, value, mask) tensors.

The network sees every row as the list of its active features: the feature
indices, their values and a mask that tells real entries from padding. This
module turns a scipy sparse matrix or a dense array into that form one batch at
a time, so that a sparse input is never densified and memory per batch is
bounded by the widest row of the batch, not by ``n_features``.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch


@dataclass(frozen=True)
class PaddedBatch:
    """Active features of a batch of rows, padded to the widest row.

    Attributes
    ----------
    index : torch.Tensor of shape (n_rows, width), int64
        Feature indices; padding points at feature 0.
    value : torch.Tensor of shape (n_rows, width), float32
        Feature values; padding holds 0 so it adds nothing to any sum.
    mask : torch.Tensor of shape (n_rows, width), bool
        True for real entries.
    """

    index: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor

    def to(self, device):
        if self.index.device == torch.device(device):
            return self
        return PaddedBatch(
            self.index.to(device, non_blocking=True),
            self.value.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
        )


def as_active_features(X):
    """Return X as a CSR matrix that lists exactly the active features of each row.

    Explicit zeros are dropped and duplicate entries summed, because a stored
    zero would still take part in the attention softmax and steal weight from
    the real pairs. The caller's matrix is never modified: a copy is made only
    when X is not already in that canonical form.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_samples, n_features)
        Validated input, finite, float32 or float64.

    Returns
    -------
    X_csr : scipy.sparse.csr_matrix
    """
    if not sp.issparse(X):
        return sp.csr_matrix(np.asarray(X))
    # a csr_matrix is taken as it is (building another object around its
    # arrays takes longer than predicting a row)
    X_csr = X if type(X) is sp.csr_matrix else sp.csr_matrix(X, copy=False)
    has_stored_zeros = X_csr.nnz > 0 and not np.all(X_csr.data)
    if not X_csr.has_canonical_format or has_stored_zeros:
        # csr_matrix(X, copy=False) may share buffers with the caller's matrix
        X_csr = X_csr.copy()
        X_csr.sum_duplicates()
        X_csr.eliminate_zeros()
    check_float32_range(X_csr.data)
    return X_csr


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(values):
    """Refuse values that the float32 network would turn into infinity."""
    if values.size and not np.all(np.abs(values) <= FLOAT32_MAX):
        raise ValueError(
            "Input X contains values too large for float32 (the network's "
            f"precision; largest magnitude allowed {FLOAT32_MAX:.3g}, after summing "
            "duplicate entries). Scale the features, e.g. with MaxAbsScaler."
        )


def row_widths(X_csr):
    """Number of active features in each row of a canonical CSR matrix."""
    return np.diff(X_csr.indptr)


def mean_pair_count(widths):
    """Mean number of feature pairs per row, over rows that have any."""
    pairs = widths * (widths - 1) / 2
    with_pairs = pairs[pairs > 0]
    return float(with_pairs.mean()) if with_pairs.size else 0.0


def pad_rows(X_csr, rows, kernels=None):
    """Gather the given rows of a CSR matrix into one padded batch.

    Parameters
    ----------
    X_csr : scipy.sparse.csr_matrix
        Output of :func:`as_active_features`.
    rows : ndarray of int
        Row numbers, in the order they should appear in the batch.
    kernels : torch.ops namespace, default=None
        The fused CPU kernels (``skafm._native.kernels()``), which gather
        the rows in one pass (training steps pass them); the same batch.

    Returns
    -------
    batch : PaddedBatch
    """
    if kernels is not None and X_csr.indptr.dtype == X_csr.indices.dtype:
        index, value, mask = kernels.pad_rows(
            torch.from_numpy(X_csr.indptr),
            torch.from_numpy(X_csr.indices),
            torch.from_numpy(X_csr.data),
            torch.from_numpy(np.asarray(rows, dtype=np.int64)),
        )
        return PaddedBatch(index, value, mask)
    indptr = X_csr.indptr
    starts = indptr[rows]
    widths = indptr[rows + 1] - starts
    width = int(widths.max(initial=0))
    n_rows = len(rows)
    if n_rows and widths.min() == width:
        # rows of one width (prediction chunks, one-hot data): no padding
        source = starts[:, None] + np.arange(width)
        return PaddedBatch(
            torch.from_numpy(X_csr.indices[source].astype(np.int64)),
            torch.from_numpy(X_csr.data[source].astype(np.float32, copy=False)),
            torch.ones((n_rows, width), dtype=torch.bool),
        )

    index = np.zeros((n_rows, width), dtype=np.int64)
    value = np.zeros((n_rows, width), dtype=np.float32)
    mask = np.arange(width) < widths[:, None]
    # flat positions in X_csr.data of every active entry, row after row
    total = int(widths.sum())
    row_offsets = np.repeat(starts - np.cumsum(widths) + widths, widths)
    source = np.arange(total, dtype=np.int64) + row_offsets
    index[mask] = X_csr.indices[source]
    value[mask] = X_csr.data[source]
    return PaddedBatch(
        torch.from_numpy(index), torch.from_numpy(value), torch.from_numpy(mask)
    )


# Rows are bucketed by width within windows of this many batches: enough to
# cut most padding, few enough that batches stay well mixed.
BUCKET_WINDOW_BATCHES = 50


def iter_row_batches(n_rows, batch_size, rng=None, widths=None):
    """Yield arrays of row numbers covering ``range(n_rows)`` once.

    Parameters
    ----------
    n_rows, batch_size : int
    rng : numpy.random.RandomState or None
        Rows come in a random order when given, in their natural order
        otherwise.
    widths : ndarray of int or None
        Active features per row. When given with ``rng`` and rows differ in
        width, each window of ``BUCKET_WINDOW_BATCHES`` shuffled batches is
        regrouped so rows of similar width share a batch (a batch is padded to
        its widest row and its cost grows with the square of that width), and
        the batches are served in random order.
    """
    if rng is None:
        order = np.arange(n_rows)
        for start in range(0, n_rows, batch_size):
            yield order[start : start + batch_size]
        return
    order = rng.permutation(n_rows)
    if widths is None or widths.min(initial=0) == widths.max(initial=0):
        for start in range(0, n_rows, batch_size):
            yield order[start : start + batch_size]
        return
    window = batch_size * BUCKET_WINDOW_BATCHES
    batches = []
    for start in range(0, n_rows, window):
        rows = order[start : start + window]
        rows = rows[np.argsort(widths[rows], kind="stable")]
        batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    for position in rng.permutation(len(batches)):
        yield batches[position]


# Floats in one per-pair intermediate of a single row: beyond this (256 MB, a
# dozen such tensors live in a backward pass) a row is refused with an error.
MAX_ROW_FLOATS = 1 << 26


def pair_floats(widths, floats_per_pair):
    """Floats in a per-pair tensor of one row of each width."""
    widths = np.asarray(widths, dtype=np.int64)
    return widths * (widths - 1) // 2 * floats_per_pair


def check_row_widths(widths, floats_per_pair):
    """Refuse rows whose pair tensors alone would exhaust memory."""
    if floats_per_pair == 0 or len(widths) == 0:
        return
    row = int(np.argmax(widths))
    needed = int(pair_floats(widths[row], floats_per_pair))
    if needed > MAX_ROW_FLOATS:
        width = int(widths[row])
        raise ValueError(
            f"Row {row} has {width} active features, i.e. {width * (width - 1) // 2} "
            f"feature pairs; attention over them needs {4 * needed / 2**30:.1f} GiB "
            f"per intermediate tensor, above skafm's limit of "
            f"{4 * MAX_ROW_FLOATS / 2**30:.2f} GiB per row. Use fewer active features "
            "per row, smaller n_factors and attention_size, or attention=False (a "
            "factorization machine, whose cost grows linearly with the row's width)."
        )
