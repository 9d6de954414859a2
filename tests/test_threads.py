"""The thread governor: fewer threads when other processes hold cores."""

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import skafm._base
import skafm._threads
from skafm import AFMRegressor
from skafm._threads import ThreadGovernor
from skafm.datasets import make_interaction_data

from .conftest import FAST

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def forget_choices():
    # a choice made on a simulated machine must not reach later real fits
    skafm._threads._CHOICES.clear()
    yield
    skafm._threads._CHOICES.clear()


class SimulatedMachine:
    """Cores some of which other processes hold; steps of equal work.

    Up to the free cores, work per second grows with the threads; beyond
    them each operation waits for descheduled threads, as an evenly split
    OpenMP loop does.
    """

    def __init__(self, n_cores, free):
        self.n_cores, self.free = n_cores, free
        self.applied = []

    def set_threads(self, n_threads):
        assert 1 <= n_threads <= self.n_cores
        self.applied.append(n_threads)

    def rate(self, n_threads):
        if n_threads <= self.free:
            return n_threads**0.9
        return self.free**0.9 / (1 + n_threads - self.free)

    def others_load(self):
        """What OthersLoad would read: the cores the other processes hold."""
        return float(self.n_cores - self.free)

    def run(self, governor, n_steps, step_work=0.01):
        """Step ``n_steps`` times; returns the thread count of each step."""
        counts = []
        for _ in range(n_steps):
            counts.append(governor.n_threads)
            governor.record(step_work / self.rate(governor.n_threads), step_work)
        return np.array(counts)


def test_on_an_idle_machine_it_keeps_all_threads():
    machine = SimulatedMachine(n_cores=2, free=2)
    governor = ThreadGovernor(2, set_threads=machine.set_threads)
    counts = machine.run(governor, 3000)
    assert np.mean(counts == 2) > 0.95
    assert counts[-1] == 2


def test_it_moves_to_the_free_cores_and_back():
    machine = SimulatedMachine(n_cores=2, free=2)
    governor = ThreadGovernor(2, set_threads=machine.set_threads)
    machine.run(governor, 500)
    machine.free = 1  # another process starts
    loaded = machine.run(governor, 3000)
    assert np.all(loaded[100:] == 1) or np.mean(loaded[100:] == 1) > 0.9
    assert np.argmax(loaded == 1) < 100  # within a few windows
    machine.free = 2  # and ends
    freed = machine.run(governor, 6000)
    assert np.mean(freed[-3000:] == 2) > 0.9


def test_on_many_cores_it_settles_near_the_free_ones():
    machine = SimulatedMachine(n_cores=16, free=11)
    governor = ThreadGovernor(16, set_threads=machine.set_threads)
    counts = machine.run(governor, 20000)
    settled = counts[-5000:]
    assert 8 <= np.median(settled) <= 11
    assert set(machine.applied) <= set(range(1, 17))


def test_it_restores_the_limit_it_started_under():
    machine = SimulatedMachine(n_cores=4, free=1)
    with ThreadGovernor(4, set_threads=machine.set_threads) as governor:
        machine.run(governor, 2000)
        assert governor.n_threads < 4
    assert machine.applied[-1] == 4


def test_one_thread_or_a_gpu_turns_it_off():
    machine = SimulatedMachine(n_cores=1, free=1)
    governor = ThreadGovernor(1, set_threads=machine.set_threads)
    machine.run(governor, 1000)
    assert not governor.active and machine.applied == []
    assert not ThreadGovernor.for_training("cuda").active


def test_a_fit_soon_after_starts_where_the_last_settled():
    machine = SimulatedMachine(n_cores=2, free=1)
    first = ThreadGovernor(2, set_threads=machine.set_threads)
    machine.run(first, 2000)
    assert first.n_threads == 1
    second = ThreadGovernor(2, set_threads=machine.set_threads)
    assert second.n_threads == 1


