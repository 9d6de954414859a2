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
import math
import os
import threading
import time

import torch
from threadpoolctl import ThreadpoolController


@functools.cache
def _openmp_controller():
    # built once: scanning the loaded libraries costs far more than the limit
    return ThreadpoolController().select(user_api="openmp")


def _cgroup_paths(proc_cgroup):
    """(controllers, path) of each line of ``/proc/self/cgroup``."""
    try:
        with open(proc_cgroup) as lines:
            for line in lines:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                yield controllers.split(","), path
    except (OSError, ValueError):
        return


def _ancestors(directory, path):
    """``directory`` joined with ``path`` and each of its parents, up to
    ``directory`` itself (a container often sees its own group as the root)."""
    parts = [part for part in path.split("/") if part]
    for depth in range(len(parts), -1, -1):
        yield os.path.join(directory, *parts[:depth])


def _read_numbers(filename):
    try:
        with open(filename) as file:
            return file.read().split()
    except OSError:
        return None


def _quota(quota, period):
    """Cores a quota of ``quota`` per ``period`` microseconds grants, or None."""
    try:
        quota, period = int(quota), int(period)
    except ValueError:  # "max": no quota
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """The cores this process's control group may use, or None if unlimited.

    A container's CPU limit (``docker run --cpus``, a Kubernetes CPU limit)
    is a CFS quota: the group's threads together may run ``quota`` out of
    every ``period`` microseconds, and are stopped for the rest of the period
    once they have used it. Threads beyond the quota do no more work, and a
    thread stopped in the middle of a parallel operation stalls the others.
    Reads cgroup v2's ``cpu.max`` and v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` for the process's group and its parents, and
    returns the smallest quota among them (Linux; None elsewhere).
    """
    quotas = []
    for controllers, path in _cgroup_paths(proc_cgroup):
        if controllers == [""]:  # cgroup v2: one hierarchy
            for directory in _ancestors(root, path):
                numbers = _read_numbers(os.path.join(directory, "cpu.max"))
                if numbers and len(numbers) == 2:
                    quotas.append(_quota(*numbers))
        elif "cpu" in controllers:
            mounts = {",".join(controllers), "cpu", "cpu,cpuacct"}
            for mount in sorted(mounts):
                for directory in _ancestors(os.path.join(root, mount), path):
                    quota = _read_numbers(os.path.join(directory, "cpu.cfs_quota_us"))
                    period = _read_numbers(os.path.join(directory, "cpu.cfs_period_us"))
                    if quota and period:
                        quotas.append(_quota(quota[0], period[0]))
    quotas = [quota for quota in quotas if quota is not None]
    return min(quotas) if quotas else None


def _count_usable_cores():
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota - 0.01)))
    return max(cores, 1)


# A quota or affinity mask changes rarely; re-read now and then, not per call
_USABLE_CORES = (None, -math.inf)
_USABLE_CORES_LIFETIME = 10.0


def usable_cores():
    """The cores this process can use: its CPU affinity, capped by a cgroup
    CPU quota rounded up (a quota of 1.5 cores lets 2 threads run).

    Re-read at most every 10 seconds.
    """
    global _USABLE_CORES
    cores, when = _USABLE_CORES
    now = time.monotonic()
    if now - when > _USABLE_CORES_LIFETIME:
        cores = _count_usable_cores()
        _USABLE_CORES = (cores, now)
    return cores


@contextlib.contextmanager
def thread_limit(n_threads):
    """Let torch use at most ``n_threads`` threads in the body, and never more
    than :func:`usable_cores` (None: only that cap).

    torch sizes its pool by the cores it sees, not by a container's CPU
    quota, so a 2-core quota on a 64-core host would otherwise run 64 threads
    that the quota stops and restarts.

    Parameters
    ----------
    n_threads : int or None
        The limit, applied to the calling thread's OpenMP pool only.
    """
    limit = usable_cores()
    if n_threads is not None:
        limit = min(limit, n_threads)
    if torch.get_num_threads() <= limit:
        yield
        return
    with _openmp_controller().limit(limits=limit):
        yield


