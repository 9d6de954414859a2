"""``fit_distributed``: one model trained by several workers at once."""

import copy
import logging
import warnings

import numpy as np
import scipy.sparse as sp
from sklearn.utils import _safe_indexing
from sklearn.utils.validation import _num_samples

from . import _backends

BACKENDS = ("processes", "ray", "dask")

logger = logging.getLogger("skafm")


def fit_distributed(
    estimator,
    X,
    y,
    *,
    n_workers,
    backend="processes",
    client=None,
    threads_per_worker=1,
    timeout=300.0,
    sample_weight=None,
    X_val=None,
    y_val=None,
    sample_weight_val=None,
):
    """Fit an AFM estimator with several workers training one model together.

    Synchronous data-parallel training on ``torch.distributed`` (gloo, over
    TCP): the rows are split into ``n_workers`` contiguous parts, every
    worker holds the whole model and trains on its part, and each step's
    gradients are summed over the workers before every worker takes the
    same optimizer step, so that the models stay identical. The tables'
    gradients are sparse: only the rows a step touched are exchanged. Data
    set figures (the target's scale, the classes, feature counts, mean
    weight, validation losses) are reduced over all workers, so early
    stopping, weight averaging, sample weights and FM pre-training decide as
    in a local fit.

    The estimator's ``batch_size`` is each worker's: a step of ``n_workers``
    workers trains on ``n_workers * batch_size`` rows. With dropout off, the
    model equals (up to float rounding) a local fit with that batch size
    and the same ``random_state``, given the same validation data. When early
    stopping sets its validation part aside itself, each worker draws a
    ``validation_fraction`` of its own rows, which is a different split from
    a local fit's.

    Parameters
    ----------
    estimator : AFMRegressor or AFMClassifier
        Its parameters define the fit; it is fitted in place (and returned),
        as ``estimator.fit`` would be. A failed fit leaves it as it was.
    X : {array-like, sparse matrix, DataFrame, dask array} of shape \
            (n_samples, n_features)
        Training data. With ``backend="dask"``, a dask array of sparse or
        dense row blocks stays on the cluster: each worker reads its blocks
        where they are, and nothing is gathered on the client.
    y : array-like or dask array of shape (n_samples,)
    n_workers : int
        Workers training together; each needs at least one row of ``X``
        (and of ``X_val``).
    backend : {"processes", "ray", "dask"}, default="processes"
        "processes": worker processes started on this machine; "ray": Ray
        actors (``ray.init`` is called when Ray is not initialised);
        "dask": tasks on the workers of a ``dask.distributed`` ``client``,
        one worker each.
    client : distributed.Client, default=None
        The Dask client, for ``backend="dask"``.
    threads_per_worker : int, default=1
        Torch threads of each worker.
    timeout : float, default=300
        Seconds a worker waits for the others in one exchange before the fit
        fails: a worker that died or hangs ends the fit with an error after
        this long at most (a worker that raises ends it at once).
    sample_weight : array-like of shape (n_samples,), default=None
    X_val, y_val, sample_weight_val : default=None
        Validation data for early stopping, split among the workers as
        ``X`` is; the validation loss is summed over all of them.

    Returns
    -------
    estimator : AFMRegressor or AFMClassifier
        The estimator, fitted: a normal skafm estimator (predict, pickle,
        explain, ``skafm.io``).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}.")
    if not (isinstance(n_workers, (int, np.integer)) and n_workers >= 1):
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}.")
    if backend == "dask" and client is None:
        raise ValueError('backend="dask" needs the Dask client: pass client=.')
    if not hasattr(estimator, "_fit_unguarded"):
        raise TypeError(
            "fit_distributed fits an AFMRegressor or AFMClassifier, got "
            f"{type(estimator).__name__}."
        )
    estimator._validate_params()
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val are needed together.")

    parts = split_rows(X, y, sample_weight, n_workers, "X")
    validations = (
        split_rows(X_val, y_val, sample_weight_val, n_workers, "X_val")
        if X_val is not None
        else [None] * n_workers
    )
    # every worker starts from the same copy (a fitted one continues with
    # warm_start); the caller's estimator changes only if the fit succeeds
    worker_estimator = copy.deepcopy(estimator)
    host = "127.0.0.1"
    port = _backends.free_port(host) if backend == "processes" else 0
    tasks = [
        (
            worker_estimator,
            part,
            validation,
            rank,
            n_workers,
            host,
            port,
            timeout,
            threads_per_worker,
        )
        for rank, (part, validation) in enumerate(zip(parts, validations, strict=True))
    ]
    if backend == "processes":
        result = _backends.run_processes(tasks)
    elif backend == "ray":
        result = _backends.run_ray(tasks, _with_address)
    else:
        result = _backends.run_dask(tasks, _with_address, client)
    fitted, found_warnings, bytes_sent = result
    for category, message in found_warnings:
        warnings.warn(message, category, stacklevel=2)
    logger.info(
        "skafm: fit_distributed with %d workers: worker 0 put %d bytes into "
        "its exchanges",
        n_workers,
        bytes_sent,
    )
    estimator.__dict__.update(fitted.__dict__)
    return estimator


def _with_address(args, host, port):
    args = list(args)
    args[5], args[6] = host, port
    return tuple(args)


def split_rows(X, y, sample_weight, n_workers, name):
    """``n_workers`` contiguous parts ``(X, y, sample_weight)`` of the rows."""
    if _is_dask_collection(X):
        return _dask_parts(X, y, sample_weight, n_workers, name)
    if sp.issparse(X) and X.format not in ("csr", "csc"):
        X = X.tocsr()
    n_samples = _num_samples(X)
    if _num_samples(y) != n_samples:
        raise ValueError(
            f"{name} has {n_samples} rows and its target {_num_samples(y)}."
        )
    if n_samples < n_workers:
        raise ValueError(
            f"{name} has {n_samples} rows, fewer than n_workers={n_workers}: "
            "every worker needs at least one."
        )
    bounds = np.linspace(0, n_samples, n_workers + 1).astype(int)
    y = np.asarray(y)
    weight = None if sample_weight is None else np.asarray(sample_weight)
    return [
        (
            _safe_indexing(X, slice(start, stop)),
            y[start:stop],
            None if weight is None else weight[start:stop],
        )
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _is_dask_collection(X):
    return hasattr(X, "__dask_graph__")


def _dask_parts(X, y, sample_weight, n_workers, name):
    """Row blocks of dask arrays, grouped into contiguous parts (still lazy).

    Each part is a delayed ``(X, y, sample_weight)`` that the worker's task
    computes where the blocks are.
    """
    import dask

    if X.ndim != 2 or len(X.chunks[1]) != 1:
        raise ValueError(
            f"{name} must be a dask array chunked by rows only (one block of "
            "columns), e.g. X.rechunk({1: -1})."
        )
    row_chunks = X.chunks[0]
    if any(np.isnan(row_chunks)):
        raise ValueError(
            f"{name}'s row blocks have unknown sizes; call "
            f"{name}.compute_chunk_sizes() first."
        )
    if len(row_chunks) < n_workers:
        raise ValueError(
            f"{name} has {len(row_chunks)} row blocks, fewer than "
            f"n_workers={n_workers}: every worker needs at least one block."
        )
    y = y.rechunk((row_chunks,)) if hasattr(y, "rechunk") else None
    if y is None:
        raise ValueError(f"The target of a dask array {name} must be a dask array.")
    weight = None
    if sample_weight is not None:
        weight = sample_weight.rechunk((row_chunks,))
    # blocks to workers by cumulative rows: contiguous, about equal in rows
    ends = np.cumsum(row_chunks)
    owner = np.minimum(
        (n_workers * (ends - np.asarray(row_chunks) / 2) / ends[-1]).astype(int),
        n_workers - 1,
    )
    x_blocks = X.to_delayed().ravel()
    y_blocks = y.to_delayed().ravel()
    w_blocks = None if weight is None else weight.to_delayed().ravel()
    parts = []
    for rank in range(n_workers):
        mine = np.flatnonzero(owner == rank)
        if len(mine) == 0:
            raise ValueError(
                f"{name}'s row blocks are too uneven to give each of "
                f"n_workers={n_workers} workers one: rechunk it."
            )
        parts.append(
            dask.delayed(_join_blocks)(
                [x_blocks[i] for i in mine],
                [y_blocks[i] for i in mine],
                None if w_blocks is None else [w_blocks[i] for i in mine],
            )
        )
    return parts


def _join_blocks(x_blocks, y_blocks, w_blocks):
    if sp.issparse(x_blocks[0]):
        X = sp.vstack(x_blocks, format="csr")
    else:
        X = np.concatenate([np.asarray(block) for block in x_blocks])
    weight = None if w_blocks is None else np.concatenate(w_blocks)
    return X, np.concatenate(y_blocks), weight
