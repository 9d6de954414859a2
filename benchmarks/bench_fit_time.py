"""Wall time of one default fit on a real data set, and its test score.

Fits ``AFMRegressor(random_state=0)`` (or ``AFMClassifier``) with every
other parameter at its default on the training part, as a user would, and
scores the test part: the check behind "Frappe fits in under 2 minutes on
2 cores".

    python benchmarks/bench_fit_time.py frappe-reg
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite_data import LOADERS  # noqa: E402
from search_defaults import evaluate  # noqa: E402


def main(argv=None):
    from skafm import AFMClassifier, AFMRegressor

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(LOADERS))
    args = parser.parse_args(argv)
    problem = LOADERS[args.dataset]()
    estimator = AFMRegressor if problem.task == "regression" else AFMClassifier
    start = time.perf_counter()
    model = estimator(random_state=0).fit(problem.X_train, problem.y_train)
    seconds = time.perf_counter() - start
    line = {
        "dataset": args.dataset,
        "fit_seconds": round(seconds, 1),
        "epochs": model.n_iter_,
        "best_phase": model.best_phase_,
        "alpha_": model.alpha_,
        **evaluate(problem, model, problem.X_test, problem.y_test),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
