"""Prediction and explanation: the network's outputs without dropout or gradients.

On the CPU an attention model's rows go to one fused kernel
(:func:`.ops.attention_prediction`), which computes each row on its own.
Elsewhere rows are predicted in chunks of one width
(:func:`predict_batches`), so nothing is padded, and the output is summed
pair by pair (:func:`predicted_output`). Either way a row's output is the
same bits alone or among others. The explanations list the same terms,
pair by pair (:func:`additive_parts`), in PyTorch operations on every
device.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .._batching import check_row_widths, pad_rows, row_widths
from . import ops
from .functional import (
    PAIR_CHUNK,
    attention_scores_per_row,
    chunked_attention_network,
    linear_terms,
    masked_softmax,
    pad_to_chunks,
    padded_pairs_mask,
    pair_positions,
    pairs_of,
)
from .grouping import group_prediction_pairs
from .workspace import PairWorkspace

# Floats in the per-pair tensors of one prediction chunk, and its rows at most
PREDICT_FLOAT_BUDGET = 1 << 22
PREDICT_MAX_ROWS = 1 << 15
# Rows per call of the fused prediction kernel: each call's outputs are
# copied out before the next, and a thread's cache of pairs serves its share
FUSED_PREDICT_ROWS = 1 << 16
# Floats in one (pairs, k) or (pairs, t) intermediate of a slice of pairs
# scored at once: 1 MB stays in cache, and slices are long enough that the
# per-slice overhead stays small when k and t are.
SCORE_SLICE_FLOATS = 1 << 18


def predict_raw(module, X_csr):
    """Raw network outputs for every row, as float64 of shape (n_samples, n_outputs)."""
    out = np.empty((X_csr.shape[0], module.n_outputs), dtype=np.float64)
    for rows, output in predicted_chunks(module, X_csr):
        out[rows] = output.cpu().numpy()
    if not np.all(np.isfinite(out)):
        raise ValueError(
            "The model's output overflowed float32 for some samples, whose "
            "feature values are too large: products of pairs of values scale "
            "the interactions. Scale the features, e.g. with MaxAbsScaler."
        )
    return out


def predicted_chunks(module, X_csr):
    """Yield ``(rows, outputs)`` over the chunks of ``X_csr``.

    Each chunk is computed in inference mode, which is never left on
    between chunks: a caller that stops early leaves torch as it was.
    """
    widths = row_widths(X_csr)
    check_row_widths(widths, module.floats_per_pair if module.attention else 0)
    module.eval()
    fused = ops.attention_prediction(module) if module.attention else None
    if fused is not None:
        n_rows, indptr = X_csr.shape[0], X_csr.indptr
        for start in range(0, n_rows, FUSED_PREDICT_ROWS):
            stop = min(start + FUSED_PREDICT_ROWS, n_rows)
            with torch.inference_mode():
                output = fused(indptr[start : stop + 1], X_csr.indices, X_csr.data)
            yield np.arange(start, stop), output
        return
    for rows in predict_batches(widths, module.floats_per_pair_at_inference):
        with torch.inference_mode():
            batch = pad_rows(X_csr, rows).to(module.bias.device)
            output = predicted_output(module, batch.index, batch.value, batch.mask)
        yield rows, output


def explained_chunks(module, X_csr):
    """Yield ``(rows, batch, additive parts)`` over the chunks of ``X_csr``."""
    widths = row_widths(X_csr)
    # explanations list every pair, with or without attention: the same
    # limit as predict's on rows whose pair tensors would exhaust memory
    check_row_widths(widths, module.floats_per_pair)
    module.eval()
    for rows in predict_batches(widths, module.floats_per_pair):
        with torch.inference_mode():
            batch = pad_rows(X_csr, rows).to(module.bias.device)
            parts = additive_parts(module, batch.index, batch.value, batch.mask)
        yield rows, batch, parts


def predicted_output(module, index, value, mask):
    """The output without dropout or gradients, pair by pair.

    Without dropout on the pooled vector, the projection can be applied
    to each pair first: ``sum_ij a_ij p^T (e_i * e_j)``. Every pair then
    reduces to two scalars, its score and its term, computed once per
    group of identical pairs from the batch's distinct entries, in
    slices that stay in cache: nothing of size (rows, pairs, k) is built.
    """
    if not module.attention:
        # sum pooling builds nothing per pair: the training computation
        return module(index, value, mask)
    n_rows, width = index.shape
    output = module.bias + linear_terms(index, value, module.linear)
    n_pairs = n_rows * (width * (width - 1) // 2)
    if n_pairs == 0:
        return output
    groups = group_prediction_pairs(index, value)
    network = (
        module.attention_weight,
        module.attention_bias,
        module.attention_query,
        module.projection,
    )
    length = slice_length(module.floats_per_pair)
    if groups is None:
        entries = scaled_entries(index, value, None, module.embedding)
        slices = row_pair_slices(n_rows, width, length, index.device)
        scores, terms = score_pairs(entries, slices, n_pairs, *network)
    else:
        entries = scaled_entries(index, value, groups.entries, module.embedding)
        n_groups = groups.n_groups
        slices = group_slices(groups.entry_left, groups.entry_right, n_groups, length)
        scores, terms = score_pairs(entries, slices, n_groups, *network)
        scores = scores.index_select(0, groups.inverse)
        terms = terms.index_select(0, groups.inverse)
    pair_mask = padded_pairs_mask(mask)
    weights = masked_softmax(scores.view(n_rows, -1), pair_mask)
    terms = terms.reshape(n_rows, -1, module.n_outputs)
    return output + torch.bmm(weights.unsqueeze(1), terms).squeeze(1)


def additive_parts(module, index, value, mask):
    """The terms whose sum is the output, for explaining predictions.

    Returns
    -------
    linear : Tensor of shape (n_rows, n_outputs)
        Linear term of each row (the bias is ``module.bias``).
    weights : Tensor of shape (n_rows, n_pairs)
        Attention weight of each pair (1 for every real pair without
        attention, 0 for padding).
    contributions : Tensor of shape (n_rows, n_pairs, n_outputs)
        Each pair's term ``a_ij p^T (v_i x_i * v_j x_j)`` of the output.
    left, right : Tensor of shape (n_pairs,)
        Positions of each pair's features within the padded row.
    """
    scaled = F.embedding(index, module.embedding) * value.unsqueeze(-1)
    linear_weights = F.embedding(index, module.linear)
    linear = torch.bmm(value.unsqueeze(1), linear_weights).squeeze(1)
    left, right = pair_positions(scaled.shape[1], scaled.device)
    products = scaled[:, left] * scaled[:, right]
    pair_mask = pairs_of(mask)
    if module.attention:
        network = (
            module.attention_weight,
            module.attention_bias,
            module.attention_query,
        )
        scores = attention_scores_per_row(products, *network)
        weights = masked_softmax(scores, pair_mask)
    else:
        weights = pair_mask.to(products.dtype)
    contributions = weights.unsqueeze(-1) * (products @ module.projection)
    return linear, weights, contributions, left, right


def predict_batches(widths, floats_per_pair=1):
    """Split rows into chunks of equal width whose pair tensors stay bounded.

    Parameters
    ----------
    widths : ndarray of int
        Number of active features of each row.
    floats_per_pair : int
        Size of the largest per-pair vector, ``max(n_factors, attention_size)``.

    Yields
    ------
    rows : ndarray of int
        Row numbers of one chunk. All rows of a chunk have the same width, so
        nothing is padded and each row's output is computed exactly as if it
        were predicted alone. A chunk's pair tensors hold at most
        ``PREDICT_FLOAT_BUDGET`` floats (or a single row, however wide).
    """
    order = np.argsort(widths, kind="stable")
    sorted_widths = widths[order]
    boundaries = np.flatnonzero(np.diff(sorted_widths)) + 1
    for group in np.split(order, boundaries):
        width = int(widths[group[0]])
        row_floats = max(width * (width - 1) // 2, 1) * floats_per_pair
        size = max(1, min(PREDICT_MAX_ROWS, PREDICT_FLOAT_BUDGET // row_floats))
        for start in range(0, len(group), size):
            yield group[start : start + size]


def scaled_entries(index, value, positions, embedding):
    """``v[index] * value`` at given flat positions of a batch (None: every entry)."""
    index, value = index.reshape(-1), value.reshape(-1)
    if positions is not None:
        index, value = (
            index.index_select(0, positions),
            value.index_select(0, positions),
        )
    return embedding.index_select(0, index).mul_(value.unsqueeze(1))


def slice_length(floats_per_pair):
    """Pairs per slice scored at once: a whole number of ``PAIR_CHUNK`` chunks."""
    return PAIR_CHUNK * max(1, SCORE_SLICE_FLOATS // (PAIR_CHUNK * floats_per_pair))


def group_slices(left, right, n_groups, length):
    """Slices ``(start, n_valid, left, right)`` of groups padded to whole chunks."""
    for start in range(0, len(left), length):
        stop = start + length
        yield start, min(stop, n_groups) - start, left[start:stop], right[start:stop]


def row_pair_slices(n_rows, width, length, device):
    """Slices ``(start, n_valid, left, right)`` of every pair of a batch's rows.

    The flat entry positions of a slice's pairs are built slice by slice,
    whole rows at a time, and padded to whole chunks: no array over all the
    batch's pairs is built.
    """
    pair_left, pair_right = pair_positions(width, device)
    per_row = len(pair_left)
    rows_per_slice = max(1, length // per_row)
    for first in range(0, n_rows, rows_per_slice):
        rows = min(rows_per_slice, n_rows - first)
        row_start = torch.arange(
            first * width, (first + rows) * width, width, device=device
        ).unsqueeze(1)
        yield (
            first * per_row,
            rows * per_row,
            pad_to_chunks((row_start + pair_left).view(-1)),
            pad_to_chunks((row_start + pair_right).view(-1)),
        )


def score_pairs(entries, slices, n_pairs, W, b, query, projection):
    """Attention score and projected product ``p^T (e_l * e_r)`` of pairs of entries.

    ``slices`` yields ``(start, n_valid, left, right)``: rows of ``entries``
    padded to a whole number of ``PAIR_CHUNK`` chunks, whose first
    ``n_valid`` pairs are pairs ``start, start + 1, ...``. Scores and terms
    are matrix-vector products over whole chunks, so a pair's values do not
    depend on the other pairs.

    Returns
    -------
    scores : Tensor of shape (n_pairs,)
    terms : Tensor of shape (n_pairs, n_outputs)
    """
    k = entries.shape[1]
    columns = projection.t().contiguous()
    scores = entries.new_empty(n_pairs)
    terms = entries.new_empty(len(columns), n_pairs)
    workspace = PairWorkspace()
    for start, n_valid, left, right in slices:
        shape = (len(left), k)
        products = torch.index_select(
            entries, 0, left, out=workspace.get("products", shape, entries)
        )
        products.mul_(
            torch.index_select(
                entries, 0, right, out=workspace.get("right", shape, entries)
            )
        )
        _, slice_scores = chunked_attention_network(products, W, b, query, workspace)
        stop = start + n_valid
        scores[start:stop] = slice_scores[:n_valid]
        slice_terms = workspace.get("terms", (len(left),), entries)
        for column, out in zip(columns, terms[:, start:stop], strict=True):
            # over whole chunks, as the scores
            out.copy_(torch.mv(products, column, out=slice_terms)[:n_valid])
    return scores, terms.t()
