"""Autograd Functions on the fused CPU kernels of ``_kernels.cpp``.

Each computes what a PyTorch-operations counterpart computes (the lookup of
:mod:`.lookup`, the pooling of :mod:`.pooling`, dropout), in one or two
passes where PyTorch operations make several; tests run both on the same
inputs. They take the loaded kernels as an argument: which Function runs is
decided in :mod:`.ops` alone.
"""

import torch

from .functional import chunked_hidden_layer
from .lookup import sparse_rows
from .workspace import buffer


class FusedFeatureLookup(torch.autograd.Function):
    """:class:`.lookup.FeatureLookup` in one kernel forward and one backward."""

    @staticmethod
    def forward(
        ctx, index, value, penalty_weight, embedding, linear, with_penalty, kernels
    ):
        index, value = index.contiguous(), value.contiguous()
        penalty_weight = (
            penalty_weight.to(value.dtype).contiguous() if with_penalty else None
        )
        scaled, linear_term, squared_norm = kernels.feature_lookup(
            index, value, penalty_weight, embedding, linear, with_penalty
        )
        ctx.with_penalty, ctx.kernels = with_penalty, kernels
        # the tables are saved, not their rows: the backward pass reads the
        # rows again for the penalty's gradient
        ctx.save_for_backward(index, value, penalty_weight, embedding, linear)
        if with_penalty:
            return scaled, linear_term, squared_norm
        return scaled, linear_term

    @staticmethod
    def backward(ctx, grad_scaled, grad_linear, grad_norm=None):
        index, value, penalty_weight, embedding, linear = ctx.saved_tensors
        if not ctx.with_penalty:
            grad_norm = None
        grad_rows, grad_linear_rows = ctx.kernels.feature_lookup_backward(
            index,
            value,
            penalty_weight,
            embedding,
            linear,
            grad_scaled.contiguous(),
            grad_linear.contiguous(),
            None if grad_norm is None else grad_norm.contiguous(),
        )
        indices = index.view(1, -1)
        grad_embedding = sparse_rows(indices, grad_rows, embedding.shape[0])
        grad_linear_table = sparse_rows(indices, grad_linear_rows, linear.shape[0])
        return None, None, None, grad_embedding, grad_linear_table, None, None


class FusedDropout(torch.autograd.Function):
    """Dropout in one fused kernel, its mask drawn from a counter-based stream.

    Element c of row r is kept or dropped by a hash of (``seeds[r]``, c)
    alone: the backward pass applies the same mask by calling the kernel
    again on the gradient, so no mask is stored. Six PyTorch operations
    forward and backward become two kernel calls and one draw per row from
    the generator (0.2 -> 0.03 ms on a 512 x 64 batch, most of it PyTorch's
    sequential generator drawing every element).
    """

    @staticmethod
    def forward(ctx, x, rate, seeds, kernels):
        ctx.rate, ctx.kernels = rate, kernels
        ctx.save_for_backward(seeds)
        return kernels.dropout(x, rate, seeds)

    @staticmethod
    def backward(ctx, grad):
        (seeds,) = ctx.saved_tensors
        return ctx.kernels.dropout(grad, ctx.rate, seeds), None, None, None


class FusedAttentionPooling(torch.autograd.Function):
    """:class:`AttentionPooling` in the fused CPU kernels of ``_kernels.cpp``.

    The same computation as :class:`AttentionPooling` (with groups) and
    :class:`PairwiseAttentionPooling` (every pair its own group, ``inverse``
    None), with the attention network's matrix products in PyTorch and
    everything around them in six kernels: the pairs' products, the ReLU
    with the scores, the softmax with the weighted sum, its backward, the
    hidden units' gradient with the bias's and the query's, and the scatter
    of the pairs' gradients to their entries. Each makes one pass where
    PyTorch operations make several (Frappe, 512-row batches: the pooling's
    forward and backward 3.2 -> 1.9 ms per step). A row's result depends on
    the row alone, as on the other paths, and on neither the batch nor the
    number of threads.

    ``left`` and ``right`` are the flat positions of each group's two
    entries (both in one row), padded to whole ``PAIR_CHUNK`` chunks;
    ``inverse`` maps each pair occurrence, row after row, to its group.
    """

    @staticmethod
    def forward(
        ctx,
        scaled,
        pair_mask,
        left,
        right,
        inverse,
        n_groups,
        W,
        b,
        query,
        keep,
        kernels,
        workspace=None,
    ):
        scaled = scaled.contiguous()
        n_rows, width, k = scaled.shape
        products = buffer(workspace, "products", (len(left), k), scaled)
        kernels.pair_products(scaled.view(-1, k), left, right, products)
        hidden = chunked_hidden_layer(products, W, b, workspace)
        group_scores = kernels.relu_scores(hidden.view(-1, W.shape[0]), query)
        weights = scaled.new_empty(n_rows * (width * (width - 1) // 2))
        pooled = kernels.pool_forward(
            scaled, group_scores, inverse, pair_mask, keep, weights
        )
        ctx.save_for_backward(
            scaled, weights, keep, products, hidden, W, query, left, right, inverse
        )
        ctx.n_groups, ctx.kernels, ctx.workspace = n_groups, kernels, workspace
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled):
        (scaled, weights, keep, products, hidden, W, query, left, right, inverse) = (
            ctx.saved_tensors
        )
        kernels, workspace = ctx.kernels, ctx.workspace
        n_rows, width, k = scaled.shape
        t = W.shape[0]
        grad_scaled = torch.empty_like(scaled)
        grad_scores = torch.empty_like(weights)
        kernels.pool_backward(
            scaled, weights, keep, grad_pooled.contiguous(), grad_scaled, grad_scores
        )
        flat_hidden = hidden.view(-1, t)
        grad_groups = scaled.new_empty(len(flat_hidden))
        grad_hidden = buffer(workspace, "grad_hidden", flat_hidden.shape, flat_hidden)
        grad_b, grad_query = kernels.hidden_grad(
            grad_scores, inverse, flat_hidden, query, grad_groups, grad_hidden
        )
        grad_query = grad_query.view(query.shape)
        grad_W = grad_hidden.t() @ products
        grads = [None] * 12
        grads[6:9] = grad_W, grad_b, grad_query
        if ctx.needs_input_grad[0]:
            grad_products = torch.mm(
                grad_hidden,
                W,
                out=buffer(workspace, "grad_products", products.shape, products),
            )
            kernels.scatter_pair_grads(
                scaled.view(-1, k),
                grad_products,
                left,
                right,
                ctx.n_groups,
                width,
                grad_scaled.view(-1, k),
            )
            grads[0] = grad_scaled
        return tuple(grads)
