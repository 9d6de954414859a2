"""The attentional factorization machine as a torch module.

This module knows nothing of scikit-learn: it maps padded batches of active
features to raw outputs (regression values or logits). Every reduction is a
per-row batched product (``bmm``), so a row's output depends only on the row
and the padded width of its batch, never on the other rows.

For a row with active features i (values x_i, embeddings v_i) the output is::

    y = w_0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i x_i) * (v_j x_j)

where ``*`` is the element-wise product and the attention weights are a
softmax over the row's pairs of ``h^T ReLU(W (v_i x_i * v_j x_j) + b)``
(Xiao et al., IJCAI 2017, eq. 3-5). Without attention every a_ij is 1 and the
model is a factorization machine.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING_INIT_STD = 0.01


class AttentionalFactorizationMachine(nn.Module):
    """Global bias, linear term and attention-pooled pairwise interactions.

    Parameters
    ----------
    n_features : int
        Size of the feature vocabulary.
    n_outputs : int
        1 for regression and binary classification, n_classes otherwise.
    n_factors : int
        Embedding size k.
    attention_size : int
        Hidden size t of the attention network.
    attention : bool
        If False, interactions are sum-pooled: a factorization machine.
    dropout : float
        Dropout rate on the pooled interaction vector during training.
    attention_dropout : float
        Dropout rate on the attention weights during training.
    generator : torch.Generator
        Source of the initial parameter values.
    """

    def __init__(
        self,
        n_features,
        n_outputs,
        n_factors,
        attention_size,
        *,
        attention,
        dropout,
        attention_dropout,
        generator,
    ):
        super().__init__()
        self.n_factors = n_factors
        self.attention_size = attention_size
        self.attention = attention
        self.set_dropout(dropout, attention_dropout)

        self.bias = nn.Parameter(torch.zeros(n_outputs))
        self.linear = nn.Parameter(torch.zeros(n_features, n_outputs))
        self.embedding = nn.Parameter(torch.empty(n_features, n_factors))
        nn.init.normal_(self.embedding, std=EMBEDDING_INIT_STD, generator=generator)
        self.projection = nn.Parameter(torch.ones(n_factors, n_outputs))
        if attention:
            self.attention_weight = nn.Parameter(torch.empty(attention_size, n_factors))
            self.attention_bias = nn.Parameter(torch.zeros(attention_size))
            self.attention_query = nn.Parameter(torch.empty(attention_size, 1))
            nn.init.xavier_normal_(self.attention_weight, generator=generator)
            nn.init.xavier_normal_(self.attention_query, generator=generator)

    @torch.no_grad()
    def start_from_factorization_machine(self, fm, mean_pairs):
        """Continue from a fitted plain FM (the paper's pre-training).

        Bias, linear weights and embeddings are copied. The attention query
        starts at zero, so every pair of a row gets the same weight 1/P, and
        the projection is scaled by the mean number of pairs per row: a row
        with that many pairs starts with exactly the FM's output.
        """
        if not self.attention or fm.attention:
            raise ValueError("expects an attention model and a plain FM")
        self.bias.copy_(fm.bias)
        self.linear.copy_(fm.linear)
        self.embedding.copy_(fm.embedding)
        self.projection.copy_(fm.projection * max(mean_pairs, 1.0))
        self.attention_query.zero_()

    @property
    def floats_per_pair(self):
        """Length of the longest vector computed for each pair of features."""
        return max(self.n_factors, self.attention_size if self.attention else 1)

    def set_dropout(self, dropout, attention_dropout):
        """Dropout rates used in training mode; they hold no learned state."""
        self.dropout = dropout
        self.attention_dropout = attention_dropout

    def sparse_parameters(self):
        """Tables indexed by feature: their gradients are sparse."""
        return [self.linear, self.embedding]

    def dense_parameters(self):
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]

    def forward(self, index, value, mask, generator=None, workspace=None):
        """Raw outputs of shape (n_rows, n_outputs).

        ``workspace``, a :class:`PairWorkspace` owned by the caller, lends the
        large per-pair buffers; a caller must not share one between threads.
        """
        embedded, linear_weights = self._lookup(index)
        return self._output(embedded, linear_weights, value, mask, generator, workspace)

    def forward_with_penalty(self, index, value, mask, generator=None, workspace=None):
        """Raw outputs and each row's squared norm of its active parameters.

        The norm, summed over the row's active features of ``|v_i|^2 + |w_i|^2``,
        is the lazy L2 penalty used in training: only parameters the row
        touches are regularised, so a step costs nothing per unseen feature.
        """
        embedded, linear_weights = self._lookup(index)
        output = self._output(
            embedded, linear_weights, value, mask, generator, workspace
        )
        active = mask.unsqueeze(-1)
        squared_norm = (embedded.square() * active).sum((1, 2)) + (
            linear_weights.square() * active
        ).sum((1, 2))
        return output, squared_norm

    def _lookup(self, index):
        # sparse gradients: a step touches only the rows of the batch's features
        return (
            F.embedding(index, self.embedding, sparse=True),
            F.embedding(index, self.linear, sparse=True),
        )

    def _output(self, embedded, linear_weights, value, mask, generator, workspace):
        scaled = embedded * value.unsqueeze(-1)
        linear = torch.bmm(value.unsqueeze(1), linear_weights).squeeze(1)
        if self.attention:
            pooled = self._attention_pooling(scaled, mask, generator, workspace)
        else:
            pooled = sum_pooling(scaled)
        pooled = self._dropout(pooled, self.dropout, generator)
        return self.bias + linear + per_row_matmul(pooled, self.projection)

    def attention_penalty(self):
        """Squared Frobenius norm of the attention network's weight matrix W."""
        if not self.attention:
            return torch.zeros((), device=self.bias.device)
        return self.attention_weight.square().sum()

    def additive_parts(self, index, value, mask):
        """The terms whose sum is the output, for explaining predictions.

        Returns
        -------
        linear : Tensor of shape (n_rows, n_outputs)
            Linear term of each row (the bias is ``self.bias``).
        weights : Tensor of shape (n_rows, n_pairs)
            Attention weight of each pair (1 for every real pair without
            attention, 0 for padding).
        contributions : Tensor of shape (n_rows, n_pairs, n_outputs)
            Each pair's term ``a_ij p^T (v_i x_i * v_j x_j)`` of the output.
        left, right : Tensor of shape (n_pairs,)
            Positions of each pair's features within the padded row.
        """
        scaled = F.embedding(index, self.embedding) * value.unsqueeze(-1)
        linear_weights = F.embedding(index, self.linear)
        linear = torch.bmm(value.unsqueeze(1), linear_weights).squeeze(1)
        left, right = pair_positions(scaled.shape[1], scaled.device)
        products = scaled[:, left] * scaled[:, right]
        pair_mask = mask[:, left] & mask[:, right]
        if self.attention:
            weights = masked_softmax(self._attention_scores(products), pair_mask)
        else:
            weights = pair_mask.to(products.dtype)
        contributions = weights.unsqueeze(-1) * (products @ self.projection)
        return linear, weights, contributions, left, right

    def _attention_pooling(self, scaled, mask, generator, workspace):
        left, right = pair_positions(scaled.shape[1], scaled.device)
        pair_mask = mask[:, left] & mask[:, right]
        keep = None
        if self.training and self.attention_dropout > 0.0:
            keep = self._dropout(
                torch.ones(pair_mask.shape, device=scaled.device),
                self.attention_dropout,
                generator,
            )
        select_left, select_right = pair_selectors(scaled.shape[1], scaled.device)
        return AttentionPooling.apply(
            scaled,
            pair_mask,
            select_left,
            select_right,
            self.attention_weight,
            self.attention_bias,
            self.attention_query,
            keep,
            workspace,
        )

    def _attention_scores(self, products):
        n_rows = products.shape[0]
        hidden = torch.baddbmm(
            self.attention_bias,
            products,
            self.attention_weight.t().expand(n_rows, -1, -1),
        )
        query = self.attention_query.expand(n_rows, -1, -1)
        return torch.bmm(F.relu(hidden), query).squeeze(-1)

    def _dropout(self, x, rate, generator):
        if not self.training or rate == 0.0:
            return x
        # F.dropout draws from torch's global RNG; an explicit generator keeps
        # training reproducible without touching the user's global state.
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= rate
        return x * keep / (1.0 - rate)


class PairWorkspace:
    """Reusable buffers for the (rows, pairs, k) tensors of training steps.

    Every training step needs about eight tensors of that size. Allocated
    anew, each would get fresh pages from the operating system and pay a page
    fault per 4 KB on first touch, which costs as much as the arithmetic;
    reusing the same buffers step after step avoids that. Only valid while
    forward and backward passes strictly alternate, as in the training loop.
    """

    def __init__(self):
        self._buffers = {}

    def get(self, name, shape, like):
        """A tensor of ``shape`` like ``like`` (dtype, device); contents undefined."""
        numel = math.prod(shape)
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.numel() < numel
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[:numel].view(shape)


def _new(workspace, name, shape, like):
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(name, shape, like)


class AttentionPooling(torch.autograd.Function):
    """Attention-weighted sum of the pairwise products of a batch of rows.

    Equivalent to building the (rows, pairs, k) products, the attention MLP,
    the masked softmax and the weighted sum with plain torch operations, but
    with a hand-written backward that makes far fewer passes over the
    (rows, pairs, k) tensors: two large matrix products for the attention
    network's gradients, in-place accumulation, and a single fused ReLU
    backward. Pairs are gathered with one-hot selector matrices, an exact
    product, and the forward pass uses one small matrix product per row, so
    a row's output does not depend on the other rows of its batch.
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
            out=_new(workspace, "left", shape, scaled),
        )
        right = torch.bmm(
            select_right.expand(n_rows, -1, -1),
            scaled,
            out=_new(workspace, "right", shape, scaled),
        )
        products = torch.mul(left, right, out=_new(workspace, "products", shape, left))
        hidden = torch.baddbmm(
            b,
            products,
            W.t().expand(n_rows, -1, -1),
            out=_new(workspace, "hidden", (*shape[:2], W.shape[0]), products),
        ).relu_()
        scores = torch.bmm(hidden, query.expand(n_rows, -1, -1)).squeeze(-1)
        weights = masked_softmax(scores, pair_mask)
        used = weights if keep is None else weights * keep
        pooled = torch.bmm(used.unsqueeze(1), products).squeeze(1)
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
            out=_new(workspace, "grad_hidden", hidden.shape, hidden),
        )
        # ReLU backward, in place
        torch.ops.aten.threshold_backward.grad_input(
            grad_hidden, hidden, 0.0, grad_input=grad_hidden
        )
        grad_hidden = grad_hidden.view(-1, t)
        grad_b = grad_hidden.sum(0)
        grad_W = grad_hidden.t() @ products.view(-1, k)
        grad_products = torch.mul(
            used.unsqueeze(-1),
            grad_pooled.unsqueeze(1),
            out=_new(workspace, "grad_products", products.shape, products),
        )
        grad_products.view(-1, k).addmm_(grad_hidden, W)
        grad_from_left = torch.mul(
            grad_products,
            right,
            out=_new(workspace, "grad_from_left", products.shape, products),
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


def per_row_matmul(x, weight):
    """``x @ weight`` for x of shape (n_rows, k), computed as one product per row.

    One big matrix product picks its kernel from the number of rows, and the
    kernels round differently; per-row products make every row's result
    independent of the batch it is computed in.
    """
    n_rows = x.shape[0]
    return torch.bmm(x.unsqueeze(1), weight.expand(n_rows, -1, -1)).squeeze(1)


def sum_pooling(scaled):
    """Sum over pairs i<j of the element-wise products, in O(width) time.

    Uses ``sum_{i<j} e_i * e_j = ((sum_i e_i)^2 - sum_i e_i^2) / 2``; padded
    entries are zero vectors and drop out of both sums.
    """
    total = scaled.sum(1)
    return 0.5 * (total.square() - scaled.square().sum(1))


def masked_softmax(scores, mask):
    """Softmax over the last axis restricted to ``mask``; all-masked rows give 0.

    A row with fewer than two active features has no pairs: its weights are
    all zero instead of the NaN a plain ``-inf`` fill would produce.
    """
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, lowest), dim=-1)
    return weights * mask


@functools.lru_cache(maxsize=256)
def pair_selectors(width, device):
    """One-hot (n_pairs, width) matrices selecting each pair's two features."""
    left, right = pair_positions(width, device)
    with torch.inference_mode(False):
        eye = torch.eye(width, device=device)
        return eye[left].contiguous(), eye[right].contiguous()


@functools.lru_cache(maxsize=256)
def pair_positions(width, device):
    """Positions (left, right) of all pairs left < right in a row of ``width``."""
    # cached tensors outlive the call: inference-mode tensors would poison
    # later training steps, so they are always built as normal tensors
    with torch.inference_mode(False):
        left, right = torch.triu_indices(width, width, offset=1, device=device)
    return left, right
