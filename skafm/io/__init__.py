"""Saving fitted models in a format that loads without running code.

:func:`dump` and :func:`load` store a fitted :class:`~skafm.AFMRegressor` or
:class:`~skafm.AFMClassifier` as tensors and plain values only, read back with
``torch.load(weights_only=True)``: unlike a pickle, loading a file cannot run
code, so files from untrusted sources are safe to open.
"""

from ._weights import dump, load

__all__ = ["dump", "load"]