def test_skafm_adaptive_threads_0_keeps_the_count(monkeypatch):
    monkeypatch.setenv("SKAFM_ADAPTIVE_THREADS", "0")
    assert not ThreadGovernor.for_training("cpu").active


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs on one thread")
def test_changing_threads_while_training_changes_no_result(monkeypatch):
    X, y, _ = make_interaction_data(3000, n_fields=6, n_categories=8, random_state=0)
    params = {**FAST, "max_iter": 3, "batch_size": 64, "early_stopping": True}

    monkeypatch.setenv("SKAFM_ADAPTIVE_THREADS", "0")
    fixed = AFMRegressor(**params, n_threads=1).fit(X, y)

    # a governor that tries another count every few steps
    monkeypatch.delenv("SKAFM_ADAPTIVE_THREADS")
    monkeypatch.setattr(ThreadGovernor, "WINDOW_SECONDS", 0.0)
    monkeypatch.setattr(ThreadGovernor, "WINDOW_STEPS", 1)
    monkeypatch.setattr(ThreadGovernor, "LONGEST_WAIT", 1)
    seen = []
    real_apply = ThreadGovernor._apply

    def recording_apply(self, n_threads):
        seen.append(n_threads)
        real_apply(self, n_threads)

    monkeypatch.setattr(ThreadGovernor, "_apply", recording_apply)
    before = torch.get_num_threads()
    adaptive = AFMRegressor(**params).fit(X, y)
    assert torch.get_num_threads() == before
    assert len(seen) > 10 and set(seen) >= {1, before}
    np.testing.assert_array_equal(adaptive.predict(X), fixed.predict(X))
    assert adaptive.loss_curve_ == fixed.loss_curve_


def test_with_the_load_known_it_tries_nothing_on_an_idle_machine():
    machine = SimulatedMachine(n_cores=2, free=2)
    governor = ThreadGovernor(
        2,
        set_threads=machine.set_threads,
        others_load=machine.others_load,
        machine_cores=2,
    )
    assert np.all(machine.run(governor, 3000) == 2)
    assert machine.applied == []
    machine.free = 1  # another process starts: the reading says so at once
    loaded = machine.run(governor, 3000)
    assert np.argmax(loaded == 1) < 60
    # and no try of two threads while no core is free for the second
    assert np.all(loaded[60:] == 1)
    machine.free = 2  # it ends: back to two threads at once
    freed = machine.run(governor, 500)
    assert np.argmax(freed == 2) < 60 and np.all(freed[60:] == 2)


def test_the_load_of_other_processes_is_read_on_linux():
    import subprocess
    import sys
    import time

    reader = skafm._threads.OthersLoad.where_available()
    if not sys.platform.startswith("linux"):
        assert reader is None
        return
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and spinning
        reader()
        time.sleep(0.5)
        others = reader()
    finally:
        busy.kill()
        busy.wait()
    # the busy process held about one core; this one slept
    assert others is not None and others > 0.5


def test_with_the_load_known_it_settles_near_the_free_cores_of_many():
    machine = SimulatedMachine(n_cores=16, free=11)
    governor = ThreadGovernor(
        16,
        set_threads=machine.set_threads,
        others_load=machine.others_load,
        machine_cores=16,
    )
    settled = machine.run(governor, 20000)[-5000:]
    assert 8 <= np.median(settled) <= 11
    machine.free = 15  # most of the load ends: it finds more threads again
    freed = machine.run(governor, 20000)[-5000:]
    assert np.median(freed) >= 12


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs on one thread")
@pytest.mark.parametrize(
    ("others", "expected"), [(0.0, 2), (0.3, 2), (0.9, 1), (2.0, 1), (None, 2)]
)
def test_prediction_takes_the_cores_others_left_free(monkeypatch, others, expected):
    import os

    X, y, _ = make_interaction_data(300, n_fields=4, n_categories=4, random_state=0)
    model = AFMRegressor(**{**FAST, "max_iter": 2}).fit(X, y)
    reference = model.predict(X)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(skafm._threads, "_PREDICTION_LOAD", lambda longest: others)
    seen = []
    real_predict_raw = skafm._base.predict_raw

    def recording_predict_raw(*args):
        seen.append(torch.get_num_threads())
        return real_predict_raw(*args)

    monkeypatch.setattr(skafm._base, "predict_raw", recording_predict_raw)
    before = torch.get_num_threads()
    with threadpool_limits(limits=2, user_api="openmp"):
        prediction = model.predict(X)
    assert seen == [expected]
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(prediction, reference)

    monkeypatch.setenv("SKAFM_ADAPTIVE_THREADS", "0")
    seen.clear()
    with threadpool_limits(limits=2, user_api="openmp"):
        model.predict(X)
    assert seen == [2]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_cgroup_v2_cpu_quota_is_the_smallest_on_the_path(tmp_path):
    proc = tmp_path / "proc_cgroup"
    root = tmp_path / "cgroup"
    _write(proc, "0::/kubepods/pod1/container\n")
    _write(root / "kubepods/pod1/container/cpu.max", "150000 100000\n")
    assert skafm._threads.cgroup_cpu_quota(proc, root) == 1.5
    _write(root / "kubepods/pod1/cpu.max", "max 100000\n")
    _write(root / "kubepods/cpu.max", "50000 100000\n")
    assert skafm._threads.cgroup_cpu_quota(proc, root) == 0.5
    (root / "kubepods/cpu.max").write_text("max 100000\n")
    (root / "kubepods/pod1/container/cpu.max").write_text("max 100000\n")
    assert skafm._threads.cgroup_cpu_quota(proc, root) is None


