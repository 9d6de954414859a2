"""Data-parallel training: seconds per epoch and bytes exchanged per step.

Fits with ``skafm.distributed.fit_distributed`` (local worker processes, one
torch thread each) on 1 and 2 workers with the same global batch, on Frappe's
training part and on a generated problem of 1,000,000 columns. A fit's fixed
costs (starting the workers, sending them their rows) are taken out by
reading the epoch times worker 0 prints (``verbose=1``; the median of
epochs 2-4, each fit in a process of its own). Bytes per step are what
worker 0 put into its exchanges (the "skafm" logger's record of the fit)
divided by the fit's steps.

The numbers feed a model of the time per epoch on N machines, printed at the
end: each worker computes on n / N rows, and each of the n / B steps (global
batch B) exchanges the touched table rows of every worker (an all-gather)
and the dense parameters (an all-reduce).

    python benchmarks/bench_distributed.py [--json PATH] [--bandwidth-gbit 10]
    python benchmarks/bench_distributed.py --model-from PATH  # the model only
"""

import argparse
import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _frappe import load_frappe  # noqa: E402

GLOBAL_BATCH = 512


class BytesRecord(logging.Handler):
    """Keeps the bytes of fit_distributed's last log record."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.bytes = None

    def emit(self, record):
        found = re.search(r"put (\d+) bytes", record.getMessage())
        if found:
            self.bytes = int(found.group(1))


def wide_problem(n_rows=200_000, n_features=1_000_000, width=20, seed=0):
    """Rows of ``width`` ids drawn with power-law frequencies; a planted target."""
    rng = np.random.RandomState(seed)
    ids = np.minimum(
        (rng.pareto(1.2, size=(n_rows, width)) * 50).astype(np.int64), n_features - 1
    )
    ids = (ids + rng.randint(0, n_features, size=(1, width))) % n_features
    indptr = np.arange(0, n_rows * width + 1, width)
    X = sp.csr_matrix(
        (np.ones(n_rows * width, np.float32), ids.ravel(), indptr),
        shape=(n_rows, n_features),
    )
    X.sum_duplicates()
    effect = rng.normal(0, 1, n_features)
    y = np.asarray(X @ effect).ravel() / np.sqrt(width) + rng.normal(0, 0.3, n_rows)
    return X, y


EPOCHS = 4


def run_fit(name, n_workers, data_dir):
    """One fit in this process, verbose; prints its bytes as a last line."""
    from skafm import AFMRegressor
    from skafm.distributed import fit_distributed

    X, y = load(name, data_dir)
    record = BytesRecord()
    logger = logging.getLogger("skafm")
    logger.addHandler(record)
    logger.setLevel(logging.INFO)
    model = AFMRegressor(
        batch_size=GLOBAL_BATCH // n_workers,
        max_iter=EPOCHS,
        early_stopping=False,
        init="random",
        random_state=0,
        verbose=1,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit_distributed(model, X, y, n_workers=n_workers, threads_per_worker=1)
    print(json.dumps({"bytes": record.bytes}), flush=True)


def load(name, data_dir):
    if name == "frappe":
        X, y, _, _ = load_frappe(data_dir)
        return X, y
    return wide_problem()


def measure(name, X, workers, data_dir):
    """Seconds per epoch (median of epochs 2 on, as rank 0 prints them)."""
    rows = []
    steps_per_epoch = int(np.ceil(X.shape[0] / GLOBAL_BATCH))
    for n_workers in workers:
        command = [sys.executable, __file__, "--fit", name, str(n_workers)]
        if data_dir:
            command += ["--data-dir", data_dir]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        lines = done.stdout.splitlines()
        epochs = [
            float(found.group(1))
            for found in map(re.compile(r"^Epoch \d+/\d+,.*, ([\d.]+) s").search, lines)
            if found
        ]
        sent = json.loads(lines[-1])["bytes"]
        row = {
            "data": name,
            "rows": X.shape[0],
            "columns": X.shape[1],
            "workers": n_workers,
            "epoch_s": float(np.median(epochs[1:])),
            "bytes_per_step": sent / (EPOCHS * steps_per_epoch),
            "steps_per_epoch": steps_per_epoch,
            # distinct columns in one worker's part of a step
            "touched_rows_per_step": touched_rows(X, GLOBAL_BATCH // n_workers),
        }
        print(
            f"{name:8s} workers={n_workers}  epoch {row['epoch_s']:.2f} s  "
            f"{row['bytes_per_step'] / 1e3:.1f} kB put in per step",
            flush=True,
        )
        rows.append(row)
    return rows


def touched_rows(X, batch, samples=50, seed=0):
    """Mean distinct columns in one worker's part of a batch (random rows)."""
    rng = np.random.RandomState(seed)
    counts = [
        len(np.unique(X[rng.choice(X.shape[0], batch, replace=False)].indices))
        for _ in range(samples)
    ]
    return float(np.mean(counts))


