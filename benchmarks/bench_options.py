"""What each option costs: seconds per epoch and prediction rate on Frappe.

Each setting runs in a fresh process: ``AFMRegressor`` with the defaults
except the named parameters, trained one warm-started epoch at a time on
Frappe's training file (57,722 rows, ``init="random"`` so that every epoch
is an AFM epoch, no early stopping), then predicting the test file. The
first epoch (which loads the kernels and warms the allocator) is not
counted; the figures are the median of the others and of three predictions.

    python benchmarks/bench_options.py [--epochs 4] [--json PATH]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# (label, estimator parameters, environment) of each setting
SETTINGS = [
    ("defaults (k = 64, t = 16, batch 'auto' = 256)", {}, {}),
    ("attention=False (a plain FM)", {"attention": False}, {}),
    ("k = t = 64", {"attention_size": 64}, {}),
    ("k = 32", {"n_factors": 32}, {}),
    ("batch_size=512", {"batch_size": 512}, {}),
    ("batch_size=64", {"batch_size": 64}, {}),
    ("penalty_scope='sample'", {"penalty_scope": "sample"}, {}),
    ("alpha=0 (no L2 penalty)", {"alpha": 0.0}, {}),
    ("average_window=10 (weight averaging)", {"average_window": 10}, {}),
    ("dropout=0, attention_dropout=0", {"dropout": 0.0, "attention_dropout": 0.0}, {}),
    ("SKAFM_NATIVE_KERNELS=0 (PyTorch operations)", {}, {"SKAFM_NATIVE_KERNELS": "0"}),
]


def measure(params, epochs, data_dir):
    """Run in the worker process: epoch seconds and prediction rows/s."""
    from _frappe import load_frappe
    from bench_speed import time_epochs

    from skafm import AFMRegressor

    X_train, y_train, X_test, _ = load_frappe(data_dir)
    model = AFMRegressor(
        **{
            "max_iter": 1,
            "init": "random",
            "early_stopping": False,
            "warm_start": True,
            "random_state": 0,
            **params,
        }
    )
    seconds = time_epochs(model, X_train, y_train, epochs)
    predictions = []
    for _ in range(3):
        start = time.perf_counter()
        model.predict(X_test)
        predictions.append(time.perf_counter() - start)
    return {
        "epoch_s": statistics.median(seconds[1:]),
        "predict_rows_per_s": X_test.shape[0] / statistics.median(predictions),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(measure(json.loads(args.worker), args.epochs, args.data_dir)))
        return
    results = []
    print(f"{'setting':<48} {'s/epoch':>8} {'predict rows/s':>15}")
    for label, params, environment in SETTINGS:
        command = [sys.executable, __file__, "--worker", json.dumps(params)]
        command += ["--epochs", str(args.epochs)]
        if args.data_dir is not None:
            command += ["--data-dir", args.data_dir]
        output = subprocess.run(
            command,
            env={**os.environ, **environment},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = {"setting": label, **json.loads(output.strip().splitlines()[-1])}
        results.append(result)
        print(
            f"{label:<48} {result['epoch_s']:>8.2f} "
            f"{result['predict_rows_per_s']:>15,.0f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