def test_the_cgroup_v1_cpu_quota_and_a_container_seeing_its_own_root(tmp_path):
    proc = tmp_path / "proc_cgroup"
    root = tmp_path / "cgroup"
    # as inside a container: /proc/self/cgroup names the host's path, the
    # mount shows the container's own group at its root
    _write(proc, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    _write(root / "cpu,cpuacct/cpu.cfs_quota_us", "300000\n")
    _write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    assert skafm._threads.cgroup_cpu_quota(proc, root) == 3.0
    (root / "cpu,cpuacct/cpu.cfs_quota_us").write_text("-1\n")
    assert skafm._threads.cgroup_cpu_quota(proc, root) is None
    assert skafm._threads.cgroup_cpu_quota(tmp_path / "missing", root) is None


@pytest.mark.parametrize(("quota", "expected"), [(None, 2), (0.5, 1), (1.5, 2)])
def test_usable_cores_round_a_quota_up(monkeypatch, quota, expected):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(skafm._threads, "cgroup_cpu_quota", lambda: quota)
    monkeypatch.setattr(skafm._threads, "_USABLE_CORES", (None, -float("inf")))
    assert skafm._threads.usable_cores() == expected


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="torch runs on one thread")
def test_fit_and_predict_keep_within_a_one_core_quota(monkeypatch):
    X, y, _ = make_interaction_data(300, n_fields=4, n_categories=4, random_state=0)
    monkeypatch.setattr(skafm._threads, "usable_cores", lambda: 1)
    seen = []
    real_for_training = ThreadGovernor.for_training.__func__

    def recording_for_training(cls, device):
        seen.append(("fit", torch.get_num_threads()))
        return real_for_training(cls, device)

    real_predict_raw = skafm._base.predict_raw

    def recording_predict_raw(*args):
        seen.append(("predict", torch.get_num_threads()))
        return real_predict_raw(*args)

    monkeypatch.setattr(
        ThreadGovernor, "for_training", classmethod(recording_for_training)
    )
    monkeypatch.setattr(skafm._base, "predict_raw", recording_predict_raw)
    before = torch.get_num_threads()
    with threadpool_limits(limits=2, user_api="openmp"):
        model = AFMRegressor(**{**FAST, "max_iter": 2, "n_threads": 2}).fit(X, y)
        model.predict(X)
    assert seen and all(threads == 1 for _, threads in seen), seen
    assert {kind for kind, _ in seen} == {"fit", "predict"}
    assert torch.get_num_threads() == before


def test_a_few_rows_predict_without_reading_the_load(monkeypatch):
    X, y, _ = make_interaction_data(300, n_fields=4, n_categories=4, random_state=0)
    model = AFMRegressor(**{**FAST, "max_iter": 2}).fit(X, y)
    reference = model.predict(X)
    reads = []

    def reading(longest):
        reads.append(longest)
        return 2.0

    monkeypatch.setattr(skafm._threads, "_PREDICTION_LOAD", reading)
    rows = skafm._threads.SERIAL_PREDICTION_ROWS
    np.testing.assert_array_equal(model.predict(X[:1]), reference[:1])
    np.testing.assert_array_equal(model.predict(X[:rows]), reference[:rows])
    assert reads == []
    np.testing.assert_array_equal(model.predict(X[: rows + 1]), reference[: rows + 1])
    may_lower = min(torch.get_num_threads(), skafm._threads.usable_cores()) > 1
    assert len(reads) == (1 if may_lower else 0)
