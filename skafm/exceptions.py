"""Warnings and errors raised by skafm."""


class KernelBuildWarning(UserWarning):
    """skafm's CPU training kernels could not be compiled, or were not used.

    Training then runs the same computation in PyTorch operations: the same
    results to within float rounding, more slowly. Set the environment
    variable ``SKAFM_NATIVE_KERNELS=0`` to skip the build (and the warning).
    """


class TrainingDivergedError(ValueError):
    """The training objective became NaN or infinite, or grew by orders of magnitude."""


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
