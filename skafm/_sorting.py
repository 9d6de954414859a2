"""Grouping equal integer keys: the sort behind pair grouping and sparse updates.

Every training step sorts a few integer arrays: the batch's (feature, value)
entries, its pairs of entries, the table rows its gradient touches. On the
CPU, ``torch.unique`` and ``torch.sort`` use a comparison sort, about 1 ms for
the 23,040 pairs of a 512-row Frappe batch; numpy's sort of integers is
vectorised (x86-simd-sort) and about ten times faster. Packing each key with
its position into one integer lets a plain value sort (numpy's fastest) also
give the order. On other devices torch's own sort is used.
"""

import numpy as np
import torch

# Packed keys are int64: key bits + position bits must leave the sign bit alone.
_PACKED_BITS = 62


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
    values, inverse, first = _unique_groups_numpy(keys.contiguous().numpy())
    return torch.from_numpy(values), torch.from_numpy(inverse), torch.from_numpy(first)


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


def _unique_groups_numpy(keys):
    n = len(keys)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    keys = keys.astype(np.int64, copy=False)
    low = int(keys.min())
    position_bits = max(n - 1, 1).bit_length()
    if (int(keys.max()) - low).bit_length() + position_bits <= _PACKED_BITS:
        # ties broken by position: the first of a run is the first occurrence
        packed = keys - low if low else keys.copy()
        packed <<= position_bits
        packed |= np.arange(n, dtype=np.int64)
        packed.sort()
        order = packed & ((1 << position_bits) - 1)
        packed >>= position_bits
        starts = _run_starts(packed)
        first = order[starts]
        values = packed[starts]
        values += low
    else:
        order = np.argsort(keys)
        ordered_keys = keys[order]
        starts = _run_starts(ordered_keys)
        first = np.minimum.reduceat(order, np.flatnonzero(starts))
        values = ordered_keys[starts]
    group = np.cumsum(starts, dtype=np.int64)
    group -= 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = group
    return values, inverse, first


def _run_starts(ordered):
    starts = np.empty(len(ordered), dtype=bool)
    starts[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])
    return starts
