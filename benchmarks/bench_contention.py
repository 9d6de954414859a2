"""Training and prediction speed when other processes hold some of the cores.

Each library trains, as in bench_speed.py (same models, Adam at 1e-3, no
regularisation), on a quiet machine and beside one and two busy processes
(each a Python loop that holds one core), on two shapes:

- ``frappe``: Frappe's training part, 10 one-hot fields, k = t = 64, batch 512;
- ``ctr39``: generated, 39 one-hot fields (741 pairs a row), about 1.1M
  columns with power-law frequencies within fields, 30,000 training and
  10,000 test rows, k = t = 16, batch 2048.

Libraries: ``skafm`` (defaults: the thread governor on), ``skafm-fixed``
(``SKAFM_ADAPTIVE_THREADS=0``: all threads throughout), ``skafm-torch-ops``
(``SKAFM_NATIVE_KERNELS=0``, governor on: torch's own operations) and the peers
``deepctr-torch`` and ``torchfm``. Seconds per epoch are the median of the
epochs after the first; the slowdown of each is against its own quiet run.
Every run is a subprocess of its own, started after the busy processes.

    python benchmarks/bench_contention.py [--shapes frappe,ctr39] [--busy 0,1,2]
        [--libraries ...] [--epochs 3] [--json OUT]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import (  # noqa: E402
    RUNNERS,
    add_shape_worker_arguments,
    machine,
    model_flags,
    run_worker,
)

LIBRARIES = ("skafm", "skafm-fixed", "skafm-torch-ops", "deepctr-torch", "torchfm")
SHAPES = {
    "frappe": {"n_factors": 64, "attention_size": 64, "batch_size": 512},
    "ctr39": {"n_factors": 16, "attention_size": 16, "batch_size": 2048},
}
ENVIRONMENTS = {
    "skafm": {},
    "skafm-fixed": {"SKAFM_ADAPTIVE_THREADS": "0"},
    "skafm-torch-ops": {"SKAFM_NATIVE_KERNELS": "0"},
}
BUSY_LOOP = "while True: pass"


def make_ctr39(n_train=30_000, n_test=10_000, n_fields=39, seed=0):
    """One-hot rows of 39 fields whose sizes grow from 4 to ~280k columns.

    Within each field the categories' frequencies follow a power law
    (exponent 1.1), as ids in click logs do. The target is a planted sum of
    per-category effects and a few field-pair interactions plus noise; only
    the speed is measured here.
    """
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    sizes = np.round(np.logspace(0.6, 5.45, n_fields)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_rows = n_train + n_test
    columns = np.empty((n_rows, n_fields), dtype=np.int64)
    effects = np.zeros(n_rows)
    for field, (start, size) in enumerate(zip(starts, sizes, strict=True)):
        weights = 1.0 / np.arange(1, size + 1) ** 1.1
        category = rng.choice(size, size=n_rows, p=weights / weights.sum())
        columns[:, field] = start + category
        effects += rng.normal(scale=0.3, size=size)[category] if size < 1000 else 0
    for a, b in ((0, 1), (2, 5), (3, 7)):
        effects += np.sign(columns[:, a] % 2 - 0.5) * np.sign(columns[:, b] % 2 - 0.5)
    y = (effects + rng.normal(scale=0.5, size=n_rows)).astype(np.float32)
    X = sp.csr_matrix(
        (
            np.ones(n_rows * n_fields, dtype=np.float32),
            columns.ravel(),
            np.arange(0, n_rows * n_fields + 1, n_fields),
        ),
        shape=(n_rows, int(sizes.sum())),
    )
    X.sort_indices()
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def load_shape(name, data_dir=None):
    if name == "frappe":
        from _frappe import load_frappe

        return load_frappe(data_dir)
    return make_ctr39()


def worker(args):
    """Train one library on one shape; print its measurements as JSON."""
    data = load_shape(args.shape, args.data_dir)
    runner = RUNNERS["skafm" if args.worker.startswith("skafm") else args.worker]
    try:
        epochs, predict_seconds, latency, _ = runner(args, data)
    except ImportError as error:
        print(json.dumps({"error": f"not importable: {error}"}))
        return
    print(
        json.dumps(
            {
                "epoch_seconds": epochs,
                "seconds_per_epoch": float(np.median(epochs[1:] or epochs)),
                "predict_seconds": predict_seconds,
                "single_row_latency_ms": 1e3 * latency,
            }
        )
    )


def run_one(library, shape, n_busy, args):
    flags = model_flags(args.epochs, SHAPES[shape], args.data_dir)
    command = [sys.executable, __file__, "--worker", library, "--shape", shape, *flags]
    environment = os.environ | ENVIRONMENTS.get(library, {})
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(n_busy)]
    try:
        return run_worker(command, env=environment)
    finally:
        for process in busy:
            process.kill()
            process.wait()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--busy", default="0,1,2", help="busy processes beside it")
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="folder with frappe.*.libfm")
    parser.add_argument("--json", default=None, help="also write the results here")
    add_shape_worker_arguments(parser, LIBRARIES, SHAPES)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    results = []
    busy_counts = [int(n) for n in args.busy.split(",")]
    for shape in args.shapes.split(","):
        for library in args.libraries.split(","):
            for n_busy in busy_counts:
                result = run_one(library, shape, n_busy, args)
                result |= {"shape": shape, "library": library, "busy": n_busy}
                results.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": {"epochs": args.epochs, "shapes": SHAPES},
        "results": results,
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def print_report(report):
    print(f"{report['date']}  {report['machine']}")
    rows = report["results"]
    busy_counts = sorted({r["busy"] for r in rows})
    header = f"{'shape':<8}{'library':<17}" + "".join(
        f"{f's/epoch {n} busy':>16}" for n in busy_counts
    )
    header += "".join(f"{f'x quiet, {n} busy':>17}" for n in busy_counts if n)
    print(header)
    seen = []
    for row in rows:
        if (row["shape"], row["library"]) not in seen:
            seen.append((row["shape"], row["library"]))
    for shape, library in seen:
        mine = {
            r["busy"]: r for r in rows if (r["shape"], r["library"]) == (shape, library)
        }
        line = f"{shape:<8}{library:<17}"
        for n in busy_counts:
            result = mine.get(n, {})
            line += (
                f"{result['seconds_per_epoch']:>16.2f}"
                if "seconds_per_epoch" in result
                else f"{'error':>16}"
            )
        quiet = mine.get(0, {}).get("seconds_per_epoch")
        for n in busy_counts:
            if not n:
                continue
            loaded = mine.get(n, {}).get("seconds_per_epoch")
            line += f"{loaded / quiet:>16.2f}x" if quiet and loaded else f"{'-':>17}"
        print(line)
    for row in rows:
        if "error" in row:
            print(f"{row['shape']} {row['library']} {row['busy']} busy: {row['error']}")


if __name__ == "__main__":
    main()
