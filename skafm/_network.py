"""Where models pickled before ``skafm._nn`` existed find their network class."""

from ._nn.module import AttentionalFactorizationMachine

__all__ = ["AttentionalFactorizationMachine"]
