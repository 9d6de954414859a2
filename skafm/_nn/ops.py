"""The one place that chooses between the fused CPU kernels and PyTorch operations.

Every operation with two implementations is dispatched here, once per call,
by the tensors' device and dtype and by whether the kernels could be built
(:func:`skafm._native.kernels`); nothing else in skafm tests for them:

==========================  =================================  ====================
operation                   fused kernels (``_kernels.cpp``)   PyTorch operations
==========================  =================================  ====================
feature lookup              CPU, float32 or float64            any other device
grouping a training batch   CPU, float32                       anywhere else
attention pooling           CPU, float32 or float64, width>1   grouped or pairwise
dropout                     CPU, float32 or float64            anywhere else
gathering a batch's rows    always on the CPU, when built      when not built
Adam's row updates          CPU parameters                     any other device
an attention model's        CPU, float32 or float64            any other device
prediction
==========================  =================================  ====================

On the CPU an attention model predicts rows of a CSR matrix in one kernel
pass (:func:`attention_prediction`); elsewhere :mod:`.inference` runs it in
PyTorch operations, as it runs the explanations everywhere. A plain FM
predicts with its training forward pass, whose feature lookup is chosen
here like training's.
``SKAFM_NATIVE_KERNELS=0`` turns every fused path off.
"""

import numpy as np
import torch

from .. import _native
from .functional import every_pair, pair_selectors
from .fused import FusedAttentionPooling, FusedDropout, FusedFeatureLookup
from .grouping import group_training_pairs as _group_with_torch
from .grouping import hashed_training_groups
from .lookup import FeatureLookup
from .pooling import AttentionPooling, PairwiseAttentionPooling

FUSED_DTYPES = (torch.float32, torch.float64)


def kernels_for(tensor):
    """The fused kernels if they serve ``tensor`` (a CPU float tensor), else None."""
    if tensor.dtype not in FUSED_DTYPES or tensor.device.type != "cpu":
        return None
    return _native.kernels()


def batch_gathering_kernels():
    """The kernels that gather a batch's rows from the CSR matrix, or None.

    Batches are gathered on the CPU, whatever device trains on them.
    """
    return _native.kernels()


def attention_prediction(module):
    """A function predicting CSR rows with the fused kernel, or None.

    The function takes ``(indptr, indices, data)`` of a range of rows (the
    range's slice of ``indptr``, whose offsets point into the whole
    ``indices`` and ``data``) and returns the raw outputs, shaped
    (n_rows, n_outputs), in the module's dtype. None where the kernel does
    not serve the module (not on the CPU, or the kernels are off).
    """
    kernels = kernels_for(module.embedding)
    if kernels is None:
        return None
    network = (
        module.embedding,
        module.linear,
        module.bias,
        module.attention_weight,
        module.attention_bias,
        module.attention_query,
        module.projection,
    )

    def predict(indptr, indices, data):
        if indptr.dtype != indices.dtype:
            indptr, indices = indptr.astype(np.int64), indices.astype(np.int64)
        return kernels.predict_attention(
            torch.from_numpy(indptr),
            torch.from_numpy(indices),
            torch.from_numpy(data),
            *network,
        )

    return predict


def feature_lookup(index, value, penalty_weight, embedding, linear, with_penalty):
    """Value-scaled embeddings, linear terms and (``with_penalty``) squared norms."""
    kernels = kernels_for(embedding)
    if kernels is not None and value.dtype == embedding.dtype:
        return FusedFeatureLookup.apply(
            index, value, penalty_weight, embedding, linear, with_penalty, kernels
        )
    return FeatureLookup.apply(
        index, value, penalty_weight, embedding, linear, with_penalty
    )


def group_training_pairs(index, value):
    """A training batch's :class:`.grouping.TrainingGroups`, or None."""
    kernels = kernels_for(value)
    if kernels is not None and value.dtype == torch.float32:
        return hashed_training_groups(kernels, index, value)
    return _group_with_torch(index, value)


def attention_pooling(scaled, pair_mask, groups, W, b, query, keep, workspace):
    """``sum_{i<j} a_ij e_i * e_j`` per row: fused, by groups, or pair by pair."""
    # rows of fewer than two entries have no pairs: nothing to fuse
    kernels = kernels_for(scaled) if scaled.shape[1] > 1 else None
    if kernels is not None:
        if groups is None:
            n_rows, width = scaled.shape[:2]
            pairs = every_pair(n_rows, width, scaled.device)
        else:
            pairs = (groups.left, groups.right, groups.inverse, groups.n_groups)
        return FusedAttentionPooling.apply(
            scaled, pair_mask, *pairs, W, b, query, keep, kernels, workspace
        )
    if groups is None:
        select_left, select_right = pair_selectors(
            scaled.shape[1], scaled.device, scaled.dtype
        )
        return PairwiseAttentionPooling.apply(
            scaled, pair_mask, select_left, select_right, W, b, query, keep, workspace
        )
    return AttentionPooling.apply(
        scaled, pair_mask, groups, W, b, query, keep, workspace
    )


def dropout(x, rate, generator):
    """Training-time dropout of ``x`` at ``rate``, its mask drawn from ``generator``."""
    kernels = kernels_for(x)
    if kernels is not None and x.numel() > 0:
        # one draw per row from the generator seeds the kernel's stream:
        # a batch run in parts draws the same seeds as the whole batch
        seeds = torch.randint(1 << 62, (x.shape[0],), generator=generator)
        return FusedDropout.apply(x, rate, seeds, kernels)
    # F.dropout draws from torch's global RNG; an explicit generator keeps
    # training reproducible without touching the user's global state
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= rate
    return x * keep / (1.0 - rate)


def adam_kernels(param):
    """The kernels for Adam's update of ``param``, or None for PyTorch operations."""
    return kernels_for(param)
