"""A fitted estimator as tensors and plain values, loadable without unpickling code."""

import os
import pickle

import numpy as np
import torch

from .._afm import AFMClassifier, AFMRegressor
from .._nn import AttentionalFactorizationMachine
from .._state import PARAMETERS_BEFORE_THEY_EXISTED, current_versions
from .._training import Trainer

FORMAT = "skafm.io"
FORMAT_VERSION = 1
ESTIMATORS = {cls.__name__: cls for cls in (AFMRegressor, AFMClassifier)}


def dump(estimator, file):
    """Save a fitted estimator as tensors and plain values.

    The file holds the parameters, the fitted attributes, the network's
    weights and the optimizer's state (so that ``warm_start`` and
    ``partial_fit`` continue after :func:`load`), always on the CPU.

    Parameters
    ----------
    estimator : AFMRegressor or AFMClassifier
        A fitted estimator (not a Pipeline: save its steps' other objects with
        their own tools).

    file : str, path-like or binary file object
        Where to write.

    Examples
    --------
    >>> import io
    >>> from skafm import AFMRegressor
    >>> from skafm.datasets import make_interaction_data
    >>> from skafm.io import dump, load
    >>> X, y, _ = make_interaction_data(200, random_state=0)
    >>> model = AFMRegressor(max_iter=3, random_state=0).fit(X, y)
    >>> buffer = io.BytesIO()
    >>> dump(model, buffer)
    >>> _ = buffer.seek(0)
    >>> bool((load(buffer).predict(X) == model.predict(X)).all())
    True
    """
    name = type(estimator).__name__
    if ESTIMATORS.get(name) is not type(estimator):
        raise TypeError(
            f"skafm.io.dump saves AFMRegressor and AFMClassifier, not {name}."
        )
    if not hasattr(estimator, "_trainer"):
        raise ValueError(f"This {name} is not fitted yet; fit it before saving.")
    params = estimator.get_params(deep=False)
    if callable(params["scoring"]):
        raise ValueError(
            "A model whose scoring is a callable cannot be saved as plain values; "
            "set scoring to a string (e.g. model.set_params(scoring='loss')) or "
            "use pickle."
        )
    trainer = estimator._trainer
    fitted = {
        key: value
        for key, value in vars(estimator).items()
        if key not in params and key not in ("_trainer", "module_")
    }
    state = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "versions": {key: str(value) for key, value in current_versions().items()},
        "estimator": name,
        "params": {key: encode(value) for key, value in params.items()},
        "fitted": {key: encode(value) for key, value in fitted.items()},
        "network": network_state(trainer.module),
        # the optimizer's state, the weight average and (for partial_fit
        # with penalty_scope="feature") the feature counts
        **trainer.state(),
    }
    torch.save(state, _path_or_file(file))


def load(file):
    """Load an estimator saved by :func:`dump`.

    Only tensors and plain values are read (``torch.load(weights_only=True)``),
    so a file cannot run code when it is loaded.

    Parameters
    ----------
    file : str, path-like or binary file object
        What :func:`dump` wrote.

    Returns
    -------
    estimator : AFMRegressor or AFMClassifier
        The fitted estimator, on the CPU.
    """
    try:
        state = torch.load(_path_or_file(file), weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            "Not a valid skafm model file: it holds objects other than tensors "
            "and plain values (a pickle is read with pickle.load, from a "
            "source you trust)."
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError | PermissionError):
            raise
        raise ValueError(
            f"Not a valid skafm model file: it cannot be read ({error})."
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            "Not a valid skafm model file: it was not written by skafm.io.dump."
        )
    version = state.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ValueError(
            f"This file has format version {version}; this skafm "
            f"reads up to {FORMAT_VERSION}. Upgrade skafm."
        )
    try:
        return _estimator_from_state(state)
    except InvalidModelFile as error:
        raise ValueError(f"Not a valid skafm model file: {error}") from None
    except (
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        RuntimeError,
        ValueError,
    ) as error:
        raise ValueError(
            f"Not a valid skafm model file: a record is missing or malformed "
            f"({type(error).__name__}: {error})."
        ) from error


class InvalidModelFile(Exception):
    """Why a file read by :func:`load` is not a model :func:`dump` wrote."""


# The fitted attributes dump writes; load restores these names only.
FITTED_ATTRIBUTES = frozenset(
    {
        "_loss",
        "_rng",
        "_target_mean",
        "_target_scale",
        "alpha_",
        "best_loss_",
        "best_phase_",
        "best_validation_score_",
        "classes_",
        "feature_names_in_",
        "loss_curve_",
        "n_features_in_",
        "n_iter_",
        "phases_",
        "t_",
        "validation_scores_",
    }
)


