"""Grouping a batch's pairs of features by content.

Two pair occurrences with the same two (feature, value) entries have the
same element-wise product and so the same attention score: the attention
network runs once per group. On one-hot data most pairs of a batch repeat
(on Frappe, 38% of a 512-row batch's pairs are distinct, 11% of the test
set's). Training needs where one occurrence of each group sits in the batch
(:class:`TrainingGroups`); prediction needs each group's two distinct
entries (:class:`PredictionGroups`). Each has its own function here, and
:func:`.ops.group_training_pairs` picks between this module's PyTorch
grouping and the fused kernels' hash tables.
"""

import dataclasses

import numpy as np
import torch

from .._sorting import distinct_values, unique_groups
from .functional import (
    PAIR_CHUNK,
    columns,
    occurrence_positions,
    pad_to_chunks,
    pair_positions,
)

# Group pairs by content only when at most this fraction of a batch's entries
# are distinct (one-hot and categorical data); for real-valued features
# nearly every pair is distinct and grouping would be wasted sorting.
MAX_DISTINCT_ENTRY_FRACTION = 0.5
# ... and when at most this fraction of its pairs are distinct: gathering
# pairs by group costs more per pair than the pairwise path.
MAX_GROUP_FRACTION = 0.5
# Skip the pairs' sort when the cheap bound on distinct pairs is above this
# fraction of the pairs (one-hot data with fields of similar, large sizes).
MAX_GROUPING_BOUND_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class TrainingGroups:
    """A training batch's pairs, grouped by content.

    Attributes
    ----------
    inverse : Tensor of shape (n_rows * n_pairs,)
        Group of each pair occurrence, row after row.
    left, right : Tensor of shape (n_padded,)
        Flat positions, in the (n_rows * width) entries of the batch, of the
        two features of one occurrence of each group; padded to a multiple of
        ``PAIR_CHUNK`` with position 0.
    n_groups : int
        Number of groups.
    """

    inverse: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    n_groups: int


@dataclasses.dataclass(frozen=True)
class PredictionGroups:
    """A prediction batch's pairs, grouped by content.

    Attributes
    ----------
    inverse : Tensor of shape (n_rows * n_pairs,)
        Group of each pair occurrence, row after row.
    entries : Tensor of shape (n_entries,)
        Flat position of one occurrence of each distinct (feature, value)
        entry of the batch.
    entry_left, entry_right : Tensor of shape (n_padded,)
        The two entries of each group, numbered as in ``entries``, padded to
        a multiple of ``PAIR_CHUNK`` with entry 0.
    n_groups : int
        Number of groups.
    """

    inverse: torch.Tensor
    entries: torch.Tensor
    entry_left: torch.Tensor
    entry_right: torch.Tensor
    n_groups: int


def group_training_pairs(index, value):
    """Group the pairs of a padded training batch, or None where few repeat.

    Returns None when most entries or most pairs are distinct (real-valued
    features, or features that rarely meet): then pairs are better scored
    one by one (:class:`.pooling.PairwiseAttentionPooling`) than gathered
    into groups. One-hot rows without padding are grouped by their features
    directly, without numbering the batch's distinct entries first (0.2 ms of
    a 6 ms Frappe step): the same groups in the same order.
    """
    if index.shape[0] < 2 or index.shape[1] < 2:
        # a row's features are distinct, so are its pairs: nothing to group
        return None
    if _one_hot_without_padding(value):
        entry_ids = index.reshape(-1)
        n_entries = int(entry_ids.max()) + 1
    else:
        entry_ids, entries = distinct_entries(index, value)
        n_entries = len(entries)
        if entry_ids is None or n_entries > MAX_DISTINCT_ENTRY_FRACTION * index.numel():
            return None
    n_rows, width = index.shape
    rows_entries = entry_ids.view(n_rows, width)
    if _most_pairs_distinct(rows_entries, n_entries, present=None):
        return None
    left, right = pair_positions(width, index.device)
    pair_keys = columns(rows_entries, left) * n_entries
    pair_keys += columns(rows_entries, right)
    keys, inverse, first = unique_groups(pair_keys)
    if len(keys) > MAX_GROUP_FRACTION * len(inverse):
        return None
    left, right = occurrence_positions(first, n_rows, width)
    return TrainingGroups(inverse, left, right, len(keys))


