"""The pair arithmetic every path shares: positions, scores, softmax and sums.

Nothing here chooses a backend or knows of groups: these are the formulas
of the model, written once, that the PyTorch and fused training paths, the
prediction path and the explanations call (through :mod:`.ops`). Every
reduction is a per-row batched product or runs over fixed-size chunks of
``PAIR_CHUNK`` pairs, so a row's result depends only on the row and the
padded width of its batch, never on the other rows.
"""

import functools

import torch
import torch.nn.functional as F

from .workspace import buffer

# Rows of each matrix product of the attention network. A fixed shape makes a
# pair's score independent of how many other pairs the batch holds: the
# product kernel, and with it the rounding, depends on the shape.
PAIR_CHUNK = 64


def chunked_attention_network(products, W, b, query, workspace):
    """Hidden units and score of every pair: ``h^T ReLU(W p + b)``.

    ``products`` holds a whole number of ``PAIR_CHUNK``-row chunks. Both
    pooling paths call this, so a pair's score is the same bits whichever
    path its batch takes: the hidden layer is one product per fixed-size
    chunk, and the scores one matrix-vector product over all pairs (a
    batched product per chunk would round differently with the number of
    chunks).

    Returns
    -------
    hidden : Tensor of shape (n_chunks, PAIR_CHUNK, t)
    scores : Tensor of shape (n_chunks * PAIR_CHUNK,)
    """
    hidden = chunked_hidden_layer(products, W, b, workspace).relu_()
    return hidden, torch.mv(hidden.view(-1, W.shape[0]), query.view(-1))


def chunked_hidden_layer(products, W, b, workspace):
    """``W p + b`` for every pair, before the ReLU, one product per chunk."""
    k, t = products.shape[-1], W.shape[0]
    n_chunks = products.numel() // (PAIR_CHUNK * k)
    return torch.baddbmm(
        b,
        products.view(n_chunks, PAIR_CHUNK, k),
        W.t().expand(n_chunks, -1, -1),
        out=buffer(workspace, "hidden", (n_chunks, PAIR_CHUNK, t), products),
    )


def attention_scores_per_row(products, W, b, query):
    """``h^T ReLU(W p + b)`` of (rows, pairs, k) products, one product per row.

    The explanations' form of :func:`chunked_attention_network`: the same
    formula on a row's own pairs, for which a per-row product keeps each
    row's scores independent of the rows explained with it.
    """
    n_rows = products.shape[0]
    hidden = torch.baddbmm(b, products, W.t().expand(n_rows, -1, -1))
    return torch.bmm(F.relu(hidden), query.expand(n_rows, -1, -1)).squeeze(-1)


def weighted_pair_sum(weights, scaled):
    """``sum_{i<j} a_ij e_i * e_j`` per row, as ``sum_i e_i * (A e)_i``.

    ``weights`` is A, the (rows, width, width) upper-triangular matrices, or
    the (rows, pairs) weights they are built from.
    """
    if weights.dim() == 2:
        weights = upper_triangular(weights, scaled.shape[1])
    return (torch.bmm(weights, scaled) * scaled).sum(1)


def upper_triangular(pair_values, width):
    """Per row, a (width, width) matrix holding the pair values above the diagonal."""
    n_rows = pair_values.shape[0]
    matrix = pair_values.new_zeros(n_rows, width * width)
    matrix.index_copy_(1, upper_positions(width, pair_values.device), pair_values)
    return matrix.view(n_rows, width, width)


def upper_entries(matrices):
    """The (rows, pairs) entries above the diagonal of (rows, width, width) matrices."""
    n_rows, width, _ = matrices.shape
    flat = matrices.reshape(n_rows, width * width)
    return flat.index_select(1, upper_positions(width, matrices.device))


def pairs_of(mask):
    """(rows, pairs) mask of the pairs whose two entries are both active."""
    left, right = pair_positions(mask.shape[1], mask.device)
    return columns(mask, left) & columns(mask, right)


def padded_pairs_mask(mask):
    """:func:`pairs_of`, or None when the batch has no padding.

    Prediction chunks and most training batches hold rows of one width, and
    :func:`masked_softmax` gives the same bits without a mask as with an
    all-True one, minus the passes that build and apply it.
    """
    return None if bool(mask.all()) else pairs_of(mask)


def columns(x, positions):
    """``x[:, positions]`` for a 2-D tensor of integers or booleans."""
    # on the CPU, gather is 2-3x faster than index_select along dimension 1
    # for these types and several times faster than advanced indexing
    return torch.gather(x, 1, positions.expand(x.shape[0], -1))


def per_row_matmul(x, weight):
    """``x @ weight`` for x of shape (n_rows, k), computed as one product per row.

    One big matrix product picks its kernel from the number of rows, and the
    kernels round differently; per-row products make every row's result
    independent of the batch it is computed in.
    """
    return PerRowMatmul.apply(x, weight)


