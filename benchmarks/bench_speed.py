"""Speed and memory of skafm against the peer AFM implementations on Frappe.

One command measures, on this machine and in one run:

- the dense float32 GEMM rate at the attention network's shape
  (batch_size * n_pairs, n_factors) x (n_factors, attention_size), and at 4096^3;
- for skafm, DeepCTR-Torch's ``AFM`` and pytorch-fm's
  ``AttentionalFactorizationMachineModel``, with the same embedding size,
  attention size, batch size, optimizer (Adam, lr 1e-3) and epochs: seconds per
  training epoch (no dropout, no L2 penalty in any of them), training rows/s,
  batch prediction rows/s (median of 5 calls),
  median single-row ``predict`` latency, peak RSS and the test RMSE (regression
  on the +/-1 labels);
- skafm's achieved attention FLOP rate and its fraction of the GEMM rate.

Each library runs in its own subprocess so that its peak RSS is its own. A peer
that cannot be imported is reported, not fatal.

    python benchmarks/bench_speed.py [--epochs 3] [--data-dir PATH] [--json OUT]
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

LIBRARIES = ("skafm", "deepctr-torch", "torchfm")
N_FIELDS = 10


def attention_flops_per_row(n_factors, attention_size, n_fields=N_FIELDS):
    """Forward and backward FLOPs of one row's attention MLP: 3 x 2 x P x k x t."""
    n_pairs = n_fields * (n_fields - 1) // 2
    return 3 * 2 * n_pairs * n_factors * attention_size


def gemm_rates(args):
    import torch

    def rate(m, k, n, repeats):
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9

    n_pairs = N_FIELDS * (N_FIELDS - 1) // 2
    shape = (args.batch_size * n_pairs, args.n_factors, args.attention_size)
    return {
        "attention_shape": list(shape),
        "attention_shape_gflops": max(rate(*shape, 50) for _ in range(3)),
        "square_4096_gflops": max(rate(4096, 4096, 4096, 3) for _ in range(2)),
    }


def timed_prediction(predict_all, repeats=5):
    """Median seconds of ``repeats`` calls after one untimed call, and its result.

    Every library is timed this same way. The untimed call takes the one-off
    costs of a first call; the median damps a single slow call (a library's
    rate still moves between runs of the script on a busy machine).
    """
    prediction = predict_all()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prediction = predict_all()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), prediction


def median_latency(predict_one, rows, repeats=200):
    for row in rows[:10]:
        predict_one(row)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        predict_one(rows[i % len(rows)])
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def epoch_model(n_factors, attention_size, batch_size):
    """skafm as timed here: each fit call is one more epoch of the AFM."""
    from skafm import AFMRegressor

    return AFMRegressor(
        n_factors=n_factors,
        attention_size=attention_size,
        batch_size=batch_size,
        optimizer="adam",
        learning_rate_init=1e-3,
        alpha=0.0,
        dropout=0.0,  # as the peers run here: the same work per step
        max_iter=1,
        init="random",  # time the AFM's epochs alone, not FM pre-training
        early_stopping=False,
        warm_start=True,
        random_state=0,
    )


def time_epochs(model, X, y, epochs):
    """Seconds of each of ``epochs`` warm-started one-epoch fits."""
    import warnings

    seconds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(epochs):
            start = time.perf_counter()
            model.fit(X, y)
            seconds.append(time.perf_counter() - start)
    return seconds


def run_skafm(args, data):

    X_train, y_train, X_test, y_test = data
    model = epoch_model(args.n_factors, args.attention_size, args.batch_size)
    epoch_seconds = time_epochs(model, X_train, y_train, args.epochs)
    predict_seconds, prediction = timed_prediction(lambda: model.predict(X_test))
    single_rows = [X_test[i] for i in range(200)]
    latency = median_latency(model.predict, single_rows)
    return epoch_seconds, predict_seconds, latency, prediction


def run_deepctr(args, data):
    from _frappe import deepctr_features

    X_train, y_train, X_test, y_test = data
    columns, as_inputs = deepctr_features(X_train, X_test, args.n_factors)
    return time_deepctr(args, columns, as_inputs(X_train), y_train, as_inputs(X_test))


