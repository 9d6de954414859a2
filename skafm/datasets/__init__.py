"""Data for examples, tests and out-of-core training."""

from ._generate import make_interaction_data
from ._svmlight import iter_svmlight_chunks

__all__ = ["iter_svmlight_chunks", "make_interaction_data"]
