"""Buffers lent to the per-pair tensors of training steps."""

import math

import torch


class PairWorkspace:
    """Reusable buffers for the per-pair tensors of training steps.

    Every training step needs several (pairs, k) and (pairs, t) tensors of a
    few MB. Allocated anew, each would get fresh pages from the operating
    system and pay a page fault per 4 KB on first touch, which costs as much
    as the arithmetic; reusing the same buffers step after step avoids that.
    Only valid while forward and backward passes strictly alternate, as in
    the training loop.
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


def buffer(workspace, name, shape, like):
    """A tensor of ``shape`` like ``like``, from ``workspace`` when there is one."""
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.get(name, shape, like)
