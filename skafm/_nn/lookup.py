"""The feature lookup in PyTorch operations: scaled embeddings and linear terms."""

import torch

from .functional import weighted_rows_sum


class FeatureLookup(torch.autograd.Function):
    """The rows' value-scaled embeddings and linear terms, in one autograd node.

    Forward: ``scaled = v[index] * x``, ``linear = sum_i w[index_i] x_i`` per row
    and, on request, each row's ``sum_i r_i (|v_i|^2 + |w_i|^2)`` over its
    entries, ``r_i`` their penalty weights (the lazy L2 penalty). Backward:
    sparse gradients for both tables that share one index tensor, so the
    optimizer groups the batch's rows once for the two. The same values as
    ``F.embedding(..., sparse=True)`` followed by the products, with fewer
    passes and autograd nodes. :class:`.fused.FusedFeatureLookup` is the same
    in one kernel each way.
    """

    @staticmethod
    def forward(ctx, index, value, penalty_weight, embedding, linear, with_penalty):
        flat = index.reshape(-1)
        rows = embedding.index_select(0, flat).view(*index.shape, embedding.shape[1])
        linear_rows = linear.index_select(0, flat).view(*index.shape, linear.shape[1])
        scaled = rows * value.unsqueeze(-1)
        linear_term = weighted_rows_sum(value, linear_rows)
        ctx.with_penalty = with_penalty
        ctx.table_rows = (embedding.shape[0], linear.shape[0])
        if not with_penalty:
            ctx.save_for_backward(flat, value)
            return scaled, linear_term
        weight = penalty_weight.unsqueeze(-1)
        squared_norm = (rows.square() * weight).sum((1, 2)) + (
            linear_rows.square() * weight
        ).sum((1, 2))
        ctx.save_for_backward(flat, value, penalty_weight, rows, linear_rows)
        return scaled, linear_term, squared_norm

    @staticmethod
    def backward(ctx, grad_scaled, grad_linear, grad_norm=None):
        flat, value, *penalty_inputs = ctx.saved_tensors
        grad_rows = grad_scaled * value.unsqueeze(-1)
        grad_linear_rows = value.unsqueeze(-1) * grad_linear.unsqueeze(1)
        if ctx.with_penalty and grad_norm is not None:
            penalty_weight, rows, linear_rows = penalty_inputs
            weight = (2.0 * grad_norm.view(-1, 1) * penalty_weight).unsqueeze(-1)
            grad_rows.addcmul_(rows, weight)
            grad_linear_rows.addcmul_(linear_rows, weight)
        indices = flat.unsqueeze(0)
        n_embedding_rows, n_linear_rows = ctx.table_rows
        grad_embedding = sparse_rows(indices, grad_rows, n_embedding_rows)
        grad_linear_table = sparse_rows(indices, grad_linear_rows, n_linear_rows)
        return None, None, None, grad_embedding, grad_linear_table, None


def sparse_rows(indices, values, n_rows):
    """An uncoalesced sparse gradient of a table from per-entry rows."""
    values = values.reshape(indices.shape[1], values.shape[-1])
    return torch.sparse_coo_tensor(
        indices, values, (n_rows, values.shape[1]), check_invariants=False
    )
