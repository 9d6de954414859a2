"""Grouping equal integer keys: the sort behind pair grouping and sparse updates.

Every training step sorts a few integer arrays: the batch's (feature, value)
entries, its pairs of entries, the table rows its gradient touches. On the
CPU, ``torch.unique`` and ``torch.sort`` use a comparison sort, about 1 ms for
the 23,040 pairs of a 512-row Frappe batch; numpy's sort of integers is
vectorised (x86-simd-sort) and about ten times faster. Packing each key with
its position into one integer lets a plain value sort (numpy's fastest) also
give the order. Keys in a short range are counted instead of sorted. On
other devices torch's own sort is used.
"""

import numpy as np
import torch

# Packed keys are int64: key bits + position bits must leave the sign bit alone.
_PACKED_BITS = 62
# Count keys in a table over their range instead of sorting them when the
# range is at most this many times their number (3x faster on the 82k
# entries of a Frappe prediction chunk, whose features span 10.8k keys).
_DENSE_SPAN_PER_KEY = 2
# From this many keys on, the passes around the sort run on torch's threads.
_THREADED_PASSES_MIN_KEYS = 1 << 16


def unique_groups(keys):
    """Distinct values of an integer tensor, with each element's group.

    Parameters
    ----------
    keys : Tensor of int64, any shape
        Read flattened.

    Returns
    -------
    values : Tensor of shape (n_groups,)
        The distinct keys, in increasing order.
    inverse : Tensor of shape (keys.numel(),)
        Index into ``values`` of each key: ``values[inverse] == keys``.
    first : Tensor of shape (n_groups,)
        Position of the first occurrence of each distinct key.
    """
    keys = keys.reshape(-1)
    if keys.device.type != "cpu":
        return _unique_groups_torch(keys)
    keys = keys.to(torch.int64).contiguous()
    if len(keys) == 0:
        return keys, keys, keys
    low, high = (int(bound) for bound in torch.aminmax(keys))
    if high - low < _DENSE_SPAN_PER_KEY * len(keys):
        return _unique_groups_dense(keys, low, high)
    position_bits = max(len(keys) - 1, 1).bit_length()
    if (high - low).bit_length() + position_bits > _PACKED_BITS:
        return _unique_groups_argsort(keys.numpy())
    if len(keys) >= _THREADED_PASSES_MIN_KEYS:
        return _unique_groups_packed_threaded(keys, low, position_bits)
    return _unique_groups_packed(keys, low, position_bits)


def sorted_groups(keys):
    """Distinct values of an integer tensor, with its positions ordered by value.

    What a segment sum needs (``torch.embedding_bag`` over ``order`` and
    ``offsets`` sums each group's rows without a scatter); within a group,
    positions keep their order, so the sums add in the same order as
    ``index_add_`` over the inverse of :func:`unique_groups`.

    Parameters
    ----------
    keys : Tensor of int64, any shape
        Read flattened.

    Returns
    -------
    values : Tensor of shape (n_groups,)
        The distinct keys, in increasing order.
    order : Tensor of shape (keys.numel(),)
        Positions of the keys, sorted by key and then by position.
    offsets : Tensor of shape (n_groups,)
        Where each group starts in ``order``.
    """
    keys = keys.reshape(-1)
    if keys.device.type != "cpu":
        ordered, order = torch.sort(keys, stable=True)
        values, counts = torch.unique_consecutive(ordered, return_counts=True)
        return values, order, torch.cumsum(counts, 0) - counts
    keys = keys.to(torch.int64).contiguous()
    if len(keys) == 0:
        return keys, keys, keys
    low, high = (int(bound) for bound in torch.aminmax(keys))
    position_bits = max(len(keys) - 1, 1).bit_length()
    if (high - low).bit_length() + position_bits > _PACKED_BITS:
        order = np.argsort(keys.numpy(), kind="stable")
        ordered = keys.numpy()[order]
        offsets = np.flatnonzero(_run_starts(ordered))
        values = ordered[offsets]
    else:
        shifted, order = _packed_sort(keys.numpy(), low, position_bits)
        offsets = np.flatnonzero(_run_starts(shifted))
        values = shifted[offsets] + low
    return torch.from_numpy(values), torch.from_numpy(order), torch.from_numpy(offsets)


