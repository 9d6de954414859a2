"""Starting the workers of a data-parallel fit: local processes, Ray or Dask.

Each backend runs :func:`._worker.train` once per worker, all at the same
time, and returns rank 0's result. When a worker raises or dies, the others
are stopped and the error is raised here, within the group's timeout at most.
"""

import multiprocessing
import pickle
import queue
import signal
import socket
import time
import traceback

from . import _worker


class WorkerError(RuntimeError):
    """A worker of a data-parallel fit failed; the message holds its traceback."""


def free_port(host="127.0.0.1"):
    """A TCP port nobody listens on at ``host`` now (for rank 0's store)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# -- local processes -----------------------------------------------------------


def _process_main(results, rank, args):
    # the parent handles Ctrl-C: it stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # pickled here with the standard pickler: torch's reductions for queues
    # would share tensors through file descriptors of a process that exits
    try:
        results.put(("done", rank, pickle.dumps(_worker.train(*args))))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        try:
            payload = pickle.dumps((error, traceback.format_exc()))
        except Exception:  # the error itself does not pickle
            payload = pickle.dumps((None, traceback.format_exc()))
        results.put(("error", rank, payload))


def run_processes(tasks):
    """Run ``tasks`` (one argument tuple of ``train`` per rank) in processes."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_process_main, args=(results, rank, args), daemon=True)
        for rank, args in enumerate(tasks)
    ]
    for process in processes:
        process.start()
    done, outcome = set(), None
    try:
        while len(done) < len(processes):
            try:
                kind, rank, payload = results.get(timeout=0.2)
            except queue.Empty:
                for rank, process in enumerate(processes):
                    if rank not in done and process.exitcode is not None:
                        # let a message it put just before exiting arrive
                        time.sleep(0.5)
                        if results.empty():
                            raise WorkerError(
                                f"Worker {rank} of {len(processes)} died with exit "
                                f"code {process.exitcode} during the fit."
                            ) from None
                continue
            payload = pickle.loads(payload)
            if kind == "error":
                if is_peer_failure(payload[0]):
                    # the cause is another worker's: wait for its report
                    find_first_cause(results, processes, done | {rank})
                raise_worker_error(rank, len(processes), *payload)
            done.add(rank)
            if rank == 0:
                outcome = payload
        # the workers are done: let them exit (and flush what they printed)
        for process in processes:
            process.join(timeout=10)
    finally:
        stop(processes)
    return outcome


# what gloo raises in a worker whose peer failed or left the group
PEER_FAILURE_MARKS = ("Connection reset", "Connection closed", "pair.cc", "imed out")
CAUSE_GRACE_SECONDS = 3.0


def is_peer_failure(error):
    return isinstance(error, RuntimeError) and any(
        mark in str(error) for mark in PEER_FAILURE_MARKS
    )


def find_first_cause(results, processes, reported):
    """Raise the error of the worker that failed first, if it shows in time.

    A worker that raises leaves the group, and its peers then fail in their
    next exchange; their reports can arrive first.
    """
    deadline = time.monotonic() + CAUSE_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            kind, rank, payload = results.get(timeout=0.1)
        except queue.Empty:
            for rank, process in enumerate(processes):
                if rank not in reported and process.exitcode not in (None, 0):
                    raise WorkerError(
                        f"Worker {rank} of {len(processes)} died with exit code "
                        f"{process.exitcode} during the fit."
                    ) from None
            continue
        reported.add(rank)
        if kind == "error":
            error, formatted = pickle.loads(payload)
            if not is_peer_failure(error):
                raise_worker_error(rank, len(processes), error, formatted)


def stop(processes):
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join()


def raise_worker_error(rank, n_workers, error, formatted):
    """Raise a worker's error in the caller, with the worker's traceback."""
    context = WorkerError(f"Worker {rank} of {n_workers} failed:\n{formatted}")
    if isinstance(error, Exception):
        raise error from context
    raise context


# -- Ray -------------------------------------------------------------------------


def run_ray(tasks, address_of_rank0):
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)

    @ray.remote(num_cpus=0)
    class Worker:
        def host(self):
            return ray.util.get_node_ip_address()

        def port(self):
            return free_port(ray.util.get_node_ip_address())

        def train(self, *args):
            return _worker.train(*args)

    workers = [Worker.options(num_cpus=args[-1]).remote() for args in tasks]
    try:
        host = ray.get(workers[0].host.remote())
        port = ray.get(workers[0].port.remote())
        futures = [
            worker.train.remote(*address_of_rank0(args, host, port))
            for worker, args in zip(workers, tasks, strict=True)
        ]

        def failure(future):
            """None, or (peer failure?, a callable raising the worker's error)."""
            rank = futures.index(future)
            try:
                ray.get(future)
            except ray.exceptions.RayTaskError as error:
                cause, text = error.as_instanceof_cause(), str(error)
                return is_peer_failure(cause), lambda: raise_worker_error(
                    rank, len(tasks), cause, text
                )
            except ray.exceptions.RayActorError as error:
                message = f"Worker {rank} of {len(tasks)} died during the fit: {error}"

                def died():
                    raise WorkerError(message) from None

                return False, died
            return None

        pending = list(futures)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            found = failure(finished[0])
            if found is None:
                continue
            if found[0] and pending:
                # the cause is another worker's: wait for its report
                later, _ = ray.wait(
                    pending, num_returns=len(pending), timeout=CAUSE_GRACE_SECONDS
                )
                causes = [failure(future) for future in later]
                found = next((c for c in causes if c and not c[0]), found)
            found[1]()
        return ray.get(futures[0])
    finally:
        for worker in workers:
            ray.kill(worker)


# -- Dask --------------------------------------------------------------------------


def run_dask(tasks, address_of_rank0, client):
    from distributed import wait

    workers = list(client.scheduler_info(n_workers=-1)["workers"])
    if len(workers) < len(tasks):
        raise ValueError(
            f"n_workers={len(tasks)} needs as many Dask workers, the cluster has "
            f"{len(workers)}: every worker of the fit runs at the same time."
        )
    workers = workers[: len(tasks)]
    host = workers[0].split("://")[-1].rsplit(":", 1)[0]
    port = client.submit(free_port, host, workers=[workers[0]], pure=False).result()
    # a part held as a delayed object (blocks of a dask array) is computed
    # on the cluster; its blocks move between workers, never to the client
    tasks = [
        (args[0], client.compute(args[1]), *args[2:])
        if hasattr(args[1], "__dask_graph__")
        else args
        for args in tasks
    ]
    futures = [
        client.submit(
            _worker.train,
            *address_of_rank0(args, host, port),
            workers=[worker],
            allow_other_workers=False,
            pure=False,
        )
        for worker, args in zip(workers, tasks, strict=True)
    ]
    try:
        pending = list(futures)
        while pending:
            finished, pending = wait(pending, return_when="FIRST_COMPLETED")
            pending = list(pending)
            for future in finished:
                if future.status == "error":
                    rank = futures.index(future)
                    error = future.exception()
                    raise_worker_error(
                        rank,
                        len(tasks),
                        error,
                        "".join(traceback.format_tb(future.traceback())) + repr(error),
                    )
        return futures[0].result()
    finally:
        client.cancel(futures)
