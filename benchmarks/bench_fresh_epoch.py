"""Seconds per training epoch in a fresh process, nothing else run before.

bench_speed.py measures the GEMM rate first, which changes how glibc's malloc
serves later large allocations; this script times skafm alone, as a user's
fresh process sees it (k = t = 64, batch 512, Adam 1e-3, as bench_speed.py).

    python benchmarks/bench_fresh_epoch.py [--epochs 3]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _frappe import load_frappe  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    from bench_speed import epoch_model, time_epochs

    X, y = load_frappe(args.data_dir)[:2]
    model = epoch_model(n_factors=64, attention_size=64, batch_size=512)
    seconds = time_epochs(model, X, y, args.epochs)
    print("seconds per epoch:", ", ".join(f"{value:.2f}" for value in seconds))


if __name__ == "__main__":
    main()
