"""The search behind skafm's defaults: validation loss of parameter sets on Frappe.

Fits on 90% of the Frappe training file and scores on the other 10% (the same
stratified split as bench_accuracy.py); the test file is never read.

    python benchmarks/search_defaults.py regression '[{}, {"dropout": 0.5}]'
    python benchmarks/search_defaults.py classification '[{"dropout": 0.7}]'
"""

import json
import sys
import time
import warnings
from pathlib import Path

from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_accuracy import load_frappe, task_data, validation_loss  # noqa: E402


def main(argv=None):
    from skafm import AFMClassifier, AFMRegressor

    task, configs = (argv or sys.argv[1:])[:2]
    X_fit, y_fit, X_val, y_val = task_data(task, load_frappe())["split"]
    estimator = AFMRegressor if task == "regression" else AFMClassifier
    warnings.simplefilter("ignore")
    for params in json.loads(configs):
        start = time.perf_counter()
        model = estimator(random_state=0, **params)
        model.fit(X_fit, y_fit, X_val=X_val, y_val=y_val)
        if task == "regression":
            output = model.predict(X_val)
        else:
            output = model.predict_proba(X_val)[:, 1]
        auc = roc_auc_score(y_val > 0, output)
        print(
            f"{params} validation {validation_loss(task, y_val, output):.4f} "
            f"AUC {auc:.4f} epochs {model.n_iter_} "
            f"fit {time.perf_counter() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
