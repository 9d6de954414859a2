"""Training and prediction speed against the peers on several shapes of data.

So that no shape regresses while another is optimised, every library trains
and predicts, as in bench_speed.py (Adam at 1e-3, the same k, t and batch,
no dropout or L2 penalty in any of them), on:

- ``frappe``: Frappe's training part, 10 one-hot fields (45 pairs a row),
  k = t = 64, batch 512;
- ``ctr39``: bench_contention.py's generated click log, 39 one-hot fields
  (741 pairs a row), about 1.1M columns with power-law ids, k = t = 16,
  batch 2048;
- ``multi-hot``: generated, four one-hot fields (50,000 and 20,000 power-law
  ids, two small context fields) and a tag field of 1 to 20 of 5,000 tags
  per row valued 1/sqrt(n): 5 to 24 active features (10 to 276 pairs) a row,
  non-unit values, k = t = 32, batch 1024;
- ``wide-1m``: generated, 8 one-hot fields over 1,000,000 columns (two id
  fields of 500,000 and 400,000 levels, uniform frequencies), k = t = 32,
  batch 1024.

The peers take one category index per field. On ``multi-hot`` they get the
tag field as 20 slots, a row's unused slots holding a padding category: the
pairs of a field-index model are fixed at C(24, 2) = 276 a row, and neither
takes the tags' values (their rows are 0/1). skafm takes the CSR as it is,
values included, and scores only a row's active pairs. The peers predict in
batches of the training batch size (larger batches were slower for them on
Frappe: 27k rows/s at 8192 against 150k at 512); skafm with its own chunking.

Each library and shape runs in a subprocess of its own. Seconds per epoch are
the median of the epochs after the first; batch prediction is the median of 5
calls on the test part after one untimed call; single-row latency the median
of 200 one-row calls (bench_speed.py's timers, which every library shares).

    python benchmarks/bench_shapes.py [--shapes frappe,ctr39,multi-hot,wide-1m]
        [--libraries skafm,deepctr-torch,torchfm] [--epochs 3] [--json OUT]
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_speed import (  # noqa: E402
    add_shape_worker_arguments,
    machine,
    model_flags,
    run_worker,
    time_deepctr,
    time_torchfm,
)
from bench_speed import run_skafm as time_skafm  # noqa: E402

LIBRARIES = ("skafm", "deepctr-torch", "torchfm")
SHAPES = {
    "frappe": {"n_factors": 64, "attention_size": 64, "batch_size": 512},
    "ctr39": {"n_factors": 16, "attention_size": 16, "batch_size": 2048},
    "multi-hot": {"n_factors": 32, "attention_size": 32, "batch_size": 1024},
    "wide-1m": {"n_factors": 32, "attention_size": 32, "batch_size": 1024},
}
MAX_TAGS = 20


class Shape:
    """A shape's CSR parts for skafm and its slot codes for the peers.

    ``slots_*`` are (n_rows, n_slots) int64 category indices within each
    slot, ``slot_sizes`` each slot's number of categories, and ``tables``
    each slot's embedding table name (slots of one multi-hot field share one).
    """

    def __init__(self, X_train, y_train, X_test, y_test, slots, slot_sizes, tables):
        self.X_train, self.y_train = X_train, y_train
        self.X_test, self.y_test = X_test, y_test
        n_train = X_train.shape[0]
        self.slots_train, self.slots_test = slots[:n_train], slots[n_train:]
        self.slot_sizes = np.asarray(slot_sizes, dtype=np.int64)
        self.tables = tables


def _one_hot_shape(X_train, y_train, X_test, y_test):
    from _frappe import field_indices, field_offsets

    starts, sizes = field_offsets(X_train, X_test)
    slots = np.concatenate(
        [field_indices(X_train, starts), field_indices(X_test, starts)]
    )
    tables = [f"field{f}" for f in range(len(sizes))]
    return Shape(X_train, y_train, X_test, y_test, slots, sizes, tables)


def _one_hot_csr(codes, starts, n_columns):
    n_rows, n_fields = codes.shape
    X = sp.csr_matrix(
        (
            np.ones(n_rows * n_fields, dtype=np.float32),
            (codes + starts).ravel(),
            np.arange(0, n_rows * n_fields + 1, n_fields),
        ),
        shape=(n_rows, n_columns),
    )
    X.sort_indices()
    return X


def _zipf(rng, n, levels, exponent=1.1):
    weights = 1.0 / np.arange(1, levels + 1) ** exponent
    return rng.choice(levels, size=n, p=weights / weights.sum())


def make_multi_hot(n_train=100_000, n_test=20_000, seed=0):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    sizes = np.array([50_000, 20_000, 20, 24])
    codes = np.column_stack(
        [_zipf(rng, n, sizes[0]), _zipf(rng, n, sizes[1])]
        + [rng.integers(size, size=n) for size in sizes[2:]]
    )
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n_tags = 5_000
    widths = rng.integers(1, MAX_TAGS + 1, size=n)
    unused = np.arange(MAX_TAGS) >= widths[:, None]
    tags = rng.integers(n_tags, size=(n, MAX_TAGS))
    while True:
        tags[unused] = n_tags  # the padding category, sorted last
        tags.sort(axis=1)
        unused = np.arange(MAX_TAGS) >= widths[:, None]
        repeated = np.zeros_like(unused)
        repeated[:, 1:] = (tags[:, 1:] == tags[:, :-1]) & (tags[:, 1:] < n_tags)
        if not repeated.any():
            break
        # draw a row's repeated tags again, until its tags are distinct
        tags[repeated] = rng.integers(n_tags, size=int(repeated.sum()))
    tag_rows = np.repeat(np.arange(n), widths)
    tag_columns = tags[tags < n_tags]
    tag_matrix = sp.csr_matrix(
        (1.0 / np.sqrt(widths[tag_rows]), (tag_rows, tag_columns)),
        shape=(n, n_tags),
        dtype=np.float32,
    )
    X = sp.hstack(
        [_one_hot_csr(codes, starts, int(sizes.sum())), tag_matrix], format="csr"
    )
    X.sort_indices()
    y = (
        rng.normal(0, 0.5, sizes[1])[codes[:, 1]]
        + np.asarray(tag_matrix @ rng.normal(0, 0.5, n_tags))
        + rng.normal(0, 0.5, n)
    ).astype(np.float32)
    slots = np.column_stack([codes, tags])
    slot_sizes = list(sizes) + [n_tags + 1] * MAX_TAGS
    tables = [f"field{f}" for f in range(len(sizes))] + ["tags"] * MAX_TAGS
    return Shape(
        X[:n_train], y[:n_train], X[n_train:], y[n_train:], slots, slot_sizes, tables
    )


def make_wide(n_train=100_000, n_test=20_000, seed=0):
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    sizes = np.array([500_000, 400_000, 80_000, 15_000, 4_000, 800, 150, 50])
    codes = np.column_stack([rng.integers(size, size=n) for size in sizes])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    X = _one_hot_csr(codes, starts, int(sizes.sum()))
    y = (
        rng.normal(0, 0.5, sizes[3])[codes[:, 3]]
        + np.sign(codes[:, 4] % 2 - 0.5) * np.sign(codes[:, 5] % 2 - 0.5)
        + rng.normal(0, 0.5, n)
    ).astype(np.float32)
    tables = [f"field{f}" for f in range(len(sizes))]
    return Shape(
        X[:n_train], y[:n_train], X[n_train:], y[n_train:], codes, sizes, tables
    )


def load_shape(name, data_dir=None):
    if name == "frappe":
        from _frappe import load_frappe

        return _one_hot_shape(*load_frappe(data_dir))
    if name == "ctr39":
        from bench_contention import make_ctr39

        return _one_hot_shape(*make_ctr39())
    return {"multi-hot": make_multi_hot, "wide-1m": make_wide}[name]()


def run_skafm(args, shape):
    return time_skafm(args, (shape.X_train, shape.y_train, shape.X_test, None))


def run_deepctr(args, shape):
    from deepctr_torch.inputs import SparseFeat

    names = [f"slot{s}" for s in range(len(shape.slot_sizes))]
    columns = [
        SparseFeat(name, int(size), embedding_dim=args.n_factors, embedding_name=table)
        for name, size, table in zip(names, shape.slot_sizes, shape.tables, strict=True)
    ]

    def inputs(slots):
        return {name: slots[:, s] for s, name in enumerate(names)}

    return time_deepctr(
        args,
        columns,
        inputs(shape.slots_train),
        shape.y_train,
        inputs(shape.slots_test),
    )


def run_torchfm(args, shape):
    return time_torchfm(
        args, shape.slot_sizes, shape.slots_train, shape.y_train, shape.slots_test
    )


RUNNERS = {"skafm": run_skafm, "deepctr-torch": run_deepctr, "torchfm": run_torchfm}


def worker(args):
    """Train one library on one shape; print its measurements as JSON."""
    shape = load_shape(args.shape, args.data_dir)
    try:
        epochs, predict_seconds, latency, _ = RUNNERS[args.worker](args, shape)
    except ImportError as error:
        print(json.dumps({"error": f"not importable: {error}"}))
        return
    seconds = float(np.median(epochs[1:] or epochs))
    X = shape.X_train
    print(
        json.dumps(
            {
                "epoch_seconds": epochs,
                "seconds_per_epoch": seconds,
                "train_rows_per_s": X.shape[0] / seconds,
                "predict_rows_per_s": shape.X_test.shape[0] / predict_seconds,
                "single_row_latency_ms": 1e3 * latency,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024,
                "rows": [X.shape[0], shape.X_test.shape[0]],
                "columns": X.shape[1],
                "active_per_row": X.nnz / X.shape[0],
            }
        )
    )


def run_one(library, shape, args):
    flags = model_flags(args.epochs, SHAPES[shape], args.data_dir)
    return run_worker(
        [sys.executable, __file__, "--worker", library, "--shape", shape, *flags]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--libraries", default=",".join(LIBRARIES))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None, help="folder with frappe.*.libfm")
    parser.add_argument("--json", default=None, help="also write the results here")
    add_shape_worker_arguments(parser, LIBRARIES, SHAPES)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    results = []
    for shape in args.shapes.split(","):
        for library in args.libraries.split(","):
            result = run_one(library, shape, args)
            result |= {"shape": shape, "library": library}
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
    print(
        f"{'shape':<11}{'library':<15}{'s/epoch':>9}{'train rows/s':>14}"
        f"{'predict rows/s':>16}{'1-row ms':>10}{'peak RSS MB':>13}"
        f"{'training':>10}{'prediction':>12}"
    )
    rows = report["results"]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        mine = [r for r in rows if r["shape"] == shape and "error" not in r]
        peers = [r for r in mine if r["library"] != "skafm"]
        for result in mine:
            line = (
                f"{shape:<11}{result['library']:<15}"
                f"{result['seconds_per_epoch']:>9.2f}"
                f"{result['train_rows_per_s']:>14.0f}"
                f"{result['predict_rows_per_s']:>16.0f}"
                f"{result['single_row_latency_ms']:>10.2f}"
                f"{result['peak_rss_mb']:>13.0f}"
            )
            if result["library"] == "skafm" and peers:
                # against the fastest peer at each
                train = result["train_rows_per_s"] / max(
                    p["train_rows_per_s"] for p in peers
                )
                predict = result["predict_rows_per_s"] / max(
                    p["predict_rows_per_s"] for p in peers
                )
                line += f"{train:>9.1f}x{predict:>11.1f}x"
            print(line)
    for row in rows:
        if "error" in row:
            print(f"{row['shape']} {row['library']}: {row['error']}")


if __name__ == "__main__":
    main()