class PerRowMatmul(torch.autograd.Function):
    """:func:`per_row_matmul` with the backward pass of a plain product.

    The gradients are sums over the batch, which no single row's result
    depends on: two small matrix products instead of autograd's per-row
    products and the sum over the expanded weight (forward and backward on a
    512-row batch: 66 against 220 us).
    """

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        n_rows = x.shape[0]
        return torch.bmm(x.unsqueeze(1), weight.expand(n_rows, -1, -1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_x = grad_output @ weight.t() if ctx.needs_input_grad[0] else None
        grad_weight = x.t() @ grad_output if ctx.needs_input_grad[1] else None
        return grad_x, grad_weight


def sum_pooling(scaled):
    """Sum over pairs i<j of the element-wise products, in O(width) time.

    Uses ``sum_{i<j} e_i * e_j = ((sum_i e_i)^2 - sum_i e_i^2) / 2``; padded
    entries are zero vectors and drop out of both sums.
    """
    total = scaled.sum(1)
    return 0.5 * (total.square() - scaled.square().sum(1))


def masked_softmax(scores, mask):
    """Softmax over the last axis restricted to ``mask``; all-masked rows give 0.

    A row with fewer than two active features has no pairs: its weights are
    all zero instead of the NaN a plain ``-inf`` fill would produce. A mask of
    None keeps every pair (the same values as an all-True mask).
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, lowest), dim=-1)
    return weights * mask


@functools.lru_cache(maxsize=256)
def pair_selectors(width, device, dtype=torch.float32):
    """One-hot (n_pairs, width) matrices selecting each pair's two features."""
    left, right = pair_positions(width, device)
    with torch.inference_mode(False):
        eye = torch.eye(width, device=device, dtype=dtype)
        return eye[left].contiguous(), eye[right].contiguous()


@functools.lru_cache(maxsize=256)
def upper_positions(width, device):
    """Flat positions ``l * width + r`` of the pairs in a (width, width) matrix."""
    left, right = pair_positions(width, device)
    with torch.inference_mode(False):
        return left * width + right


@functools.lru_cache(maxsize=256)
def pair_positions(width, device):
    """Positions (left, right) of all pairs left < right in a row of ``width``."""
    # cached tensors outlive the call: inference-mode tensors would poison
    # later training steps, so they are always built as normal tensors
    with torch.inference_mode(False):
        left, right = torch.triu_indices(width, width, offset=1, device=device)
    return left, right


def pad_to_chunks(positions):
    """Positions padded with 0 to a whole number of ``PAIR_CHUNK`` chunks."""
    return F.pad(positions, (0, -len(positions) % PAIR_CHUNK))


# Batches with at most this many pair occurrences read their occurrences'
# positions from a cached table (two int64 tables of 4 MB at most, 8 shapes
# cached): Frappe's 512-row batches hold 23,040.
CACHED_POSITIONS_MAX_OCCURRENCES = 1 << 18


def occurrence_positions(occurrences, n_rows, width):
    """Flat entry positions of the two features of given pair occurrences.

    Occurrence ``o`` is pair ``o % n_pairs`` of row ``o // n_pairs``. The
    result is padded to whole ``PAIR_CHUNK`` chunks with occurrence 0.
    """
    occurrences = pad_to_chunks(occurrences)
    if width < 2:
        return occurrences, occurrences
    n_pairs = width * (width - 1) // 2
    if n_rows * n_pairs <= CACHED_POSITIONS_MAX_OCCURRENCES:
        # two gathers from a cached table: a fifth of the time of computing
        # rows and pairs with a division and a modulo
        left, right = batch_pair_positions(n_rows, width, occurrences.device)
        return left.index_select(0, occurrences), right.index_select(0, occurrences)
    left, right = pair_positions(width, occurrences.device)
    row_start = torch.div(occurrences, n_pairs, rounding_mode="floor") * width
    pair = occurrences % n_pairs
    return row_start + left.index_select(0, pair), row_start + right.index_select(
        0, pair
    )


@functools.lru_cache(maxsize=8)
def batch_pair_positions(n_rows, width, device):
    """Flat positions (left, right) of every pair occurrence of a batch, by row."""
    left, right = pair_positions(width, device)
    with torch.inference_mode(False):
        row_start = torch.arange(0, n_rows * width, width, device=device).unsqueeze(1)
        return (row_start + left).view(-1), (row_start + right).view(-1)


def every_pair(n_rows, width, device):
    """``(left, right, inverse, n_groups)`` of a batch whose pairs are not grouped.

    Every pair occurrence is its own group: the identity ``inverse`` is
    None, and the positions are padded to whole ``PAIR_CHUNK`` chunks.
    """
    n_occurrences = n_rows * (width * (width - 1) // 2)
    occurrences = torch.arange(n_occurrences, device=device)
    left, right = occurrence_positions(occurrences, n_rows, width)
    return left, right, None, n_occurrences


def linear_terms(index, value, linear):
    """``sum_i w[index_i] x_i`` per row: the linear part of the output."""
    rows = linear.index_select(0, index.reshape(-1))
    return weighted_rows_sum(value, rows.view(*index.shape, linear.shape[1]))


def weighted_rows_sum(value, rows):
    """Per row, the sum of its (width, n) rows weighted by its values."""
    return torch.bmm(value.unsqueeze(1), rows).squeeze(1)
