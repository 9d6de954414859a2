"""Serving latency: onnxruntime on the exported graph against ``model.predict``.

An ``AFMRegressor`` (defaults, ``max_iter=3``: latency does not depend on
how well it is trained) is fitted on Frappe's training file, exported with
``skafm.onnx.to_onnx`` (the sparse-index graph and the dense one) and
scored on rows of the test file: one row at a time and 1,000 rows at a
time, each figure the median of ``--repeats`` calls after a warm-up call.
onnxruntime runs with one intra-op thread and skafm with ``n_threads=1``,
as a service that answers several requests at once would run them. The
outputs of the two are compared on the 1,000 rows.

    python benchmarks/bench_serving.py [--repeats 200] [--json PATH]
"""

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _frappe import load_frappe  # noqa: E402


def median_ms(call, repeats):
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def sparse_feeds(X):
    return {
        "indices": X.indices.astype(np.int64),
        "values": X.data.astype(np.float32),
        "offsets": X.indptr.astype(np.int64),
    }


def main(argv=None):
    import onnxruntime as ort

    from skafm import AFMRegressor
    from skafm.onnx import to_onnx

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    X_train, y_train, X_test, _ = load_frappe()
    warnings.simplefilter("ignore")
    model = AFMRegressor(max_iter=3, n_threads=1, random_state=0).fit(X_train, y_train)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sessions = {
        fmt: ort.InferenceSession(
            to_onnx(model, input_format=fmt).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        for fmt in ("sparse", "dense")
    }
    one, batch = X_test[:1], X_test[:1000]
    feeds = {
        "sparse": (sparse_feeds(one), sparse_feeds(batch)),
        "dense": ({"X": one.toarray()}, {"X": batch.toarray()}),
    }
    results = {
        "skafm predict": (
            median_ms(lambda: model.predict(one), args.repeats),
            median_ms(lambda: model.predict(batch), max(args.repeats // 10, 5)),
        )
    }
    for fmt, session in sessions.items():
        single, many = feeds[fmt]
        results[f"onnxruntime, {fmt} graph"] = (
            median_ms(lambda s=session, f=single: s.run(None, f), args.repeats),
            median_ms(
                lambda s=session, f=many: s.run(None, f), max(args.repeats // 10, 5)
            ),
        )
    difference = float(
        np.abs(
            sessions["sparse"].run(None, feeds["sparse"][1])[0][:, 0]
            - model.predict(batch)
        ).max()
    )
    print(f"{'':<28} {'1 row (ms)':>11} {'1,000 rows (ms)':>16}")
    for name, (single, many) in results.items():
        print(f"{name:<28} {single:>11.3f} {many:>16.2f}")
    print(f"largest |onnxruntime - predict| on 1,000 rows: {difference:.2e}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"latency_ms": results, "max_abs_difference": difference})
        )


if __name__ == "__main__":
    main()
