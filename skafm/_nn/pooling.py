"""Attention pooling in PyTorch operations, as autograd Functions.

Two ways to one result, ``sum_{i<j} a_ij e_i * e_j`` with ``a`` the softmax
over a row's pairs of ``h^T ReLU(W (e_i * e_j) + b)``: by groups of
identical pairs (:class:`AttentionPooling`) and pair by pair
(:class:`PairwiseAttentionPooling`). Both score pairs with
:func:`.functional.chunked_attention_network`, so a row's output is the same
bits on either; :mod:`.fused` has the same Functions on the fused kernels,
and :mod:`.ops` chooses among the three.
"""

import torch

from .functional import (
    PAIR_CHUNK,
    chunked_attention_network,
    masked_softmax,
    upper_entries,
    upper_triangular,
    weighted_pair_sum,
)
from .workspace import buffer


class AttentionPooling(torch.autograd.Function):
    """Attention-weighted sum of the pairwise products of a batch of rows.

    Equivalent to building the (rows, pairs, k) products, the attention MLP,
    the masked softmax and the weighted sum with plain torch operations, but
    without any (rows, pairs, k) tensor:

    - the attention network runs once per group of identical pairs
      (:class:`.grouping.TrainingGroups`), on a (groups, k) matrix;
    - the weighted sum over pairs is ``sum_i e_i * (A e)_i`` with A the
      row's (width, width) upper-triangular matrix of attention weights, a
      per-row product of small matrices, and its backward pass is two more;
    - the backward pass is written by hand: two large matrix products for
      the attention network's gradients, in-place accumulation, and a
      single fused ReLU backward.

    Every reduction is per row or over a fixed-size chunk of groups, so a
    row's output does not depend on the other rows of its batch.
    """

    @staticmethod
    def forward(ctx, scaled, pair_mask, groups, W, b, query, keep, workspace=None):
        n_rows, width, k = scaled.shape
        flat = scaled.reshape(-1, k)
        n_padded = groups.left.shape[0]
        products = torch.index_select(
            flat, 0, groups.left, out=buffer(workspace, "products", (n_padded, k), flat)
        )
        right = torch.index_select(
            flat, 0, groups.right, out=buffer(workspace, "right", (n_padded, k), flat)
        )
        products.mul_(right)
        hidden, group_scores = chunked_attention_network(
            products, W, b, query, workspace
        )
        scores = group_scores.index_select(0, groups.inverse).view(n_rows, -1)
        weights = masked_softmax(scores, pair_mask)
        used = weights if keep is None else weights * keep
        upper = upper_triangular(used, width)
        pooled = weighted_pair_sum(upper, scaled)
        ctx.save_for_backward(scaled, upper, weights, keep, products, hidden, W, query)
        ctx.groups = groups
        ctx.workspace = workspace
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        scaled, upper, weights, keep, products, hidden, W, query = ctx.saved_tensors
        groups, workspace = ctx.groups, ctx.workspace
        n_rows, width, k = scaled.shape
        t = W.shape[0]
        # the weighted sum: d/de_i = (sum_j a_ij e_j) * g and d/da_ij = <e_i * e_j, g>
        pair_dots = torch.bmm(scaled * grad_pooled.unsqueeze(1), scaled.transpose(1, 2))
        grad_used = upper_entries(pair_dots)
        grad_weights = grad_used if keep is None else grad_used * keep
        # softmax backward; masked pairs have weight 0 and get no gradient
        grad_scores = weights * (
            grad_weights - (weights * grad_weights).sum(-1, keepdim=True)
        )
        grad_groups = scaled.new_zeros(groups.left.shape[0]).index_add_(
            0, groups.inverse, grad_scores.reshape(-1)
        )
        flat_hidden = hidden.view(-1, t)
        grad_query = (flat_hidden.t() @ grad_groups).unsqueeze(-1)
        grad_hidden = torch.mul(
            grad_groups.unsqueeze(-1),
            query.view(1, t),
            out=buffer(workspace, "grad_hidden", flat_hidden.shape, flat_hidden),
        )
        # ReLU backward, in place
        torch.ops.aten.threshold_backward.grad_input(
            grad_hidden, flat_hidden, 0.0, grad_input=grad_hidden
        )
        # a column sum as a matrix-vector product: half the time of sum(0)
        grad_b = torch.mv(grad_hidden.t(), grad_hidden.new_ones(len(grad_hidden)))
        grad_W = grad_hidden.t() @ products
        if not ctx.needs_input_grad[0]:
            # the entries are fixed (init="frozen_fm"): only the attention learns
            return None, None, None, grad_W, grad_b, grad_query, None, None
        grad_scaled = torch.bmm(upper + upper.transpose(1, 2), scaled)
        grad_scaled *= grad_pooled.unsqueeze(1)
        grad_products = torch.mm(
            grad_hidden,
            W,
            out=buffer(workspace, "grad_products", products.shape, products),
        )
        flat = scaled.reshape(-1, k)
        flat_grad = grad_scaled.view(-1, k)
        # the gradient to each side of a product is the other side times the
        # product's gradient; the forward buffers are free to reuse by now
        from_left = torch.index_select(
            flat, 0, groups.right, out=buffer(workspace, "right", products.shape, flat)
        ).mul_(grad_products)
        flat_grad.index_add_(0, groups.left, from_left)
        from_right = torch.index_select(
            flat,
            0,
            groups.left,
            out=buffer(workspace, "products", products.shape, flat),
        ).mul_(grad_products)
        flat_grad.index_add_(0, groups.right, from_right)
        return grad_scaled, None, None, grad_W, grad_b, grad_query, None, None


