"""The search behind skafm's defaults: validation scores of parameter sets.

Each parameter set is fitted, as a user would fit it (its own early stopping
split included), on 90% of a real data set's training part and scored on
the other 10% (stratified for classification, seed 0). Test parts and the
generated data sets are never read: they confirm the defaults in
bench_suite.py.

    python benchmarks/search_defaults.py movielens-reg '[{}, {"alpha": 3.0}]'
    python benchmarks/search_defaults.py frappe-clf '[{"dropout": 0.7}]' \
        --json out.jsonl
    python benchmarks/search_defaults.py movielens-reg '[{"alpha": 10}]' \
        --seed 0,1,2   # each seed, and the mean of the three models' outputs
    python benchmarks/search_defaults.py movielens-reg \
        '[{"n_kept_samples": 1}]' --system myfm   # myFM on the same split

With ``--system myfm`` a parameter set holds myFM's ``rank`` (32 unless
given) and its ``fit`` options ``n_iter`` (200) and ``n_kept_samples`` (150),
the settings bench_suite.py runs it with.
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite_data import LOADERS  # noqa: E402

TUNING_SETS = ("frappe-reg", "frappe-clf", "movielens-reg", "movielens-clf")


def validation_split(problem):
    """(X_fit, y_fit, X_val, y_val): 90/10 of the training part, seed 0."""
    stratify = problem.y_train if problem.task == "classification" else None
    X_fit, X_val, y_fit, y_val = train_test_split(
        problem.X_train,
        problem.y_train,
        test_size=0.1,
        stratify=stratify,
        random_state=0,
    )
    return X_fit, y_fit, X_val, y_val


def model_output(problem, model, X):
    """What is scored: clipped predictions, or the positive class's probability."""
    if problem.task == "regression":
        output = model.predict(X)
        if problem.clip is not None:
            output = np.clip(output, *problem.clip)
        return output
    return model.predict_proba(X)[:, 1]


def metrics(problem, output, y):
    """Metrics of an output on y; 'loss' is lower-is-better."""
    if problem.task == "regression":
        rmse = root_mean_squared_error(y, output)
        return {"loss": rmse, "rmse": rmse}
    loss = log_loss(y, np.clip(output, 1e-7, 1 - 1e-7))
    return {"loss": loss, "log_loss": loss, "auc": roc_auc_score(y, output)}


def evaluate(problem, model, X, y):
    """Metrics of a fitted model on (X, y); 'loss' is lower-is-better."""
    return metrics(problem, model_output(problem, model, X), y)


def myfm_output(problem, params, seed, X_fit, y_fit, X_val):
    """myFM's clipped predictions or probabilities on X_val."""
    import myfm

    params = dict(params)
    rank = params.pop("rank", 32)
    options = {"n_iter": 200, "n_kept_samples": 150, **params}
    if problem.task == "regression":
        model = myfm.MyFMRegressor(rank=rank, random_seed=seed)
        output = model.fit(X_fit, y_fit, **options).predict(X_val)
        return output if problem.clip is None else np.clip(output, *problem.clip)
    model = myfm.MyFMClassifier(rank=rank, random_seed=seed)
    return model.fit(X_fit, y_fit, **options).predict_proba(X_val)


def main(argv=None):
    from skafm import AFMClassifier, AFMRegressor

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=TUNING_SETS)
    parser.add_argument("configs", help="JSON list of parameter dicts")
    parser.add_argument(
        "--seed",
        default="0",
        help="random_state of the fits; several (0,1,2) also score the mean "
        "of their outputs, a line of its own",
    )
    parser.add_argument("--json", default=None, help="append JSON lines here")
    parser.add_argument(
        "--system",
        choices=("skafm", "myfm"),
        default="skafm",
        help="whose parameter sets these are",
    )
    args = parser.parse_args(argv)
    seeds = [int(seed) for seed in args.seed.split(",")]
    problem = LOADERS[args.dataset]()
    X_fit, y_fit, X_val, y_val = validation_split(problem)
    estimator = AFMRegressor if problem.task == "regression" else AFMClassifier
    warnings.simplefilter("ignore")

    def report(line):
        print(json.dumps(line), flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(line) + "\n")

    for params in json.loads(args.configs):
        outputs = []
        for seed in seeds:
            start = time.perf_counter()
            if args.system == "myfm":
                output = myfm_output(problem, params, seed, X_fit, y_fit, X_val)
                outputs.append(output)
                report(
                    {
                        "dataset": args.dataset,
                        "system": "myfm",
                        "params": params,
                        "seed": seed,
                        **metrics(problem, output, y_val),
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                continue
            model = estimator(random_state=seed, **params).fit(X_fit, y_fit)
            seconds = time.perf_counter() - start
            outputs.append(model_output(problem, model, X_val))
            report(
                {
                    "dataset": args.dataset,
                    "params": params,
                    "seed": seed,
                    **metrics(problem, outputs[-1], y_val),
                    "epochs": model.n_iter_,
                    "alpha_": getattr(model, "alpha_", None),
                    "phases": [
                        [
                            phase["phase"],
                            phase["n_iter"],
                            phase["best_validation_score"],
                        ]
                        for phase in model.phases_
                    ],
                    "seconds": round(seconds, 1),
                }
            )
        if len(seeds) > 1:
            report(
                {
                    "dataset": args.dataset,
                    "params": params,
                    "mean_of_seeds": seeds,
                    **metrics(problem, np.mean(outputs, axis=0), y_val),
                }
            )


if __name__ == "__main__":
    main()
