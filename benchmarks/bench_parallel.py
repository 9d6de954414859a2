"""Wall time and CPU use of a 12-candidate GridSearchCV with n_jobs=1 and 2.

Shows that parallel search uses the cores without oversubscribing them:
joblib's worker processes give torch ``cpu_count // n_jobs`` threads each,
which skafm keeps. With ``--oversubscribed``, a third run forces
two torch threads per worker (``joblib.parallel_config(inner_max_num_threads=2)``)
to show what oversubscription would cost.

CPU use is read from /proc/stat (Linux) while the search runs: the mean
number of busy cores, and the number of runnable threads sampled every
50 ms (the sampler itself excluded).

Usage::

    python benchmarks/bench_parallel.py [--n-samples 10000] [--max-iter 5]
    python benchmarks/bench_parallel.py --n-samples 3000 --max-iter 2 --oversubscribed
"""

import argparse
import os
import platform
import threading
import time
import warnings

import joblib
import numpy as np
from sklearn.model_selection import GridSearchCV

from skafm import AFMRegressor
from skafm.datasets import make_interaction_data

GRID = {
    "alpha": [1e-6, 1e-5, 1e-4],
    "n_factors": [16, 32],
    "dropout": [0.3, 0.5],
}


def read_cpu_jiffies():
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def read_running_threads():
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("procs_running"):
                return int(line.split()[1]) - 1  # the sampler itself


class CpuMonitor:
    """Samples the machine's CPU use in a background thread."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.running = []
        self._stop = threading.Event()

    def __enter__(self):
        self._start = read_cpu_jiffies()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.running.append(read_running_threads())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        busy_end, total_end = read_cpu_jiffies()
        busy_start, total_start = self._start
        share = (busy_end - busy_start) / max(total_end - total_start, 1)
        self.busy_cores = share * os.cpu_count()


def torch_threads(estimator, X, y):
    import torch

    return float(torch.get_num_threads())


def run_search(X, y, n_jobs, inner_threads, max_iter):
    search = GridSearchCV(
        AFMRegressor(max_iter=max_iter, early_stopping=False, random_state=0),
        GRID,
        cv=3,
        n_jobs=n_jobs,
        scoring={"r2": "r2", "threads": torch_threads},
        refit=False,
    )
    config = {"backend": "loky"}
    if inner_threads is not None:
        config["inner_max_num_threads"] = inner_threads
    with joblib.parallel_config(**config), CpuMonitor() as monitor:
        start = time.perf_counter()
        search.fit(X, y)
        wall = time.perf_counter() - start
    return {
        "wall_s": wall,
        "busy_cores": monitor.busy_cores,
        "running_mean": float(np.mean(monitor.running)),
        "running_p95": float(np.percentile(monitor.running, 95)),
        "torch_threads_per_fit": float(search.cv_results_["mean_test_threads"].max()),
        "best_r2": float(search.cv_results_["mean_test_r2"].max()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=10000)
    parser.add_argument("--max-iter", type=int, default=5)
    parser.add_argument(
        "--oversubscribed",
        action="store_true",
        help="also run n_jobs=2 with two torch threads per worker (slow)",
    )
    args = parser.parse_args()
    # fixed short fits end at max_iter by design; silence that in every worker
    os.environ["PYTHONWARNINGS"] = "ignore::UserWarning"
    warnings.simplefilter("ignore", UserWarning)

    X, y, _ = make_interaction_data(args.n_samples, random_state=0)
    n_candidates = int(np.prod([len(values) for values in GRID.values()]))
    print(
        f"{n_candidates} candidates x 3 folds, {args.n_samples} samples, "
        f"{args.max_iter} epochs each; {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}"
    )
    runs = [("n_jobs=1", 1, None), ("n_jobs=2", 2, None)]
    if args.oversubscribed:
        runs.append(("n_jobs=2, 2 threads/worker (oversubscribed)", 2, 2))
    header = (
        f"{'configuration':<46}{'wall s':>8}{'busy cores':>12}"
        f"{'runnable mean':>15}{'p95':>6}{'torch thr':>11}{'best R2':>9}"
    )
    print(header)
    for name, n_jobs, inner in runs:
        result = run_search(X, y, n_jobs, inner, args.max_iter)
        print(
            f"{name:<46}{result['wall_s']:>8.1f}{result['busy_cores']:>12.2f}"
            f"{result['running_mean']:>15.2f}{result['running_p95']:>6.0f}"
            f"{result['torch_threads_per_fit']:>11.0f}{result['best_r2']:>9.4f}"
        )


if __name__ == "__main__":
    main()
