"""An estimator's state: kept by failed calls and by pickling, read across versions."""

import contextlib
import warnings

import torch

from .exceptions import InconsistentVersionWarning


def current_versions():
    """Versions of skafm and of the libraries a pickled model depends on."""
    import sklearn

    from . import __version__

    # plain str: torch's version is a str subclass that safe loading refuses
    return {
        "skafm": str(__version__),
        "torch": str(torch.__version__),
        "sklearn": str(sklearn.__version__),
    }


# What a model saved before a parameter was added behaves as.
PARAMETERS_BEFORE_THEY_EXISTED = {"penalty_scope": "sample"}


@contextlib.contextmanager
def unchanged_on_failure(estimator):
    """Restore the estimator's attributes if the body raises.

    ``fit`` builds its fitted state step by step (``validate_data`` alone sets
    ``n_features_in_``); on any error the estimator is put back exactly as it
    was, so a bad call never damages a previously fitted model. Training
    itself always works on a new or copied network (see ``Trainer.continued``)
    and a copy of the random state.
    """
    saved = dict(estimator.__dict__)
    try:
        yield
    except BaseException:
        # one reference swap: a predict in another thread sees the old state
        # or the new one, never an emptied estimator
        estimator.__dict__ = saved
        raise


class StateMixin:
    """Pickling for the estimators: CPU tensors, recorded versions, older models.

    Placed before ``BaseEstimator`` in the bases, whose own ``__getstate__``
    and ``__setstate__`` (scikit-learn's version record) it extends.
    """

    def __getstate__(self):
        # a copy: on Python >= 3.11 object.__getstate__ returns the live
        # __dict__, and pickling must never change the object pickled
        state = dict(super().__getstate__())
        trainer = state.get("_trainer")
        if trainer is not None:
            # pickles hold CPU tensors so they load on machines without a GPU
            cpu_trainer = trainer.to_cpu()
            state["_trainer"] = cpu_trainer
            state["module_"] = cpu_trainer.prediction_module
        state["_skafm_versions"] = current_versions()
        return state

    def __setstate__(self, state):
        saved = state.pop("_skafm_versions", None)
        now = current_versions()
        if saved is not None and saved["skafm"] != now["skafm"]:
            warnings.warn(
                InconsistentVersionWarning(
                    original_versions=saved, current_versions=now
                ),
                stacklevel=2,
            )
        # models pickled before a parameter existed were trained as its
        # old behaviour, which is not always the new default
        for name, value in PARAMETERS_BEFORE_THEY_EXISTED.items():
            state.setdefault(name, value)
        if "_trainer" in state:
            # fitted before alpha_ existed: their alpha never moved
            state.setdefault("alpha_", state["_trainer"].config.alpha)
        super().__setstate__(state)
