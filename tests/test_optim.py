import pytest
import torch
import torch.nn.functional as F

from skafm._optim import LazyAdam, summed_rows


def train(optimizer_class, batches, lr=1e-2, shift=0):
    torch.manual_seed(0)
    embedding = torch.nn.Parameter(torch.randn(50, 4))
    linear = torch.nn.Parameter(torch.randn(50, 1))
    optimizer = optimizer_class([embedding, linear], lr=lr)
    for index in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = (F.embedding(index, embedding, sparse=True) * 1.5).sin().sum()
        # shift != 0: the two tables touch different rows
        linear_rows = (index + shift) % 50
        loss = loss + F.embedding(linear_rows, linear, sparse=True).square().sum()
        loss.backward()
        optimizer.step()
    return embedding.detach(), linear.detach(), optimizer


@pytest.mark.parametrize("shift", [0, 7])
def test_lazy_adam_groups_each_table_by_its_own_rows(shift, training_ops):
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 20, (8, 3), generator=generator) for _ in range(10)]
    ours = train(LazyAdam, batches, shift=shift)
    theirs = train(torch.optim.SparseAdam, batches, shift=shift)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("repeated", [False, True])
def test_lazy_adam_follows_sparse_adam(repeated, training_ops):
    generator = torch.Generator().manual_seed(1)
    # rows 40-49 are never touched; repeated indices sum their gradients
    high = 10 if repeated else 40
    batches = [torch.randint(0, high, (8, 3), generator=generator) for _ in range(30)]
    ours = train(LazyAdam, batches)
    torch_s = train(torch.optim.SparseAdam, batches)
    torch.testing.assert_close(ours[0], torch_s[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours[1], torch_s[1], rtol=1e-5, atol=1e-6)
    untouched = train(LazyAdam, [])[0]
    assert torch.equal(ours[0][40:], untouched[40:])
    state = ours[2].state[ours[2].param_groups[0]["params"][0]]
    assert state["step"] == 30
    assert torch.count_nonzero(state["exp_avg"][40:]) == 0


def test_lazy_adam_steps_dense_parameters_as_adam(training_ops):
    def train(optimizer_class):
        weight = torch.nn.Parameter(torch.linspace(-1, 1, 12).view(3, 4))
        optimizer = optimizer_class([weight], lr=1e-2)
        for _ in range(20):
            optimizer.zero_grad()
            (weight * torch.arange(12.0).view(3, 4)).sin().sum().backward()
            optimizer.step()
        return weight.detach(), optimizer.state[weight]

    ours, state = train(LazyAdam)
    theirs, _ = train(torch.optim.Adam)
    # eps enters as in SparseAdam, scaled by the bias correction: 1e-8 apart
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert state["step"] == 20


def test_summed_rows_adds_like_index_add():
    # the segment sum adds each row's entries in the order index_add_ does,
    # so the two give the same bits
    generator = torch.Generator().manual_seed(3)
    indices = torch.randint(0, 300, (5000,), generator=generator)
    values = torch.randn(5000, 16, generator=generator)
    grad = torch.sparse_coo_tensor(
        indices.unsqueeze(0), values, (300, 16), check_invariants=True
    )
    rows, summed, grouping = summed_rows(grad)
    unique, inverse = torch.unique(indices, return_inverse=True)
    expected = torch.zeros(len(unique), 16).index_add_(0, inverse, values)
    assert torch.equal(rows, unique)
    assert torch.equal(summed, expected)
    # a table looked up with the same indices reuses the grouping
    linear = torch.sparse_coo_tensor(
        indices.unsqueeze(0), values[:, :1], (300, 1), check_invariants=True
    )
    rows, summed, _ = summed_rows(linear, grouping)
    assert torch.equal(summed, expected[:, :1])