def time_deepctr(args, columns, train_inputs, y_train, test_inputs):
    """DeepCTR-Torch's ``AFM`` on its input dicts: epochs, prediction, latency."""
    import torch
    from deepctr_torch.models import AFM

    torch.manual_seed(0)
    model = AFM(
        columns,
        columns,
        use_attention=True,
        attention_factor=args.attention_size,
        l2_reg_linear=0.0,
        l2_reg_embedding=0.0,
        l2_reg_att=0.0,
        afm_dropout=0.0,
        task="regression",
        device="cpu",
    )
    model.compile("adam", "mse")
    epoch_seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.fit(
            train_inputs, y_train, batch_size=args.batch_size, epochs=1, verbose=0
        )
        epoch_seconds.append(time.perf_counter() - start)
    predict_seconds, prediction = timed_prediction(
        lambda: model.predict(test_inputs, batch_size=args.batch_size).ravel()
    )
    single_rows = [
        {n: v[i : i + 1] for n, v in test_inputs.items()} for i in range(200)
    ]
    latency = median_latency(lambda row: model.predict(row, batch_size=1), single_rows)
    return epoch_seconds, predict_seconds, latency, prediction


def run_torchfm(args, data):
    from _frappe import field_indices, field_offsets

    X_train, y_train, X_test, y_test = data
    starts, sizes = field_offsets(X_train, X_test)
    return time_torchfm(
        args,
        sizes,
        field_indices(X_train, starts),
        y_train,
        field_indices(X_test, starts),
    )


def time_torchfm(args, sizes, train_codes, y_train, test_codes):
    """torchfm's AFM on (rows, fields) category codes: epochs, prediction, latency."""
    import torch
    from torchfm.model.afm import AttentionalFactorizationMachineModel

    torch.manual_seed(0)
    model = AttentionalFactorizationMachineModel(
        np.asarray(sizes, dtype=np.int64),
        args.n_factors,
        args.attention_size,
        dropouts=(0.0, 0.0),
    )

    def raw_output(x):
        # torchfm's forward ends in a sigmoid (click-through rates); the
        # regression benchmark needs the score before it
        return (model.linear(x) + model.afm(model.embedding(x))).squeeze(1)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_x = torch.from_numpy(train_codes)
    train_y = torch.from_numpy(y_train.astype(np.float32))
    test_x = torch.from_numpy(test_codes)
    generator = torch.Generator().manual_seed(0)
    epoch_seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for begin in range(0, len(order), args.batch_size):
            rows = order[begin : begin + args.batch_size]
            loss = torch.nn.functional.mse_loss(
                raw_output(train_x[rows]), train_y[rows]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_seconds.append(time.perf_counter() - start)
    model.eval()

    def predict(x):
        with torch.no_grad():
            return torch.cat(
                [
                    raw_output(x[i : i + args.batch_size])
                    for i in range(0, len(x), args.batch_size)
                ]
            ).numpy()

    predict_seconds, prediction = timed_prediction(lambda: predict(test_x))
    latency = median_latency(predict, [test_x[i : i + 1] for i in range(200)])
    return epoch_seconds, predict_seconds, latency, prediction


RUNNERS = {"skafm": run_skafm, "deepctr-torch": run_deepctr, "torchfm": run_torchfm}


def model_flags(epochs, settings, data_dir=None):
    """The command-line flags that give a worker its model and data.

    ``settings`` holds ``n_factors``, ``attention_size`` and ``batch_size``.
    """
    return [
        "--epochs",
        str(epochs),
        "--n-factors",
        str(settings["n_factors"]),
        "--attention-size",
        str(settings["attention_size"]),
        "--batch-size",
        str(settings["batch_size"]),
    ] + (["--data-dir", data_dir] if data_dir else [])


def add_shape_worker_arguments(parser, libraries, shapes):
    """The hidden flags a benchmark over shapes starts its workers with
    (:func:`model_flags` and ``--worker LIBRARY --shape SHAPE``)."""
    parser.add_argument("--worker", choices=libraries, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=tuple(shapes), help=argparse.SUPPRESS)
    for flag in ("--n-factors", "--attention-size", "--batch-size"):
        parser.add_argument(flag, type=int, help=argparse.SUPPRESS)


def machine():
    """This machine, its cores and torch, as the reports name them."""
    import os

    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
    )