def _estimator_from_state(state):
    if not isinstance(state["format_version"], int):
        raise InvalidModelFile("its format version is missing.")
    cls = ESTIMATORS.get(state["estimator"])
    if cls is None:
        raise InvalidModelFile(f"unknown estimator {state['estimator']!r}.")
    unknown = set(state["fitted"]) - FITTED_ATTRIBUTES
    if unknown:
        raise InvalidModelFile(f"unknown fitted attributes {sorted(unknown)}.")
    check_network_sizes(state["network"])
    params = {**PARAMETERS_BEFORE_THEY_EXISTED, **state["params"]}
    estimator = cls(**{key: decode(value) for key, value in params.items()})
    for key, value in state["fitted"].items():
        setattr(estimator, key, decode(value))
    counts = state.setdefault("feature_counts", None)
    if counts is not None:
        check_dense(counts, "feature_counts")
        if counts.shape != (state["network"]["n_features"],):
            raise InvalidModelFile("the feature counts do not match n_features.")
    if not isinstance(state["optimizers"], list) or len(state["optimizers"]) != 1:
        raise InvalidModelFile("it does not hold one optimizer state.")
    trainer = Trainer.from_state(build_network(state["network"]), state)
    estimator._trainer = trainer
    estimator.module_ = trainer.prediction_module
    if not hasattr(estimator, "alpha_"):
        # written before alpha_ existed: their alpha never moved
        estimator.alpha_ = trainer.config.alpha
    return estimator


def check_dense(tensor, name):
    """Refuse a tensor that claims more elements than its storage holds.

    A stored tensor can be an expanded view (stride 0) of a few bytes that
    would take gigabytes once copied.
    """
    if not isinstance(tensor, torch.Tensor):
        raise InvalidModelFile(f"{name} is not a tensor.")
    needed = tensor.numel() * tensor.element_size()
    if needed > tensor.untyped_storage().nbytes():
        raise InvalidModelFile(
            f"{name} declares {tensor.numel()} elements, more than its stored data."
        )


def check_network_sizes(network):
    """The declared sizes must be the stored tables' shapes, before allocating."""
    sizes = {}
    for name in ("n_features", "n_outputs", "n_factors", "attention_size"):
        value = network[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidModelFile(f"{name} is {value!r}, not a positive integer.")
        sizes[name] = value
    weights = network["weights"]
    for name, tensor in weights.items():
        check_dense(tensor, f"weights[{name!r}]")
    expected = {
        "linear": (sizes["n_features"], sizes["n_outputs"]),
        "embedding": (sizes["n_features"], sizes["n_factors"]),
    }
    for name, shape in expected.items():
        if name not in weights or tuple(weights[name].shape) != shape:
            raise InvalidModelFile(
                f"weights[{name!r}] does not have the declared shape {shape}."
            )


def network_state(module):
    n_features, n_outputs = module.linear.shape
    return {
        "n_features": n_features,
        "n_outputs": n_outputs,
        "n_factors": module.n_factors,
        "attention_size": module.attention_size,
        "attention": module.attention,
        "dropout": module.dropout,
        "attention_dropout": module.attention_dropout,
        "learned_projection": getattr(module, "learned_projection", True),
        "weights": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }


def build_network(state):
    module = AttentionalFactorizationMachine(
        state["n_features"],
        state["n_outputs"],
        state["n_factors"],
        state["attention_size"],
        attention=state["attention"],
        dropout=state["dropout"],
        attention_dropout=state["attention_dropout"],
        generator=torch.Generator(),
        # files written before it existed hold networks whose p was trained
        learned_projection=state.get("learned_projection", True),
    )
    module.load_state_dict(state["weights"])
    return module.eval()


# Values are stored as what torch's weights-only unpickler accepts: tensors,
# str, int, float, bool, None, and lists, tuples and dicts of them. numpy
# arrays and random states are tagged so that they come back as they were.


def encode(value):
    if isinstance(value, np.random.RandomState):
        algorithm, keys, position, has_gauss, gauss = value.get_state()
        return {
            "__random_state__": [
                algorithm,
                torch.from_numpy(keys.astype(np.int64)),
                int(position),
                int(has_gauss),
                float(gauss),
            ]
        }
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "bif":
            return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(value))}
        # strings, objects, unsigned ints: element by element, dtype kept
        return {
            "__array__": [encode(item) for item in value.ravel().tolist()],
            "dtype": value.dtype.str,
            "shape": list(value.shape),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(encode(item) for item in value)
    if value is None or isinstance(value, str | int | float | bool | torch.Tensor):
        return value
    raise TypeError(
        f"skafm.io cannot store a {type(value).__name__}; use pickle for this model."
    )


def decode(value):
    if isinstance(value, dict):
        if "__random_state__" in value:
            algorithm, keys, position, has_gauss, gauss = value["__random_state__"]
            rng = np.random.RandomState()
            rng.set_state(
                (algorithm, keys.numpy().astype(np.uint32), position, has_gauss, gauss)
            )
            return rng
        if "__ndarray__" in value:
            check_dense(value["__ndarray__"], "an array")
            return value["__ndarray__"].numpy().copy()
        if "__array__" in value:
            dtype = np.dtype(value["dtype"])
            items = [decode(item) for item in value["__array__"]]
            array = np.empty(len(items), dtype=dtype)
            array[:] = items
            return array.reshape(value["shape"])
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(decode(item) for item in value)
    return value


def _path_or_file(file):
    return os.fspath(file) if isinstance(file, str | os.PathLike) else file
