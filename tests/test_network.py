"""The torch network against a naive, pair-by-pair reference implementation."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import skafm._native
import skafm._nn.functional as functional
import skafm._nn.grouping as grouping
import skafm._nn.ops as ops
import skafm._nn.pooling as pooling
from skafm._batching import as_active_features, pad_rows
from skafm._nn import AttentionalFactorizationMachine
from skafm._nn.functional import masked_softmax, pair_positions, pair_selectors
from skafm._nn.grouping import (
    group_prediction_pairs,
    group_training_pairs,
    ungrouped_training_pairs,
)
from skafm._nn.inference import additive_parts, predicted_output
from skafm._nn.pooling import AttentionPooling, PairwiseAttentionPooling
from skafm._sorting import unique_groups


def make_module(n_features=12, n_outputs=1, attention=True, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    module = AttentionalFactorizationMachine(
        n_features,
        n_outputs,
        n_factors=4,
        attention_size=3,
        attention=attention,
        dropout=kwargs.get("dropout", 0.0),
        attention_dropout=kwargs.get("attention_dropout", 0.0),
        generator=generator,
    )
    # non-trivial values everywhere, not just the initial ones
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return module.eval()


def one_hot_rows(rng, n_rows, n_fields, field_size, n_categories, n_columns=None):
    """Dense one-hot rows: in each field of ``field_size`` columns, one of
    its first ``n_categories`` is 1. Returns the rows and their columns."""
    offsets = field_size * np.arange(n_fields)
    columns = offsets + rng.randint(0, n_categories, size=(n_rows, n_fields))
    dense = np.zeros((n_rows, n_columns or n_fields * field_size))
    np.put_along_axis(dense, columns, 1.0, axis=1)
    return dense, columns


def reference_output(module, row_indices, row_values):
    """The AFM equation of the paper, one pair at a time, in float64."""
    params = {
        name: p.detach().double().numpy() for name, p in module.named_parameters()
    }
    out = params["bias"].copy()
    out += sum(
        params["linear"][i] * x for i, x in zip(row_indices, row_values, strict=True)
    )
    scaled = [
        params["embedding"][i] * x for i, x in zip(row_indices, row_values, strict=True)
    ]
    products = [
        scaled[a] * scaled[b]
        for a in range(len(scaled))
        for b in range(a + 1, len(scaled))
    ]
    if not products:
        return out
    if module.attention:
        W, b = params["attention_weight"], params["attention_bias"]
        h = params["attention_query"][:, 0]
        scores = np.array([h @ np.maximum(W @ pair + b, 0) for pair in products])
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
    else:
        weights = np.ones(len(products))
    pooled = sum(w * pair for w, pair in zip(weights, products, strict=True))
    return out + pooled @ params["projection"]


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_network_matches_pairwise_reference(attention, n_outputs):
    rng = np.random.RandomState(0)
    # rows with 0, 1, 2 and many active features, real-valued
    dense = rng.normal(size=(6, 12)) * (rng.rand(6, 12) < 0.5)
    dense[0] = 0.0
    dense[1, 1:] = 0.0
    dense[2, 2:] = 0.0
    dense[3] = rng.normal(size=12)
    X = as_active_features(sp.csr_matrix(dense))
    module = make_module(n_outputs=n_outputs, attention=attention)

    batch = pad_rows(X, np.arange(6))
    with torch.no_grad():
        output = predicted_output(module, batch.index, batch.value, batch.mask)
        output = output.double().numpy()

    for row in range(6):
        start, stop = X.indptr[row], X.indptr[row + 1]
        expected = reference_output(module, X.indices[start:stop], X.data[start:stop])
        np.testing.assert_allclose(output[row], expected, rtol=1e-4, atol=1e-4)


def test_attention_weights_are_a_softmax_over_each_rows_real_pairs():
    X = as_active_features(
        sp.csr_matrix(np.array([[1, 1, 1, 1.0], [0, 1, 0, 0], [1, 0, 0, 1]]))
    )
    module = make_module(n_features=4)
    batch = pad_rows(X, np.arange(3))
    with torch.no_grad():
        _, weights, _, left, right = additive_parts(
            module, batch.index, batch.value, batch.mask
        )
    pair_mask = batch.mask[:, left] & batch.mask[:, right]
    totals = weights.sum(1).numpy()
    np.testing.assert_allclose(totals, [1.0, 0.0, 1.0], atol=1e-6)
    # the wrong-axis bug makes every weight 1: here a row of 6 pairs shares 1
    assert weights[0].max() < 1.0
    assert torch.all(weights[~pair_mask] == 0)


@pytest.mark.parametrize("attention", [True, False])
def test_additive_parts_sum_to_the_output(attention):
    rng = np.random.RandomState(0)
    dense = rng.normal(size=(6, 12)) * (rng.rand(6, 12) < 0.5)
    X = as_active_features(sp.csr_matrix(dense))
    module = make_module(n_outputs=3, attention=attention)
    batch = pad_rows(X, np.arange(6))
    with torch.no_grad():
        output = predicted_output(module, batch.index, batch.value, batch.mask)
        linear, _, contributions, _, _ = additive_parts(
            module, batch.index, batch.value, batch.mask
        )
    total = module.bias + linear + contributions.sum(1)
    torch.testing.assert_close(total, output, rtol=1e-5, atol=1e-5)


def test_masked_softmax_of_rows_without_pairs_is_zero_not_nan():
    scores = torch.randn(2, 3)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    weights = masked_softmax(scores, mask)
    assert torch.isfinite(weights).all()
    assert weights[0].sum() == 0
    assert torch.isclose(weights[1].sum(), torch.tensor(1.0))


def test_dropout_is_active_in_training_and_off_in_eval(training_ops):
    X = as_active_features(sp.csr_matrix(np.ones((8, 5))))
    module = make_module(n_features=5, dropout=0.5, attention_dropout=0.5)
    batch = pad_rows(X, np.arange(8))
    module.train()
    generator = torch.Generator().manual_seed(0)
    train_outputs = module(batch.index, batch.value, batch.mask, generator)
    assert not torch.allclose(train_outputs, train_outputs[0].expand_as(train_outputs))
    module.eval()
    with torch.no_grad():
        eval_outputs = predicted_output(module, batch.index, batch.value, batch.mask)
    assert torch.equal(eval_outputs, eval_outputs[0].expand_as(eval_outputs))


def test_row_output_does_not_depend_on_batch_mates():
    rng = np.random.RandomState(0)
    X = as_active_features(
        sp.csr_matrix(rng.normal(size=(40, 12)) * (rng.rand(40, 12) < 0.6))
    )
    module = make_module()
    width = np.diff(X.indptr)
    rows = np.flatnonzero(width == np.bincount(width).argmax())
    with torch.no_grad():
        together = pad_rows(X, rows)
        joint = predicted_output(module, together.index, together.value, together.mask)
        for position, row in enumerate(rows):
            alone = pad_rows(X, np.array([row]))
            single = predicted_output(module, alone.index, alone.value, alone.mask)
            assert torch.equal(single[0], joint[position])


@pytest.mark.parametrize("with_dropout", [False, True])
def test_attention_pooling_backward_matches_numerical_gradients(with_dropout):
    torch.manual_seed(0)
    n_rows, width, k, t = 3, 4, 3, 2
    scaled = torch.randn(n_rows, width, k, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    left, right = pair_positions(width, scaled.device)
    pair_mask = mask[:, left] & mask[:, right]
    # every pair its own group: gradcheck moves each entry on its own
    groups = ungrouped_training_pairs(n_rows, width, scaled.device)
    select_left, select_right = (
        s.double() for s in pair_selectors(width, scaled.device)
    )
    W = torch.randn(t, k, dtype=torch.float64, requires_grad=True)
    b = torch.randn(t, dtype=torch.float64, requires_grad=True)
    query = torch.randn(t, 1, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(pair_mask.shape) > 0.3).double() / 0.7 if with_dropout else None

    def pooled(scaled, W, b, query):
        return AttentionPooling.apply(scaled, pair_mask, groups, W, b, query, keep)

    def pairwise_pooled(scaled, W, b, query):
        return PairwiseAttentionPooling.apply(
            scaled, pair_mask, select_left, select_right, W, b, query, keep
        )

    assert torch.autograd.gradcheck(pooled, (scaled, W, b, query))
    assert torch.autograd.gradcheck(pairwise_pooled, (scaled, W, b, query))


def test_afm_started_from_an_fm_reproduces_it_on_rows_of_the_mean_width(training_ops):
    fm = make_module(attention=False, seed=1)
    afm = make_module(attention=True, seed=2)
    rng = np.random.RandomState(0)
    width = 5  # every row: 10 pairs
    X = sp.csr_matrix(
        (
            rng.uniform(0.5, 2, size=4 * width),
            np.concatenate([rng.choice(12, width, replace=False) for _ in range(4)]),
            np.arange(0, 4 * width + 1, width),
        ),
        shape=(4, 12),
    )
    batch = pad_rows(as_active_features(X), np.arange(4))
    afm.start_from_factorization_machine(fm, mean_pairs=10.0)
    with torch.no_grad():
        expected = predicted_output(fm, batch.index, batch.value, batch.mask)
        started = predicted_output(afm, batch.index, batch.value, batch.mask)
    torch.testing.assert_close(started, expected, rtol=1e-5, atol=1e-5)
    # the attention network still learns: its query gets a gradient
    afm.train()
    afm(batch.index, batch.value, batch.mask).sum().backward()
    assert afm.attention_query.grad.abs().sum() > 0


def test_training_steps_with_a_workspace_match_fresh_allocations(training_ops):
    """Reused buffers give the same gradients, step after step, at any width."""
    from skafm._nn.workspace import PairWorkspace

    module = make_module(n_features=30)
    module.train()
    rng = np.random.RandomState(0)

    def gradients(batch, workspace):
        module.zero_grad(set_to_none=True)
        output = module(batch.index, batch.value, batch.mask, workspace=workspace)
        output.sum().backward()
        return [p.grad.to_dense().clone() for p in module.parameters()]

    workspace = PairWorkspace()
    for width in [6, 3, 6, 8, 2]:
        X = sp.random(5, 30, density=width / 30, random_state=rng, format="csr")
        batch = pad_rows(as_active_features(X), np.arange(5))
        reused = gradients(batch, workspace)
        fresh = gradients(batch, None)
        for a, b in zip(reused, fresh, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_grouping_identical_pairs_changes_neither_outputs_nor_gradients(
    monkeypatch, training_ops
):
    """The attention network runs once per distinct pair; the result is the same."""
    rng = np.random.RandomState(0)
    # 6 fields of 2 categories, values 1 or 2: pairs repeat. Some rows lack
    # the last field, so batches are padded.
    columns = 2 * np.arange(6) + rng.randint(0, 2, size=(60, 6))
    dense = np.zeros((60, 12))
    np.put_along_axis(dense, columns, rng.choice([1.0, 2.0], size=(60, 6)), axis=1)
    short = rng.rand(60) < 0.3
    dense[short, columns[short, 5]] = 0.0
    batch = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(60))
    groups = group_training_pairs(batch.index, batch.value)
    n_pairs = batch.index.shape[1] * (batch.index.shape[1] - 1) // 2
    assert len(groups.left) < 0.5 * 60 * n_pairs  # grouping does happen

    original = ops.group_training_pairs

    def outputs_and_gradients(deduplicate):
        # without groups, pairs are scored one by one (PairwiseAttentionPooling)
        monkeypatch.setattr(
            ops,
            "group_training_pairs",
            original if deduplicate else lambda *args, **kwargs: None,
        )
        module = make_module(attention_dropout=0.3)
        module.train()
        generator = torch.Generator().manual_seed(0)
        output = module(batch.index, batch.value, batch.mask, generator)
        (output.square().sum()).backward()
        return output, [p.grad.to_dense() for p in module.parameters()]

    grouped, grouped_grads = outputs_and_gradients(True)
    plain, plain_grads = outputs_and_gradients(False)
    torch.testing.assert_close(grouped, plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grouped_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_real_valued_features_are_not_grouped():
    rng = np.random.RandomState(0)
    X = sp.random(20, 12, density=0.5, random_state=rng, format="csr")
    batch = pad_rows(as_active_features(X), np.arange(20))
    assert group_prediction_pairs(batch.index, batch.value) is None


def test_pairs_of_large_fields_are_not_grouped():
    """One-hot, 3 fields of 20 categories and 200 rows: entries repeat, pairs not."""
    rng = np.random.RandomState(0)
    dense, _ = one_hot_rows(rng, 200, 3, 20, 20)
    batch = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(200))
    entry_ids, first = grouping.distinct_entries(batch.index, batch.value)
    n_entries = len(first)
    assert n_entries <= 60
    # each of the 3 field pairs has at most 20 * 20 = 400 > 200 values: the
    # bound rules grouping out without sorting the pairs
    bound = grouping.most_pairs_distinct_bound(
        entry_ids.view(batch.index.shape), n_entries
    )
    assert bound == 3 * 200
    assert group_prediction_pairs(batch.index, batch.value) is None


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("n_fields", [2, 3, 6])
def test_row_output_is_the_same_on_the_grouped_and_the_pairwise_path(
    n_fields, n_outputs
):
    """In a batch, one-hot rows share pairs (grouped path); alone, they do not."""
    rng = np.random.RandomState(n_fields)
    dense, _ = one_hot_rows(rng, 200, n_fields, 10, 3, n_columns=60)
    X = as_active_features(sp.csr_matrix(dense))
    module = make_module(n_features=60, n_outputs=n_outputs)
    together = pad_rows(X, np.arange(200))
    assert group_prediction_pairs(together.index, together.value) is not None
    with torch.no_grad():
        joint = predicted_output(module, together.index, together.value, together.mask)
        for row in range(0, 200, 9):
            alone = pad_rows(X, np.array([row]))
            assert group_prediction_pairs(alone.index, alone.value) is None
            single = predicted_output(module, alone.index, alone.value, alone.mask)
            assert torch.equal(single[0], joint[row])


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_feature_lookup_matches_embedding_lookups(n_outputs, training_ops):
    # the fused lookup against F.embedding with sparse gradients and products
    generator = torch.Generator().manual_seed(3)
    index = torch.randint(0, 9, (5, 4), generator=generator)
    value = torch.randn(5, 4, generator=generator)
    mask = torch.rand(5, 4, generator=generator) > 0.3
    value = value * mask
    weights = [torch.randn(5, generator=generator) for _ in range(3)]
    # each entry's penalty weight, 0 for padding
    penalty = (0.5 + torch.rand(5, 4, generator=generator)) * mask

    def run(fused):
        embedding = torch.randn(9, 6, generator=torch.Generator().manual_seed(4))
        linear = torch.randn(9, n_outputs, generator=torch.Generator().manual_seed(5))
        embedding.requires_grad_(True)
        linear.requires_grad_(True)
        if fused:
            scaled, term, norm = ops.feature_lookup(
                index, value, penalty, embedding, linear, True
            )
        else:
            rows = torch.nn.functional.embedding(index, embedding, sparse=True)
            linear_rows = torch.nn.functional.embedding(index, linear, sparse=True)
            scaled = rows * value.unsqueeze(-1)
            term = torch.bmm(value.unsqueeze(1), linear_rows).squeeze(1)
            weight = penalty.unsqueeze(-1)
            norm = (rows.square() * weight).sum((1, 2)) + (
                linear_rows.square() * weight
            ).sum((1, 2))
        objective = (
            (scaled.sum(-1).sum(-1) * weights[0]).sum()
            + (term.sum(-1) * weights[1]).sum()
            + (norm * weights[2]).sum()
        )
        objective.backward()
        assert embedding.grad.is_sparse and linear.grad.is_sparse
        return [scaled, term, norm, embedding.grad.to_dense(), linear.grad.to_dense()]

    for got, want in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("one_hot", [True, False])
@pytest.mark.parametrize("n_outputs", [1, 3])
def test_prediction_path_matches_the_training_path(one_hot, n_outputs, training_ops):
    """Without gradients, eval mode sums per-pair terms instead of pooling vectors."""
    rng = np.random.RandomState(0)
    if one_hot:
        dense, _ = one_hot_rows(rng, 300, 4, 5, 2)
        dense[:5, :] = 0.0  # rows without pairs
        dense[5, 3] = 1.0
    else:
        dense = rng.normal(size=(300, 20)) * (rng.rand(300, 20) < 0.4)
    X = as_active_features(sp.csr_matrix(dense))
    module = make_module(n_features=20, n_outputs=n_outputs)
    batch = pad_rows(X, np.arange(300))
    assert (group_prediction_pairs(batch.index, batch.value) is not None) == one_hot
    with torch.no_grad():
        predicted = predicted_output(module, batch.index, batch.value, batch.mask)
    with torch.enable_grad():
        pooled = module(batch.index, batch.value, batch.mask)
    torch.testing.assert_close(predicted, pooled.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_entries", [30, 50000])  # marked, then sorted
def test_distinct_pairs_bound_counts_distinct_entries_per_position(n_entries):
    generator = torch.Generator().manual_seed(n_entries)
    n_rows, width = 400, 5
    entry_ids = torch.randint(0, n_entries, (n_rows, width), generator=generator)
    entry_ids[:, 0] %= 3  # a small field
    per_position = [len(set(entry_ids[:, p].tolist())) for p in range(width)]
    expected = sum(
        min(per_position[left] * per_position[right], n_rows)
        for left in range(width)
        for right in range(left + 1, width)
    )
    bound = grouping.most_pairs_distinct_bound(entry_ids, n_entries)
    assert bound == expected


@pytest.mark.parametrize("cached", [True, False])
@pytest.mark.parametrize("width", [2, 5])
def test_occurrence_positions_are_the_rows_and_pairs_of_the_occurrences(
    monkeypatch, width, cached
):
    if not cached:
        monkeypatch.setattr(functional, "CACHED_POSITIONS_MAX_OCCURRENCES", 0)
    n_rows, n_pairs = 7, width * (width - 1) // 2
    occurrences = torch.tensor([0, 3, n_rows * n_pairs - 1, n_pairs, 1])
    left, right = functional.occurrence_positions(occurrences, n_rows, width)
    pair_left, pair_right = pair_positions(width, occurrences.device)
    rows, pairs = occurrences // n_pairs, occurrences % n_pairs
    n = len(occurrences)
    assert torch.equal(left[:n], rows * width + pair_left[pairs])
    assert torch.equal(right[:n], rows * width + pair_right[pairs])
    # padding: whole chunks, filled with occurrence 0's positions
    assert len(left) % functional.PAIR_CHUNK == 0
    assert torch.all(left[n:] == 0) and torch.all(right[n:] == 1)


def test_unpadded_batches_are_pooled_without_a_mask_with_the_same_bits(
    monkeypatch, torch_ops
):
    """Without padding the pair mask is skipped: the same outputs and
    gradients, bit for bit, as with its all-True mask, on both paths."""
    dense, _ = one_hot_rows(np.random.RandomState(0), 40, 5, 2, 2)
    batch = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(40))
    assert bool(batch.mask.all())
    module = make_module(n_features=10, attention_dropout=0.3).train()
    masks = []
    original_softmax = pooling.masked_softmax

    def recording_softmax(scores, mask):
        masks.append(mask)
        return original_softmax(scores, mask)

    monkeypatch.setattr(pooling, "masked_softmax", recording_softmax)
    module(batch.index, batch.value, batch.mask, torch.Generator().manual_seed(0))
    assert masks == [None]

    scaled = (
        module.embedding.detach()[batch.index] * batch.value.unsqueeze(-1)
    ).requires_grad_()
    pair_mask = functional.pairs_of(batch.mask)
    groups = group_training_pairs(batch.index, batch.value)
    select_left, select_right = pair_selectors(5, scaled.device)
    network = (module.attention_weight, module.attention_bias, module.attention_query)
    keep = (torch.rand(pair_mask.shape) > 0.3) / 0.7
    for pool, structure in [
        (AttentionPooling, (groups,)),
        (PairwiseAttentionPooling, (select_left, select_right)),
    ]:
        results = []
        for mask in (None, pair_mask):
            pooled = pool.apply(scaled, mask, *structure, *network, keep)
            gradients = torch.autograd.grad(pooled.square().sum(), (scaled, *network))
            results.append((pooled, *gradients))
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b)


def test_training_groups_one_hot_rows_by_feature_with_the_same_groups(torch_ops):
    rng = np.random.RandomState(0)
    dense, columns = one_hot_rows(rng, 50, 4, 3, 3)
    batch = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(50))
    by_feature = group_training_pairs(batch.index, batch.value)
    # the groups of the batch's numbered entries
    entry_ids, _ = grouping.distinct_entries(batch.index, batch.value)
    rows_entries = entry_ids.view(batch.index.shape)
    left, right = pair_positions(4, rows_entries.device)
    keys = rows_entries[:, left] * 1000 + rows_entries[:, right]
    _, inverse, first = unique_groups(keys)
    assert torch.equal(by_feature.inverse, inverse)
    first_left, first_right = functional.occurrence_positions(first, 50, 4)
    assert torch.equal(by_feature.left, first_left)
    assert torch.equal(by_feature.right, first_right)
    # padding (value 0) or other values: entries are numbered as before
    dense[:5, columns[:5, 3]] = 0.0
    dense[5:10, columns[5:10, 0]] = 2.0
    padded = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(50))
    assert group_training_pairs(padded.index, padded.value) is not None


def test_per_row_matmul_has_the_gradients_of_a_plain_product():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    weight = torch.randn(5, 3, dtype=torch.float64, generator=generator)
    assert torch.autograd.gradcheck(
        functional.per_row_matmul,
        (x.requires_grad_(), weight.requires_grad_()),
    )
    # forward: each row alone gives the same bits
    rows = functional.per_row_matmul(x, weight)
    for i in range(len(x)):
        assert torch.equal(rows[i], functional.per_row_matmul(x[i : i + 1], weight)[0])


def test_prediction_groups_pairs_slot_by_slot():
    """Slots joining small fields are counted, the others sorted: every
    occurrence's group holds its own two entries, one group per pair and slot."""
    rng = np.random.RandomState(0)
    n_rows = 200
    # fields of 2, 3, 4 and 60 categories: the pairs of the small fields are
    # counted, most of the 60's are sorted; value 2.0 and padding add entries
    sizes = np.array([2, 3, 4, 60])
    columns = np.cumsum(np.r_[0, sizes[:-1]]) + (rng.rand(n_rows, 4) * sizes).astype(
        int
    )
    dense = np.zeros((n_rows, sizes.sum()))
    np.put_along_axis(dense, columns, 1.0, axis=1)
    np.put_along_axis(dense[:10], columns[:10, :1], 2.0, axis=1)
    np.put_along_axis(dense[10:20], columns[10:20, 3:], 0.0, axis=1)
    batch = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(n_rows))
    entry_ids, entries = grouping.distinct_entries(batch.index, batch.value)
    rows_entries = entry_ids.view(n_rows, 4)
    present = grouping.entries_by_position(rows_entries, len(entries))
    per_position = present.sum(1)
    left, right = pair_positions(4, rows_entries.device)
    counted = per_position[left] * per_position[right] <= n_rows
    assert counted.any() and not counted.all()

    pairs, inverse = grouping.group_pairs_by_slot(rows_entries, present)
    keys = rows_entries[:, left] * len(entries) + rows_entries[:, right]
    assert torch.equal(pairs[inverse], keys.reshape(-1))
    slots = torch.arange(len(left)).repeat(n_rows)
    assert len(set(zip(slots.tolist(), keys.reshape(-1).tolist(), strict=True))) == (
        len(pairs)
    )

    groups = group_prediction_pairs(batch.index, batch.value)
    assert groups.n_groups == len(pairs)
    module = make_module(n_features=dense.shape[1])
    with torch.no_grad():
        predicted = predicted_output(module, batch.index, batch.value, batch.mask)
    with torch.enable_grad():
        pooled = module(batch.index, batch.value, batch.mask)
    torch.testing.assert_close(predicted, pooled.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_path_computes_the_same_outputs(dtype):
    """Training's four pooling paths (fused or PyTorch, grouped or pair by
    pair), prediction and the explanations' additive parts, on one batch."""
    rng = np.random.RandomState(0)
    dense, columns = one_hot_rows(rng, 80, 5, 3, 2)
    # padded rows and values other than 1, so nothing takes a shortcut
    dense[:10, columns[:10, 4]] = 0.0
    dense[10:20, columns[10:20, 0]] = 2.0
    batch = pad_rows(as_active_features(sp.csr_matrix(dense)), np.arange(80))
    index, value, mask = batch.index, batch.value.to(dtype), batch.mask
    module = make_module(n_features=15, n_outputs=2).to(dtype)
    assert group_training_pairs(index, value) is not None
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}

    outputs = {}
    for backend in ("fused", "torch"):
        if backend == "fused" and skafm._native.kernels() is None:
            continue
        with pytest.MonkeyPatch.context() as patch:
            if backend == "torch":
                patch.setattr(skafm._native, "kernels", lambda: None)
            for grouped in (True, False):
                if not grouped:
                    patch.setattr(ops, "group_training_pairs", lambda *args: None)
                with torch.no_grad():
                    outputs[backend, grouped] = module(index, value, mask)
    with torch.no_grad():
        outputs["predicted"] = predicted_output(module, index, value, mask)
        linear, _, contributions, _, _ = additive_parts(module, index, value, mask)
        outputs["explained"] = module.bias + linear + contributions.sum(1)
    expected = outputs.pop("predicted")
    assert all(output.dtype == dtype for output in outputs.values())
    for name, output in outputs.items():
        torch.testing.assert_close(output, expected, **tolerance, msg=str(name))
