"""Data generators for trying and testing skafm."""

from ._generate import make_interaction_data

__all__ = ["make_interaction_data"]