def _set_openmp_threads(n_threads):
    """Set the calling thread's OpenMP thread count in every loaded runtime."""
    for library in _openmp_controller().lib_controllers:
        library.set_num_threads(n_threads)


def adaptive_threads_enabled():
    """Whether training may use fewer threads than its limit when that is faster.

    ``SKAFM_ADAPTIVE_THREADS=0`` keeps the count fixed at the limit (for
    benchmarks that time a given number of threads).
    """
    return os.environ.get("SKAFM_ADAPTIVE_THREADS", "1") != "0"


# The count the last governor settled on, by the limit it ran under, and when:
# a machine's load changes over seconds to minutes, not between two fits.
_CHOICES = {}
_CHOICE_LIFETIME = 60.0


def _remember_choice(max_threads, n_threads, wait):
    _CHOICES[max_threads] = (n_threads, wait, time.monotonic())


def _recent_choice(max_threads):
    """(thread count, windows to wait before the next try) or None."""
    n_threads, wait, when = _CHOICES.get(max_threads, (None, None, -math.inf))
    if time.monotonic() - when < _CHOICE_LIFETIME:
        return n_threads, wait
    return None


class ThreadGovernor:
    """Picks, while training runs, the thread count that steps fastest.

    torch's CPU operations and skafm's kernels split each operation evenly
    over their threads and wait for the last one. When other processes hold
    some of the cores, a thread that is descheduled stalls every operation,
    and an epoch on all threads can take several times as long as on the
    cores that are free. The governor times the training steps in windows
    (work per second, a row's work being its pairs plus its features), and
    now and then runs one window with a neighbouring thread count: it moves
    there when that window is faster by a margin, and otherwise comes back
    and waits twice as long before the next try. A window that is much slower
    than the one before it (load has changed) starts a try at once. Where
    the machine's load can be read (:class:`OthersLoad`), no try of fewer
    threads is made while no other process holds a core, none of more while
    no core is free, and other processes taking or leaving cores start one
    at once.

    It never uses more threads than the limit it starts under (``n_threads``,
    joblib's or threadpoolctl's limit, torch's setting), and on leaving it
    restores the count it found. Results do not depend on the count: every
    kernel's reductions are ordered independently of the threads.

    Parameters
    ----------
    max_threads : int
        The limit in force; 1 (or fewer) turns the governor off.
    set_threads : callable, default=None
        Called with a thread count to apply it; the calling thread's OpenMP
        setting by default.
    others_load : callable, default=None
        Called at the end of each window; returns the cores other processes
        used since the last call, or None when unknown. None: no such
        reading, only the timed tries.
    machine_cores : int, default=None
        The cores ``others_load`` counts over (``os.cpu_count()``): a try of
        more threads is made only while they leave one free.
    """

    WINDOW_SECONDS = 0.2
    WINDOW_STEPS = 2
    GAIN_TO_MOVE = 1.05
    DROP_TO_RETRY = 0.75
    LONGEST_WAIT = 32
    IDLE_OTHERS = 0.25  # cores other processes use, below which none is taken

    def __init__(
        self, max_threads, set_threads=None, others_load=None, machine_cores=None
    ):
        self.max_threads = max(int(max_threads), 1)
        self._machine_cores = machine_cores or os.cpu_count() or self.max_threads
        self.n_threads = self.max_threads
        self._set_threads = set_threads or _set_openmp_threads
        self._others_load = others_load
        self._others_cores = None
        self._window_seconds = 0.0
        self._window_work = 0.0
        self._window_steps = 0
        self._last_rate = None
        self._trial = None  # (thread count tried from, its rate)
        self._wait = 1
        self._countdown = 2
        self._direction = -1
        # a fit soon after another starts where the last one settled: short
        # fits (partial_fit, one-epoch warm starts) have no time to find it
        remembered = _recent_choice(self.max_threads)
        if remembered is not None:
            n_threads, self._wait = remembered
            self._countdown = self._wait
            if n_threads != self.max_threads:
                self._apply(n_threads)

    @classmethod
    def for_training(cls, device):
        """The governor for a fit on ``device``: off on GPUs and when disabled."""
        if torch.device(device).type != "cpu" or not adaptive_threads_enabled():
            return cls(1)
        return cls(torch.get_num_threads(), others_load=OthersLoad.where_available())

    @property
    def active(self):
        return self.max_threads > 1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.n_threads != self.max_threads:
            self._apply(self.max_threads)

    def record(self, seconds, work):
        """Account one training step of ``seconds`` that did ``work``."""
        if not self.active:
            return
        self._window_seconds += seconds
        self._window_work += work
        self._window_steps += 1
        if (
            self._window_seconds < self.WINDOW_SECONDS
            or self._window_steps < self.WINDOW_STEPS
        ):
            return
        rate = self._window_work / max(self._window_seconds, 1e-9)
        self._window_seconds = self._window_work = 0.0
        self._window_steps = 0
        self._end_window(rate)

    def _end_window(self, rate):
        if self._trial is not None:
            tried_from, rate_before = self._trial
            self._trial = None
            if rate > self.GAIN_TO_MOVE * rate_before:
                self._last_rate = rate
                if self._neighbour(self._direction) != self.n_threads:
                    # keep going the same way soon: more cores may be taken
                    # or free
                    self._wait = 1
                else:
                    # the only way left is back where it was slower
                    self._wait = min(2 * self._wait, self.LONGEST_WAIT)
                    self._direction = -self._direction
                _remember_choice(self.max_threads, self.n_threads, self._wait)
            else:
                self._apply(tried_from)
                self._last_rate = rate_before
                self._wait = min(2 * self._wait, self.LONGEST_WAIT)
                _remember_choice(self.max_threads, tried_from, self._wait)
                self._direction = -self._direction
            self._countdown = self._wait
            return
        others_before = self._others_cores
        if self._others_load is not None:
            self._others_cores = self._others_load()
        change = self._load_change(others_before, self._others_cores)
        slower = (
            self._last_rate is not None and rate < self.DROP_TO_RETRY * self._last_rate
        )
        # cores were taken: try fewer threads at once (never more: a step
        # that got slower says nothing for them); cores came free: try more
        if (change < 0 or slower) and self._neighbour(-1) != self.n_threads:
            self._direction, self._countdown, self._wait = -1, 0, 1
        elif change > 0 and self._neighbour(1) != self.n_threads:
            self._direction, self._countdown, self._wait = 1, 0, 1
        self._last_rate = rate
        self._countdown -= 1
        if self._countdown <= 0:
            self._try_neighbour(rate)

    def _neighbour(self, direction):
        step = max(1, self.n_threads // 4)
        if direction < 0:
            return max(1, self.n_threads - step)
        return min(self.max_threads, self.n_threads + step)

    def _load_change(self, before, now):
        """-1 when other processes took cores, 1 when they left them, else 0."""
        if before is None or now is None:
            return 0
        if before < self.IDLE_OTHERS <= now - self.IDLE_OTHERS:
            return -1
        if now < self.IDLE_OTHERS <= before - self.IDLE_OTHERS:
            return 1
        return 0

    def _try_neighbour(self, rate):
        if self._neighbour(self._direction) == self.n_threads:
            self._direction = -self._direction
        target = self._neighbour(self._direction)
        if target == self.n_threads:
            return
        others = self._others_cores
        if others is not None and (
            # no other process holds a core: fewer threads cannot be faster
            (target < self.n_threads and others < self.IDLE_OTHERS)
            # no core is free for another thread
            or (
                target > self.n_threads
                and self._machine_cores - others < self.n_threads + 0.5
            )
        ):
            # the other way next time, which the load may allow
            self._direction = -self._direction
            self._countdown = self._wait
            return
        self._trial = (self.n_threads, rate)
        self._apply(target)

    def _apply(self, n_threads):
        self.n_threads = n_threads
        self._set_threads(n_threads)


class OthersLoad:
    """How many cores other processes kept busy since the last call (Linux).

    The machine's busy time from ``/proc/stat`` (steal time included: a
    virtual machine's host taking its cores) less this process's CPU time,
    over the wall time between two calls. Where the machine has more cores
    than this process may use, the figure overstates the load on its own.
    """

    def __init__(self):
        self._clock_ticks = os.sysconf("SC_CLK_TCK")
        self._last = self._read()

    @classmethod
    def where_available(cls):
        """A reader, or None where ``/proc/stat`` cannot be read."""
        try:
            reader = cls()
        except (OSError, ValueError, AttributeError):
            return None
        return reader if reader._last is not None else None

    def _read(self):
        try:
            with open("/proc/stat", "rb") as stat:
                fields = [int(value) for value in stat.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(fields) < 5:
            return None
        # user nice system idle iowait irq softirq steal
        busy = sum(fields) - fields[3] - fields[4]
        return busy / self._clock_ticks, time.perf_counter(), time.process_time()

    def __call__(self, longest=math.inf):
        """Cores others used since the last call; None if that was over
        ``longest`` seconds ago (or too short a time to tell)."""
        now, last = self._read(), self._last
        if now is None or last is None:
            self._last = now
            return None
        wall = now[1] - last[1]
        if wall < 0.05:
            # too short to tell at the clock's ticks: let the time add up
            return None
        self._last = now
        if wall > longest:
            return None
        others = (now[0] - last[0]) - (now[2] - last[2])
        return max(others, 0.0) / wall


# The reading that prediction calls share: each sees the load since the last.
_PREDICTION_LOAD = None
_PREDICTION_LOAD_LOCK = threading.Lock()
# An older reading says too little about the load now.
_PREDICTION_READING_AGE = 10.0


def free_core_threads(limit):
    """Threads for a prediction: ``limit``, or fewer where other processes
    held cores since the previous prediction call (Linux, at most 10 s ago).

    A prediction is one pass too short to time and adjust, so it takes the
    cores that others left free, a core counting as taken when others kept
    it busy over half the time.
    """
    global _PREDICTION_LOAD
    if limit <= 1 or not adaptive_threads_enabled():
        return limit
    with _PREDICTION_LOAD_LOCK:
        if _PREDICTION_LOAD is None:
            _PREDICTION_LOAD = OthersLoad.where_available() or False
            return limit
        if _PREDICTION_LOAD is False:
            return limit
        others = _PREDICTION_LOAD(longest=_PREDICTION_READING_AGE)
    if others is None:
        return limit
    free = (os.cpu_count() or limit) - others
    return int(min(limit, max(1, math.ceil(free - 0.5))))


# Predictions of this many rows or fewer run on one thread whatever the
# count (the kernels' smallest share is 8 rows, torch's small operations are
# serial): choosing a count would cost more than the prediction.
SERIAL_PREDICTION_ROWS = 8


@contextlib.contextmanager
def prediction_threads(n_threads, n_rows):
    """``thread_limit(n_threads)``, lowered to the cores free of other work.

    A prediction of at most ``SERIAL_PREDICTION_ROWS`` rows leaves the
    thread count as it is and does not read the machine's load.
    """
    if n_rows <= SERIAL_PREDICTION_ROWS:
        yield
        return
    with thread_limit(n_threads):
        limit = torch.get_num_threads()
        chosen = free_core_threads(limit)
        if chosen >= limit:
            yield
            return
        with _openmp_controller().limit(limits=chosen):
            yield