def distinct_values(keys):
    """The distinct values of an integer tensor, in increasing order."""
    keys = keys.reshape(-1)
    if keys.device.type != "cpu" or keys.numel() == 0:
        return torch.unique(keys)
    ordered = np.sort(keys.contiguous().numpy())
    return torch.from_numpy(ordered[_run_starts(ordered)])


def _unique_groups_torch(keys):
    values, inverse = torch.unique(keys, return_inverse=True)
    n = len(keys)
    first = torch.full((len(values),), n, dtype=torch.int64, device=keys.device)
    positions = torch.arange(n, device=keys.device)
    return values, inverse, first.scatter_reduce_(0, inverse, positions, "amin")


def _unique_groups_dense(keys, low, high):
    # keys in a short range: count them instead of sorting
    shifted = keys - low
    present = torch.bincount(shifted, minlength=high - low + 1) > 0
    group_of_key = torch.cumsum(present, 0)
    group_of_key -= 1
    inverse = group_of_key.index_select(0, shifted)
    values = torch.nonzero(present).view(-1) + low
    first = torch.full((len(values),), len(keys), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(len(keys)), "amin")
    return values, inverse, first


def _packed_sort(keys, low, position_bits):
    """``keys - low`` sorted, and the positions in that order (a stable argsort).

    Each key is packed with its position into one integer: numpy's value
    sort of integers is much faster than its argsort, and ties are broken by
    position.
    """
    packed = keys - low
    packed <<= position_bits
    packed |= np.arange(len(keys), dtype=np.int64)
    packed.sort()
    order = packed & ((1 << position_bits) - 1)
    packed >>= position_bits
    return packed, order


def _unique_groups_packed(keys, low, position_bits):
    n = len(keys)
    # the first of a run is the first occurrence
    packed, order = _packed_sort(keys.numpy(), low, position_bits)
    starts = _run_starts(packed)
    start_positions = np.flatnonzero(starts)
    first = order[start_positions]
    values = packed[start_positions]
    values += low
    group = np.cumsum(starts, dtype=np.int64)
    group -= 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = group
    return torch.from_numpy(values), torch.from_numpy(inverse), torch.from_numpy(first)


def _unique_groups_packed_threaded(keys, low, position_bits):
    # as _unique_groups_packed, with the passes around the sort on torch's
    # thread pool: faster on a prediction chunk's 368k pair keys (about 4.6
    # against 5.5 ms), slower on a training batch's few thousand
    packed = torch.bitwise_left_shift(keys - low, position_bits)
    packed |= torch.arange(len(keys))
    packed.numpy().sort()
    order = packed & ((1 << position_bits) - 1)
    packed >>= position_bits
    starts = _run_starts(packed.numpy())
    start_positions = torch.from_numpy(np.flatnonzero(starts))
    values = packed.index_select(0, start_positions) + low
    first = order.index_select(0, start_positions)
    group = torch.cumsum(torch.from_numpy(starts), 0)
    group -= 1
    # torch's threaded scatter: 0.43 against numpy's 0.76 ms on 368k keys
    inverse = torch.empty_like(group).index_copy_(0, order, group)
    return values, inverse, first


def _unique_groups_argsort(keys):
    order = np.argsort(keys)
    ordered_keys = keys[order]
    starts = _run_starts(ordered_keys)
    first = np.minimum.reduceat(order, np.flatnonzero(starts))
    values = ordered_keys[starts]
    group = np.cumsum(starts, dtype=np.int64)
    group -= 1
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = group
    return torch.from_numpy(values), torch.from_numpy(inverse), torch.from_numpy(first)


def _run_starts(ordered):
    starts = np.empty(len(ordered), dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts
