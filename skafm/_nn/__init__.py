"""The network: module -> operations -> (fused kernels | PyTorch operations).

``module`` holds the ``nn.Module``; ``ops`` is the one place that chooses,
operation by operation, between the autograd Functions of ``fused`` (on the
kernels of ``skafm/_kernels.cpp``) and those of ``lookup`` and ``pooling``
(PyTorch operations); ``functional`` has the pair arithmetic they share,
``grouping`` the grouping of identical pairs, ``workspace`` the reused
buffers, and ``inference`` prediction and explanations. See the
contributors' architecture page in the documentation.
"""

from .module import AttentionalFactorizationMachine

__all__ = ["AttentionalFactorizationMachine"]