# exchanges per step: the two tables' all-gathers (lengths, then rows) and
# that of the touched ids, and one all-reduce of the dense gradients
EXCHANGES_PER_STEP = 7


def scaling_model(one, two, n_factors, bandwidth_gbit, latency_s, workers=(8, 64)):
    """Predicted seconds per epoch on N machines, each with a batch of B / 2.

    Each worker keeps the 2-worker run's batch, so N workers take
    n / (N * B / 2) steps an epoch. compute(N) = (one worker's epoch) / N.
    Every step each worker receives the other N - 1 workers' touched rows
    (all-gathers of ids, k embedding floats and the linear weight of each
    row) and sends and receives the dense gradients twice (a ring
    all-reduce), and waits ``latency_s`` per exchange and hop.
    """
    bandwidth = bandwidth_gbit * 1e9 / 8
    batch = GLOBAL_BATCH // 2
    # per touched row: its id three times (two tables' gradients and the
    # touched ids) with its k embedding floats and its linear weight
    row_bytes = 3 * 8 + 4 * (n_factors + 1)
    touched = two["touched_rows_per_step"]
    # the dense gradients: what worker 0 put in beyond its touched rows
    dense_bytes = max(two["bytes_per_step"] - touched * row_bytes, 4.0)
    # what a step of 2 workers cost beyond half the 1-worker compute: the
    # exchanges on loopback and the waits for each other, per step
    overhead = max(two["epoch_s"] - one["epoch_s"] / 2, 0.0) / two["steps_per_epoch"]
    predictions = []
    for n in workers:
        steps = one["rows"] / (n * batch)
        received = (n - 1) * touched * row_bytes + 2 * dense_bytes * (n - 1) / n
        network = steps * (
            overhead + received / bandwidth + EXCHANGES_PER_STEP * (n - 1) * latency_s
        )
        compute = one["epoch_s"] / n
        predictions.append(
            {
                "data": one["data"],
                "workers": n,
                "compute_s": compute,
                "network_s": network,
                "epoch_s": compute + network,
                "speedup": one["epoch_s"] / (compute + network),
            }
        )
    return predictions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="Frappe's directory")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--bandwidth-gbit", type=float, default=10.0)
    parser.add_argument(
        "--model-from", default=None, help="a --json file: print its model only"
    )
    parser.add_argument(
        "--fit", nargs=2, metavar=("DATA", "WORKERS"), help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--latency-us", type=float, default=50.0, help="per exchange and hop"
    )
    args = parser.parse_args(argv)

    if args.fit:
        name, n_workers = args.fit
        run_fit(name, int(n_workers), args.data_dir)
        return
    if args.model_from:
        rows = json.loads(Path(args.model_from).read_text())["measured"]
    else:
        X_frappe, _ = load("frappe", args.data_dir)
        rows = measure("frappe", X_frappe, (1, 2), args.data_dir)
        X_wide, _ = load("1M-cols", args.data_dir)
        rows += measure("1M-cols", X_wide, (1, 2), args.data_dir)

    from skafm import AFMRegressor

    n_factors = AFMRegressor().n_factors
    predictions = []
    for name in ("frappe", "1M-cols"):
        one, two = (r for r in rows if r["data"] == name)
        predictions += scaling_model(
            one, two, n_factors, args.bandwidth_gbit, args.latency_us * 1e-6
        )
    print(
        f"\nModel: {args.bandwidth_gbit:g} Gbit/s, {args.latency_us:g} us per "
        f"exchange and hop, {GLOBAL_BATCH // 2} rows per worker and step:"
    )
    for p in predictions:
        print(
            f"{p['data']:8s} N={p['workers']:3d}  compute {p['compute_s']:.3f} s  "
            f"network {p['network_s']:.3f} s  epoch {p['epoch_s']:.3f} s  "
            f"speed-up {p['speedup']:.1f}x"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"measured": rows, "model": predictions}, indent=2)
        )


if __name__ == "__main__":
    main()
