"""The attentional factorization machine as a torch module.

This module knows nothing of scikit-learn: it maps padded batches of active
features to raw outputs (regression values or logits). For a row with active
features i (values x_i, embeddings v_i) the output is::

    y = w_0 + sum_i w_i x_i + p^T sum_{i<j} a_ij (v_i x_i) * (v_j x_j)

where ``*`` is the element-wise product and the attention weights are a
softmax over the row's pairs of ``h^T ReLU(W (v_i x_i * v_j x_j) + b)``
(Xiao et al., IJCAI 2017, eq. 3-5). Without attention every a_ij is 1 and the
model is a factorization machine.

``forward`` is the training computation (dropout in training mode, autograd
through every path); prediction and explanations, which need neither, are
:func:`.inference.predicted_output` and :func:`.inference.additive_parts`.
"""

import torch
from torch import nn

from . import ops
from .functional import padded_pairs_mask, per_row_matmul, sum_pooling

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
    learned_projection : bool
        Whether the projection p is trained. A one-output FM's
        ``sum_f p_f <v_i, v_j>_f`` gains nothing from it but a way out of
        the L2 penalty: ``v -> s v, p -> p / s^2`` predicts the same with a
        penalty ``s^2`` times smaller. Fixed at 1 it is the textbook FM.
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
        learned_projection=True,
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
        self.learned_projection = learned_projection
        if not learned_projection:
            self.projection.requires_grad_(False)
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
        """Every other parameter: the bias, the projection and the attention network."""
        tables = self.sparse_parameters()
        return [p for p in self.parameters() if all(p is not t for t in tables)]

    def optimized_parameters(self):
        """Every parameter, the tables first: the order saved optimizer states use."""
        return self.sparse_parameters() + self.dense_parameters()

    def forward(self, index, value, mask, generator=None, workspace=None):
        """Raw outputs of shape (n_rows, n_outputs), as training computes them.

        ``workspace``, a :class:`.workspace.PairWorkspace` owned by the
        caller, lends the large per-pair buffers; a caller must not share one
        between threads.
        """
        scaled, linear = ops.feature_lookup(
            index, value, mask, self.embedding, self.linear, False
        )
        return self._output(scaled, linear, mask, generator, workspace, index, value)

    def forward_with_penalty(
        self, index, value, mask, generator=None, workspace=None, penalty_weight=None
    ):
        """Raw outputs and each row's weighted squared norm of its parameters.

        The norm, summed over the row's active features of
        ``r_i (|v_i|^2 + |w_i|^2)``, is the lazy L2 penalty used in training:
        only parameters the row touches are regularised, so a step costs
        nothing per unseen feature. ``penalty_weight`` holds each entry's
        ``r_i`` (shaped like ``index``, 0 for padding); None weighs every
        active entry 1.
        """
        if penalty_weight is None:
            penalty_weight = mask.to(value.dtype)
        scaled, linear, squared_norm = ops.feature_lookup(
            index, value, penalty_weight, self.embedding, self.linear, True
        )
        output = self._output(scaled, linear, mask, generator, workspace, index, value)
        return output, squared_norm

    @property
    def floats_per_pair_at_inference(self):
        """Floats kept per pair of features when predicting without gradients.

        The attention path keeps a score and one term per output for each
        pair (its per-pair vectors live in fixed-size slices). An FM keeps
        nothing per pair; counting 1 still bounds its chunks.
        """
        return self.n_outputs + 1 if self.attention else 1

    @property
    def n_outputs(self):
        """1 for regression and binary classification, n_classes otherwise."""
        return self.bias.shape[0]

    def _output(self, scaled, linear, mask, generator, workspace, index, value):
        if self.attention:
            groups = ops.group_training_pairs(index, value)
            pooled = self._attention_pooling(scaled, mask, groups, generator, workspace)
        else:
            pooled = sum_pooling(scaled)
        pooled = self._dropout(pooled, self.dropout, generator)
        return self.bias + linear + per_row_matmul(pooled, self.projection)

    def attention_penalty(self):
        """Squared Frobenius norm of the attention network's weight matrix W."""
        if not self.attention:
            return torch.zeros((), device=self.bias.device)
        return self.attention_weight.square().sum()

    def _attention_pooling(self, scaled, mask, groups, generator, workspace):
        keep = None
        if self.training and self.attention_dropout > 0.0:
            n_rows, width = mask.shape
            keep = self._dropout(
                torch.ones(n_rows, width * (width - 1) // 2, device=scaled.device),
                self.attention_dropout,
                generator,
            )
        return ops.attention_pooling(
            scaled,
            padded_pairs_mask(mask),
            groups,
            self.attention_weight,
            self.attention_bias,
            self.attention_query,
            keep,
            workspace,
        )

    def _dropout(self, x, rate, generator):
        if not self.training or rate == 0.0:
            return x
        return ops.dropout(x, rate, generator)
