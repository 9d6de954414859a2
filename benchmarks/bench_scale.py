"""Scale: one epoch and one full prediction on a large generated sparse matrix.

The matrix has ``--rows`` rows (default 2,000,000) and 10 to 40 active
one-hot features per row, drawn from 40 fields that split ``n_features``
columns evenly. It runs once per feature count (default 10,000 and
1,000,000), each in its own process, and reports the epoch time, the
prediction time and the process's peak RSS, next to the sizes of the input
and of the model, to show that the cost of training does not grow with
``n_features``.

    python benchmarks/bench_scale.py [--rows 2000000] [--features 10000,1000000]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

N_FIELDS = 40


def make_matrix(n_rows, n_features, seed=0):
    """CSR with 10 to 40 active features per row, one per field, float32/int32."""
    rng = np.random.RandomState(seed)
    widths = rng.randint(10, N_FIELDS + 1, size=n_rows)
    field_size = n_features // N_FIELDS
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(widths, out=indptr[1:])
    # position of each entry within its row = its field
    field = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], widths)
    indices = (field * field_size + rng.randint(0, field_size, size=indptr[-1])).astype(
        np.int32
    )
    del field
    y = rng.normal(size=n_rows).astype(np.float32)
    X = sp.csr_matrix(
        (np.ones(indptr[-1], dtype=np.float32), indices, indptr),
        shape=(n_rows, n_features),
    )
    return X, y


def worker(args):
    from skafm import AFMRegressor

    X, y = make_matrix(args.rows, args.n_features)
    input_mb = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes + y.nbytes) / 2**20
    model = AFMRegressor(
        n_factors=args.n_factors,
        attention_size=args.attention_size,
        batch_size=args.batch_size,
        max_iter=1,
        init="random",  # time the AFM's epochs alone, not FM pre-training
        early_stopping=False,
        random_state=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        model.fit(X, y)
        fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    prediction = model.predict(X)
    predict_seconds = time.perf_counter() - start
    parameters = sum(p.numel() for p in model.module_.parameters())
    print(
        json.dumps(
            {
                "n_features": args.n_features,
                "rows": args.rows,
                "nnz": int(X.nnz),
                "input_mb": input_mb,
                # parameters plus Adam's two moments per parameter
                "model_mb": 3 * 4 * parameters / 2**20,
                "epoch_seconds": fit_seconds,
                "predict_seconds": predict_seconds,
                "finite": bool(np.isfinite(prediction).all()),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024,
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", default="10000,1000000")
    parser.add_argument("--n-factors", type=int, default=16)
    parser.add_argument("--attention-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--json", default=None)
    parser.add_argument("--n-features", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n_features:
        return worker(args)

    results = []
    for n_features in [int(n) for n in args.features.split(",")]:
        command = [
            sys.executable,
            __file__,
            "--n-features",
            str(n_features),
            "--rows",
            str(args.rows),
            "--n-factors",
            str(args.n_factors),
            "--attention-size",
            str(args.attention_size),
            "--batch-size",
            str(args.batch_size),
        ]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        try:
            results.append(json.loads(completed.stdout.strip().splitlines()[-1]))
        except (IndexError, json.JSONDecodeError):
            print(completed.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"run with n_features={n_features} failed") from None
    print(
        f"{args.rows} rows, 10-40 active features per row, k={args.n_factors}, "
        f"t={args.attention_size}, batch {args.batch_size}, 1 epoch, Adam\n"
    )
    print(
        f"{'n_features':>11}{'nnz':>12}{'input MB':>10}{'model MB':>10}"
        f"{'epoch s':>9}{'predict s':>11}{'peak RSS MB':>13}"
    )
    for r in results:
        print(
            f"{r['n_features']:>11}{r['nnz']:>12}{r['input_mb']:>10.0f}"
            f"{r['model_mb']:>10.0f}{r['epoch_seconds']:>9.1f}"
            f"{r['predict_seconds']:>11.1f}{r['peak_rss_mb']:>13.0f}"
        )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