def hashed_training_groups(kernels, index, value):
    """:func:`group_training_pairs` in the fused kernels' hash tables.

    The same rules and the same groups (tested), numbered by first
    occurrence instead of by key, which changes the order of the sums over
    groups only; one kernel call instead of the numbering, the bound, the
    sort and the positions in PyTorch and numpy.
    """
    if index.shape[0] < 2 or index.shape[1] < 2:
        return None
    inverse, left, right, n_groups = kernels.training_pair_groups(
        index.contiguous(),
        value.contiguous(),
        MAX_DISTINCT_ENTRY_FRACTION,
        MAX_GROUPING_BOUND_FRACTION,
        MAX_GROUP_FRACTION,
        PAIR_CHUNK,
    )
    if n_groups < 0:
        return None
    return TrainingGroups(inverse, left, right, n_groups)


def group_prediction_pairs(index, value):
    """Group the pairs of a prediction batch by their entries, or None.

    None under the same rules as :func:`group_training_pairs` (then
    :func:`.inference.row_pair_slices` scores pairs one by one). Pairs are
    grouped slot by slot (:func:`group_pairs_by_slot`) when the batch's
    entries per position fit a small table, as one-hot data's do, and by a
    sort otherwise.
    """
    if index.shape[0] < 2 or index.shape[1] < 2:
        # single-row predictions skip the sort
        return None
    entry_ids, entries = distinct_entries(index, value)
    n_entries = len(entries)
    if entry_ids is None or n_entries > MAX_DISTINCT_ENTRY_FRACTION * index.numel():
        return None
    n_rows, width = index.shape
    rows_entries = entry_ids.view(n_rows, width)
    present = entries_by_position(rows_entries, n_entries)
    if _most_pairs_distinct(rows_entries, n_entries, present):
        return None
    if present is not None:
        keys, inverse = group_pairs_by_slot(rows_entries, present)
    else:
        left, right = pair_positions(width, index.device)
        pair_keys = columns(rows_entries, left) * n_entries
        pair_keys += columns(rows_entries, right)
        keys, inverse, _ = unique_groups(pair_keys)
    if len(keys) > MAX_GROUP_FRACTION * len(inverse):
        return None
    entry_pairs = pad_to_chunks(keys)
    return PredictionGroups(
        inverse,
        entries,
        torch.div(entry_pairs, n_entries, rounding_mode="floor"),
        entry_pairs % n_entries,
        len(keys),
    )


