"""How many CPU threads torch may use inside an estimator's methods.

torch runs its CPU kernels on an OpenMP thread pool. Its size is read from
the calling thread's OpenMP setting, which is what joblib's worker processes
(through ``OMP_NUM_THREADS``) and :func:`threadpoolctl.threadpool_limits`
already limit, so by default skafm changes nothing. An explicit ``n_threads``
is applied with threadpoolctl to the calling thread only, for the duration of
one method call: ``torch.set_num_threads`` would change a process-wide
setting that the user owns.
"""

import contextlib
import functools

import torch
from threadpoolctl import ThreadpoolController


@functools.cache
def _openmp_controller():
    # built once: scanning the loaded libraries costs far more than the limit
    return ThreadpoolController().select(user_api="openmp")


@contextlib.contextmanager
def thread_limit(n_threads):
    """Let torch use at most ``n_threads`` threads in the body (None: no change).

    Parameters
    ----------
    n_threads : int or None
        The limit, applied to the calling thread's OpenMP pool only.
    """
    if n_threads is None or torch.get_num_threads() <= n_threads:
        yield
        return
    with _openmp_controller().limit(limits=n_threads):
        yield
