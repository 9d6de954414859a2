"""Warnings and errors raised by skafm."""

from ._native import KernelBuildWarning
from ._training import TrainingDivergedError


class InconsistentVersionWarning(UserWarning):
    """A model is unpickled under another skafm version than it was saved with.

    Parameters
    ----------
    original_versions : dict
        The skafm, torch and scikit-learn versions the model was pickled with;
        kept as an attribute of the same name.

    current_versions : dict
        The versions running now; kept as an attribute of the same name.
    """

    def __init__(self, *, original_versions, current_versions):
        self.original_versions = original_versions
        self.current_versions = current_versions

    def __str__(self):
        return (
            f"This model was pickled with skafm {self.original_versions['skafm']} "
            f"and is loaded with skafm {self.current_versions['skafm']}. It may not "
            "work or may give other results; refit it or load it under the original "
            f"version (saved with {self.original_versions})."
        )


__all__ = ["InconsistentVersionWarning", "KernelBuildWarning", "TrainingDivergedError"]