def run_worker(command, env=None):
    """Run a worker process; the JSON of its last output line, or its error."""
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False
    )
    lines = completed.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}


def worker(args):
    """Run one library and print its measurements as JSON on the last line."""
    from _frappe import load_frappe

    data = load_frappe(args.data_dir)
    try:
        epochs, predict_seconds, latency, prediction = RUNNERS[args.worker](args, data)
    except ImportError as error:
        print(json.dumps({"library": args.worker, "error": f"not importable: {error}"}))
        return
    n_train, n_test = data[0].shape[0], data[2].shape[0]
    # the first epoch pays one-off costs (allocations, caches); report the rest
    steady = epochs[1:] if len(epochs) > 1 else epochs
    seconds = float(np.median(steady))
    rmse = float(np.sqrt(np.mean((prediction - data[3]) ** 2)))
    print(
        json.dumps(
            {
                "library": args.worker,
                "epoch_seconds": epochs,
                "seconds_per_epoch": seconds,
                "train_rows_per_s": n_train / seconds,
                "predict_rows_per_s": n_test / predict_seconds,
                "single_row_latency_ms": 1e3 * latency,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024,
                "test_rmse": rmse,
                "epochs": args.epochs,
            }
        )
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder with frappe.*.libfm")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-factors", type=int, default=64)
    parser.add_argument("--attention-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    common = model_flags(args.epochs, vars(args), args.data_dir)
    results = []
    for library in args.libraries.split(","):
        result = run_worker([sys.executable, __file__, "--worker", library, *common])
        results.append({"library": library} | result)
    gemm = gemm_rates(args)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "settings": vars(args) | {"worker": None},
        "gemm": gemm,
        "results": results,
    }
    print_report(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def print_report(report, args):
    gemm = report["gemm"]
    flops = attention_flops_per_row(args.n_factors, args.attention_size)
    print(f"{report['date']}  {report['machine']}")
    print(
        f"k={args.n_factors} t={args.attention_size} batch={args.batch_size} "
        f"Adam(lr=1e-3) epochs={args.epochs}; dense float32 GEMM: "
        f"{gemm['attention_shape_gflops']:.0f} GFLOP/s at the attention shape "
        f"{tuple(gemm['attention_shape'])}, "
        f"{gemm['square_4096_gflops']:.0f} GFLOP/s at 4096^3\n"
    )
    header = (
        f"{'library':<14}{'s/epoch':>9}{'train rows/s':>14}{'predict rows/s':>16}"
        f"{'1-row ms':>10}{'peak RSS MB':>13}{'test RMSE':>11}{'attn GFLOP/s':>14}"
    )
    print(header)
    for result in report["results"]:
        if "error" in result:
            print(f"{result['library']:<14}  {result['error']}")
            continue
        achieved = flops * result["train_rows_per_s"] / 1e9
        fraction = achieved / gemm["attention_shape_gflops"]
        print(
            f"{result['library']:<14}{result['seconds_per_epoch']:>9.2f}"
            f"{result['train_rows_per_s']:>14.0f}{result['predict_rows_per_s']:>16.0f}"
            f"{result['single_row_latency_ms']:>10.2f}{result['peak_rss_mb']:>13.0f}"
            f"{result['test_rmse']:>11.4f}{achieved:>9.1f} ({fraction:.0%})"
        )
    ok = {r["library"]: r for r in report["results"] if "error" not in r}
    peers = [r for name, r in ok.items() if name != "skafm"]
    if "skafm" in ok and peers:
        ours = ok["skafm"]
        train = ours["train_rows_per_s"] / max(p["train_rows_per_s"] for p in peers)
        predict = ours["predict_rows_per_s"] / max(
            p["predict_rows_per_s"] for p in peers
        )
        print(
            f"\nskafm vs fastest peer: training {train:.1f}x, "
            f"batch prediction {predict:.1f}x"
        )


if __name__ == "__main__":
    main()