def ungrouped_training_pairs(n_rows, width, device):
    """Every pair occurrence its own group (a reference for the grouped paths)."""
    n_occurrences = n_rows * (width * (width - 1) // 2)
    inverse = torch.arange(n_occurrences, device=device)
    left, right = occurrence_positions(inverse, n_rows, width)
    return TrainingGroups(inverse, left, right, n_occurrences)


def _most_pairs_distinct(rows_entries, n_entries, present):
    n_rows, width = rows_entries.shape
    n_pairs = n_rows * (width * (width - 1) // 2)
    bound = most_pairs_distinct_bound(rows_entries, n_entries, present)
    return bound > MAX_GROUPING_BOUND_FRACTION * n_pairs


def _one_hot_without_padding(value):
    """Whether every value of a batch is exactly 1.0 (no padding, which is 0)."""
    return (
        value.dtype == torch.float32
        and value.numel() > 0
        and bool(torch.all(value.view(torch.int32) == _FLOAT32_ONE_BITS))
    )


def entries_by_position(entry_ids, n_entries):
    """Which entries occur at each position of a batch's rows, or None.

    A (width, n_entries) table of booleans, marked in one pass; None when
    it would be large against the batch (then sorting is cheaper).
    """
    n_rows, width = entry_ids.shape
    if width * n_entries > 16 * entry_ids.numel():
        return None
    present = entry_ids.new_zeros((width, n_entries), dtype=torch.bool)
    present.scatter_(1, entry_ids.t(), True)
    return present


def most_pairs_distinct_bound(entry_ids, n_entries, present=None):
    """An upper bound on the number of distinct pairs of a batch, in one cheap pass.

    The pairs at positions (l, r) of the rows take at most d_l * d_r distinct
    values (d: the distinct entries at a position), and at most one per row.
    On one-hot data the positions are the fields: pairs of small fields
    repeat, pairs of two large ones do not. ``present`` is
    :func:`entries_by_position` of the batch, when already computed.
    """
    n_rows, width = entry_ids.shape
    if present is None:
        present = entries_by_position(entry_ids, n_entries)
    if present is not None:
        per_position = present.sum(1)
    else:
        positions = torch.arange(width, device=entry_ids.device)
        keys = (positions * n_entries + entry_ids).reshape(-1)
        distinct = distinct_values(keys)
        per_position = torch.bincount(distinct // n_entries, minlength=width)
    left, right = pair_positions(width, entry_ids.device)
    return int(torch.clamp(per_position[left] * per_position[right], max=n_rows).sum())


def group_pairs_by_slot(entry_ids, present):
    """Distinct pairs of a batch's entries and each occurrence's group, slot by slot.

    The pairs at positions (l, r) of the rows, a slot, take at most
    d_l * d_r values (d: the distinct entries at a position). On one-hot
    data most slots join two small fields: their pairs are grouped by
    counting over those few values, and only the pairs of the other slots
    are sorted (on Frappe's 28,860-row test file in one chunk, 173k of its
    1.3M pairs: 10.9 against 24.6 ms for sorting all). A pair that occurs in
    two slots falls in two groups, which score alike.

    Parameters
    ----------
    entry_ids : Tensor of shape (n_rows, width)
        Entry of each position, numbered from 0.
    present : Tensor of shape (width, n_entries)
        :func:`entries_by_position` of ``entry_ids``.

    Returns
    -------
    pairs : Tensor of shape (n_groups,)
        The two entries of each group, as ``left * n_entries + right``.
    inverse : Tensor of shape (n_rows * n_pairs,)
        Group of each pair occurrence, row after row.
    """
    n_rows, width = entry_ids.shape
    n_entries = present.shape[1]
    per_position = present.sum(1)
    left, right = pair_positions(width, entry_ids.device)
    counted = per_position[left] * per_position[right] <= n_rows
    counted_slots = torch.nonzero(counted).view(-1)
    sorted_slots = torch.nonzero(~counted).view(-1)
    # slot by slot, a slot's pairs are contiguous rows
    by_position = transposed(entry_ids)
    inverse_by_slot = entry_ids.new_empty((len(left), n_rows))
    pairs = []
    if len(counted_slots) > 0:
        slot_pairs, groups = _counted_slot_groups(
            by_position,
            present,
            per_position,
            left[counted_slots],
            right[counted_slots],
        )
        inverse_by_slot.index_copy_(0, counted_slots, groups)
        pairs.append(slot_pairs)
    if len(sorted_slots) > 0:
        keys = by_position.index_select(0, left[sorted_slots]) * n_entries
        keys += by_position.index_select(0, right[sorted_slots])
        slot_pairs, groups, _ = unique_groups(keys)
        groups += sum(len(p) for p in pairs)
        inverse_by_slot.index_copy_(0, sorted_slots, groups.view(-1, n_rows))
        pairs.append(slot_pairs)
    return torch.cat(pairs), transposed(inverse_by_slot).view(-1)


def _counted_slot_groups(by_position, present, per_position, left, right):
    """:func:`group_pairs_by_slot` for slots (left, right), by counting.

    Each entry is numbered by its rank among its position's entries; a
    pair's key in its slot is ``rank_l * d_r + rank_r``, and the slots' keys
    follow one another in one range, which a count over it groups. Returns
    the groups' entry pairs and the (n_slots, n_rows) groups of the pairs.
    """
    n_entries = present.shape[1]
    n_right = per_position.index_select(0, right)
    n_values = per_position.index_select(0, left) * n_right
    slot_start = torch.cumsum(n_values, 0) - n_values
    n_keys = int(n_values.sum())
    # 32-bit ranks and keys where they fit: half the memory traffic
    dtype = torch.int32 if n_keys < 2**31 else torch.int64
    rank = torch.cumsum(present, 1, dtype=dtype)
    rank -= 1
    ranks = torch.gather(rank, 1, by_position)
    keys = ranks.index_select(0, left) * n_right.to(dtype).unsqueeze(1)
    keys += ranks.index_select(0, right)
    keys += slot_start.to(dtype).unsqueeze(1)
    seen = torch.bincount(keys.view(-1), minlength=n_keys) > 0
    group_of_key = torch.cumsum(seen, 0)
    group_of_key -= 1
    groups = group_of_key.index_select(0, keys.view(-1)).view(keys.shape)
    # each group's slot and ranks, and from them its two entries
    group_keys = torch.nonzero(seen).view(-1)
    slot = torch.searchsorted(slot_start, group_keys, right=True) - 1
    key_in_slot = group_keys - slot_start.index_select(0, slot)
    slot_n_right = n_right.index_select(0, slot)
    rank_left = torch.div(key_in_slot, slot_n_right, rounding_mode="floor")
    rank_right = key_in_slot - rank_left * slot_n_right
    # the entries of each position, by rank, one position after the other
    by_rank = torch.nonzero(present)[:, 1]
    position_start = torch.cumsum(per_position, 0) - per_position
    entry_left = by_rank.index_select(
        0, position_start.index_select(0, left.index_select(0, slot)) + rank_left
    )
    entry_right = by_rank.index_select(
        0, position_start.index_select(0, right.index_select(0, slot)) + rank_right
    )
    return entry_left * n_entries + entry_right, groups


def transposed(matrix):
    """A contiguous transpose of a 2-D tensor."""
    if matrix.device.type == "cpu":
        # numpy's transposing copy is about twice as fast as torch's here
        return torch.from_numpy(np.ascontiguousarray(matrix.numpy().T))
    return matrix.t().contiguous()


_FLOAT32_ONE_BITS = 0x3F800000


def distinct_entries(index, value):
    """Group the (feature, value) entries of a batch.

    Returns
    -------
    entry_ids : Tensor of shape (index.numel(),), or None for an empty batch
        Group of each entry, numbered from 0.
    first : Tensor of shape (n_distinct,)
        Flat position of the first occurrence of each group.
    """
    if index.numel() == 0:
        return None, index.new_empty(0)
    if value.dtype == torch.float32:
        bits = value.view(torch.int32)
        ones = bits == _FLOAT32_ONE_BITS
        if torch.all(ones):
            # one-hot rows without padding: the feature alone
            keys = index
        elif torch.all(ones | (bits == 0)):
            # one-hot data: short keys, which unique_groups counts or packs
            # with their positions into one integer for its fastest sort
            keys = index * 2 + ones
        else:
            # feature and value bits in one integer: a single sort
            keys = index * (1 << 32) + (bits.to(torch.int64) & 0xFFFFFFFF)
    else:
        _, feature_ids, _ = unique_groups(index)
        values, value_ids = torch.unique(value, return_inverse=True)
        keys = feature_ids * len(values) + value_ids.reshape(-1)
    _, entry_ids, first = unique_groups(keys)
    return entry_ids, first