class PairwiseAttentionPooling(torch.autograd.Function):
    """Attention pooling pair by pair, for batches whose pairs do not repeat.

    Equivalent to :class:`AttentionPooling`. Builds the (rows, pairs, k)
    products, gathering pairs with one-hot selector matrices (an exact
    product), and scores them with one small matrix product per row, so a
    row's output does not depend on the other rows of its batch. The
    hand-written backward makes few passes over the (rows, pairs, k)
    tensors: two large matrix products for the attention network's
    gradients, in-place accumulation, and a single fused ReLU backward.
    """

    @staticmethod
    def forward(
        ctx,
        scaled,
        pair_mask,
        select_left,
        select_right,
        W,
        b,
        query,
        keep,
        workspace=None,
    ):
        n_rows, _, k = scaled.shape
        shape = (n_rows, select_left.shape[0], k)
        left = torch.bmm(
            select_left.expand(n_rows, -1, -1),
            scaled,
            out=buffer(workspace, "left", shape, scaled),
        )
        right = torch.bmm(
            select_right.expand(n_rows, -1, -1),
            scaled,
            out=buffer(workspace, "right", shape, scaled),
        )
        # padded to whole chunks for the attention network AttentionPooling
        # shares, so a row's scores are the same bits on either path
        n_pairs = shape[0] * shape[1]
        n_padded = n_pairs + (-n_pairs % PAIR_CHUNK)
        t = W.shape[0]
        padded = buffer(workspace, "products", (n_padded, k), left)
        padded[n_pairs:].zero_()
        products = torch.mul(left, right, out=padded[:n_pairs].view(shape))
        padded_hidden, padded_scores = chunked_attention_network(
            padded, W, b, query, workspace
        )
        scores = padded_scores[:n_pairs].view(shape[:2])
        hidden = padded_hidden.view(-1, t)[:n_pairs].view(*shape[:2], t)
        weights = masked_softmax(scores, pair_mask)
        used = weights if keep is None else weights * keep
        # the sum as AttentionPooling computes it: a row's output is then the
        # same whichever path its batch takes
        pooled = weighted_pair_sum(used, scaled)
        ctx.save_for_backward(
            left,
            right,
            select_left,
            select_right,
            products,
            hidden,
            weights,
            W,
            query,
            keep,
        )
        ctx.workspace = workspace
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        (
            left,
            right,
            select_left,
            select_right,
            products,
            hidden,
            weights,
            W,
            query,
            keep,
        ) = ctx.saved_tensors
        k, t = products.shape[-1], hidden.shape[-1]
        used = weights if keep is None else weights * keep
        grad_used = torch.bmm(products, grad_pooled.unsqueeze(-1)).squeeze(-1)
        grad_weights = grad_used if keep is None else grad_used * keep
        # softmax backward; masked pairs have weight 0 and get no gradient
        grad_scores = weights * (
            grad_weights - (weights * grad_weights).sum(-1, keepdim=True)
        )
        workspace = ctx.workspace
        flat_hidden = hidden.view(-1, t)
        grad_query = (flat_hidden.t() @ grad_scores.reshape(-1)).unsqueeze(-1)
        grad_hidden = torch.mul(
            grad_scores.unsqueeze(-1),
            query.view(1, 1, t),
            out=buffer(workspace, "grad_hidden", hidden.shape, hidden),
        )
        # ReLU backward, in place
        torch.ops.aten.threshold_backward.grad_input(
            grad_hidden, hidden, 0.0, grad_input=grad_hidden
        )
        grad_hidden = grad_hidden.view(-1, t)
        # a column sum as a matrix-vector product: half the time of sum(0)
        grad_b = torch.mv(grad_hidden.t(), grad_hidden.new_ones(len(grad_hidden)))
        grad_W = grad_hidden.t() @ products.view(-1, k)
        grad_products = torch.mul(
            used.unsqueeze(-1),
            grad_pooled.unsqueeze(1),
            out=buffer(workspace, "grad_products", products.shape, products),
        )
        grad_products.view(-1, k).addmm_(grad_hidden, W)
        grad_from_left = torch.mul(
            grad_products,
            right,
            out=buffer(workspace, "grad_from_left", products.shape, products),
        )
        grad_scaled = torch.matmul(select_left.t(), grad_from_left)
        grad_scaled += torch.matmul(select_right.t(), grad_products.mul_(left))
        return (
            grad_scaled,
            None,
            None,
            None,
            grad_W,
            grad_b,
            grad_query,
            None,
            None,
        )
