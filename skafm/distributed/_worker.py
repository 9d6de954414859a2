"""What one worker of a data-parallel fit runs, whichever engine started it."""

import datetime
import logging
import os
import warnings

import torch

logger = logging.getLogger("skafm")


def join_group(rank, n_workers, host, port, timeout):
    """Join the workers' ``torch.distributed`` group (gloo, over TCP).

    Rank 0 serves the rendezvous store at ``host:port``; the others connect.
    A collective that waits longer than ``timeout`` seconds for a peer fails,
    so a worker that died ends the others' fit instead of hanging it.
    """
    import torch.distributed as dist

    store = dist.TCPStore(
        host,
        port,
        n_workers,
        is_master=rank == 0,
        timeout=datetime.timedelta(seconds=timeout),
    )
    dist.init_process_group(
        "gloo",
        store=store,
        rank=rank,
        world_size=n_workers,
        timeout=datetime.timedelta(seconds=timeout),
    )


def fit_shard(
    estimator,
    X,
    y,
    *,
    sample_weight=None,
    X_val=None,
    y_val=None,
    sample_weight_val=None,
):
    """Fit ``estimator`` on this process's rows, together with its group.

    Call it in every process of an initialised ``torch.distributed`` group
    (started by ``torchrun``, say, followed by
    ``torch.distributed.init_process_group("gloo")``), each with its own
    rows: the processes train one model as :func:`fit_distributed`'s
    workers do, and each returns it fitted. The global order of the rows is
    rank 0's, then rank 1's, and so on; every process needs at least one
    row (and one validation row when ``X_val`` is given).

    Parameters
    ----------
    estimator : AFMRegressor or AFMClassifier
        The same parameters in every process; ``batch_size`` is each
        process's. Fitted in place.
    X : {array-like, sparse matrix} of shape (n_rows_here, n_features)
        This process's rows; ``n_features`` must be the same everywhere.
    y : array-like of shape (n_rows_here,)
    sample_weight : array-like of shape (n_rows_here,), default=None
    X_val, y_val, sample_weight_val : default=None
        This process's part of the validation data.

    Returns
    -------
    estimator : AFMRegressor or AFMClassifier
        Fitted, the same model in every process.
    """
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "fit_shard trains with the processes of a torch.distributed group: "
            "call torch.distributed.init_process_group first (or use "
            "fit_distributed, which starts its own workers)."
        )
    if (X_val is None) != (y_val is None):
        raise ValueError("X_val and y_val are needed together.")
    validation = None if X_val is None else (X_val, y_val, sample_weight_val)
    fit_in_group(estimator, X, y, sample_weight, validation)
    return estimator


def fit_in_group(estimator, X, y, sample_weight, validation):
    """The fit of :func:`fit_shard`; returns the bytes this process sent."""
    import torch.distributed as dist

    from .._collective import Collective

    estimator._validate_params()
    collective = Collective()
    estimator._fit(X, y, sample_weight, validation=validation, collective=collective)
    # every process ends the fit together: none leaves while another still
    # needs it in an exchange
    dist.barrier()
    logger.info(
        "skafm: worker %d of %d put %d bytes into its exchanges",
        collective.rank,
        collective.size,
        collective.bytes_sent,
    )
    return collective.bytes_sent


def train(estimator, part, validation, rank, n_workers, host, port, timeout, threads):
    """Fit ``estimator`` on this worker's ``part`` (one of fit_distributed's workers).

    Parameters
    ----------
    estimator : AFMRegressor or AFMClassifier
        This worker's copy; every worker gets the same.
    part : tuple
        This worker's ``(X, y, sample_weight)``.
    validation : tuple or None
        This worker's ``(X_val, y_val, sample_weight_val)``.
    threads : int
        Torch threads of this worker process.

    Returns
    -------
    result : tuple or None
        On rank 0, the fitted estimator, the warnings the fit gave as
        ``(category, message)`` pairs, and the bytes this worker sent;
        None on the others (their models are the same).
    """
    import torch.distributed as dist

    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    join_group(rank, n_workers, host, port, timeout)
    try:
        if rank != 0:
            estimator.set_params(verbose=0)
        X, y, sample_weight = part
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            bytes_sent = fit_in_group(estimator, X, y, sample_weight, validation)
    finally:
        dist.destroy_process_group()
    if rank != 0:
        return None
    return estimator, [(w.category, str(w.message)) for w in caught], bytes_sent
