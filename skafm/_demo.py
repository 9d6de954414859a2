"""``python -m skafm``: AFM, a plain FM and a linear model on planted interactions."""

import argparse
import time
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import log_loss, r2_score, roc_auc_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

from ._afm import AFMClassifier, AFMRegressor
from .datasets import make_interaction_data


def demo_models(task, random_state):
    if task == "regression":
        return [
            ("linear (Ridge)", Ridge()),
            (
                "FM (attention=False)",
                AFMRegressor(attention=False, random_state=random_state),
            ),
            ("AFM", AFMRegressor(random_state=random_state)),
        ]
    return [
        ("linear (LogisticRegression)", LogisticRegression(max_iter=1000)),
        (
            "FM (attention=False)",
            AFMClassifier(attention=False, random_state=random_state),
        ),
        ("AFM", AFMClassifier(random_state=random_state)),
    ]


def test_scores(task, model, X_test, y_test):
    if task == "regression":
        y_pred = model.predict(X_test)
        return {
            "RMSE": root_mean_squared_error(y_test, y_pred),
            "R2": r2_score(y_test, y_pred),
        }
    proba = model.predict_proba(X_test)
    return {
        "log-loss": log_loss(y_test, proba),
        "ROC AUC": roc_auc_score(y_test, proba[:, 1]),
    }


def run_demo(n_samples=20_000, task="regression", random_state=0, out=print):
    """Fit the three models on generated data and report their test scores.

    Returns a dict mapping each model's name to its scores.
    """
    X, y, pairs = make_interaction_data(
        n_samples,
        n_fields=10,
        n_categories=10,
        interactions=2,
        task=task,
        random_state=random_state,
    )
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=random_state
    )
    out(
        f"{task}: {X.shape[0]} samples, 10 one-hot fields of 10 categories "
        f"({X.shape[1]} sparse columns); planted interacting field pairs: "
        f"{', '.join(f'{a}x{b}' for a, b in pairs)}. Noise std 0.1.\n"
    )
    results = {}
    for name, model in demo_models(task, random_state):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X_train, y_train)
        seconds = time.perf_counter() - start
        results[name] = test_scores(task, model, X_test, y_test)
        scores = "  ".join(f"{key} {value:.4f}" for key, value in results[name].items())
        out(f"{name:<28} test {scores}  (fit {seconds:.1f} s)")
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m skafm",
        description="Compare AFM with a linear model and a plain FM on synthetic "
        "one-hot data with planted pairwise interactions.",
    )
    parser.add_argument(
        "--task", choices=["regression", "classification"], default="regression"
    )
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--random-state", type=int, default=0)
    args = parser.parse_args(argv)
    run_demo(args.n_samples, args.task, args.random_state)
