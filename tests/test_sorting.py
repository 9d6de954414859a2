import numpy as np
import pytest
import torch

from skafm._sorting import (
    _unique_groups_torch,
    distinct_values,
    sorted_groups,
    unique_groups,
)


def random_keys(n, high, negative):
    """n keys drawn from [0, high), or from about [-high / 2, high / 2)."""
    generator = torch.Generator().manual_seed(n)
    keys = torch.randint(0, high, (n,), generator=generator)
    return keys - high // 2 if negative else keys


@pytest.mark.parametrize(
    "n, high",
    [
        (1, 5),
        (100, 3),  # many repeats: counted over their range
        (5000, 5382),  # a Frappe batch's table rows: counted
        (20000, 50000),  # range above twice their number: packed and sorted
        (23040, 4_000_000),  # a batch's pair keys: packed with positions
        (100_000, 4_000_000),  # many keys: the passes on torch's threads
        (3000, 2**62),  # too wide to pack: argsort and a reduction
    ],
)
@pytest.mark.parametrize("negative", [False, True])
def test_unique_groups_equals_torch_unique(n, high, negative):
    keys = random_keys(n, high, negative)
    values, inverse, first = unique_groups(keys)
    expected = _unique_groups_torch(keys)
    for got, want in zip((values, inverse, first), expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(values[inverse], keys)
    # the first occurrence is the lowest position holding the value
    assert torch.equal(keys[first], values)
    for group in range(len(values)):
        positions = torch.nonzero(inverse == group).view(-1)
        assert first[group] == positions.min()
        if group > 20:
            break


def test_unique_groups_reads_any_shape_and_negative_keys():
    keys = torch.tensor([[3, -7, 3], [-7, 0, 3]])
    values, inverse, first = unique_groups(keys)
    assert values.tolist() == [-7, 0, 3]
    assert inverse.tolist() == [2, 0, 2, 0, 1, 2]
    assert first.tolist() == [1, 4, 0]


def test_unique_groups_of_nothing():
    values, inverse, first = unique_groups(torch.empty(0, dtype=torch.int64))
    assert len(values) == len(inverse) == len(first) == 0


def test_distinct_values_equals_torch_unique():
    keys = torch.from_numpy(np.random.default_rng(0).integers(0, 50, (7, 30)))
    assert torch.equal(distinct_values(keys), torch.unique(keys))
    assert len(distinct_values(keys[:0])) == 0


@pytest.mark.parametrize(
    "n, high",
    [
        (1, 5),
        (5000, 5382),  # a Frappe batch's table rows: packed with positions
        (3000, 2**62),  # too wide to pack: a stable argsort
    ],
)
@pytest.mark.parametrize("negative", [False, True])
def test_sorted_groups_is_a_stable_sort_by_key(n, high, negative):
    keys = random_keys(n, high, negative)
    values, order, offsets = sorted_groups(keys)
    ordered, expected_order = torch.sort(keys, stable=True)
    assert torch.equal(order, expected_order)
    expected_values, counts = torch.unique_consecutive(ordered, return_counts=True)
    assert torch.equal(values, expected_values)
    assert torch.equal(offsets, torch.cumsum(counts, 0) - counts)


def test_sorted_groups_of_nothing():
    values, order, offsets = sorted_groups(torch.empty(0, dtype=torch.int64))
    assert len(values) == len(order) == len(offsets) == 0
