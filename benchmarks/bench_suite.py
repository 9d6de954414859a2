"""Accuracy and fit time over the whole suite of data, skafm against its peers.

Data sets (benchmarks/_suite_data.py): Frappe regression and classification,
ml-latest-small rating regression and "rating >= 4" classification (both
read from ../shared/data), and four generated shapes with planted
interactions (power-law ids, many fields, real-valued columns mixed with
one-hot, a multi-hot field). Systems:

- ``skafm-default``: ``AFMRegressor()`` / ``AFMClassifier()`` with
  ``random_state=0`` and nothing else, fitted on the whole training part;
- ``skafm-tuned``: the best of a small grid, each fitted on 90% of the
  training part and chosen on the other 10% (search_defaults.py's split);
- ``skafm-fm``: ``attention=False`` with the other defaults;
- ``linear``: ``Ridge()`` / ``LogisticRegression(max_iter=1000)``, defaults;
- ``myfm``: myFM's Bayesian FM, rank 32, 200 Gibbs iterations (150 kept);
- ``deepctr-torch`` and ``torchfm``: their AFM models, k = t = 64, Adam 1e-3,
  batch 512, the best of up to 20 epochs on the 10% validation part (an
  early stop they do not have built in); only on data whose every column
  belongs to a one-hot field, the only input both take.

The test parts are scored once per system. Regression reports RMSE
(rating predictions clipped to the rating scale), classification ROC AUC
and log-loss; every system's fit time is in seconds.

    python benchmarks/bench_suite.py [--datasets a,b] [--systems a,b] [--json PATH]
"""

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _suite_data import LOADERS  # noqa: E402
from search_defaults import evaluate, validation_split  # noqa: E402

SYSTEMS = (
    "skafm-default",
    "skafm-tuned",
    "skafm-fm",
    "linear",
    "myfm",
    "deepctr-torch",
    "torchfm",
)
PEER_EPOCHS = 20
PEER_PATIENCE = 3

# skafm-tuned's grid: the settings a user would try first
TUNING_GRID = [
    {},
    {"alpha": 3.0},
    {"alpha": 100.0},
    {"learning_rate_init": 0.01},
    {"n_factors": 16},
    {"attention": False},
]


class Fitted:
    """A fitted model behind the predict / predict_proba that evaluate() calls."""

    def __init__(self, predict=None, predict_proba=None):
        self.predict, self.predict_proba = predict, predict_proba


def skafm_estimator(problem, **params):
    from skafm import AFMClassifier, AFMRegressor

    estimator = AFMRegressor if problem.task == "regression" else AFMClassifier
    return estimator(random_state=0, **params)


def run_skafm_default(problem):
    return skafm_estimator(problem).fit(problem.X_train, problem.y_train), {}


def run_skafm_fm(problem):
    model = skafm_estimator(problem, attention=False)
    return model.fit(problem.X_train, problem.y_train), {}


def run_skafm_tuned(problem):
    X_fit, y_fit, X_val, y_val = validation_split(problem)
    best = None
    for params in TUNING_GRID:
        model = skafm_estimator(problem, **params).fit(X_fit, y_fit)
        loss = evaluate(problem, model, X_val, y_val)["loss"]
        print(f"    {params}: validation {loss:.4f}", flush=True)
        if best is None or loss < best[0]:
            best = (loss, params, model)
    return best[2], {"params": best[1]}


def run_linear(problem):
    from sklearn.linear_model import LogisticRegression, Ridge

    if problem.task == "regression":
        model = Ridge()
    else:
        model = LogisticRegression(max_iter=1000)
    return model.fit(problem.X_train, problem.y_train), {}


def run_myfm(problem):
    import myfm

    options = dict(n_iter=200, n_kept_samples=150)
    if problem.task == "regression":
        model = myfm.MyFMRegressor(rank=32, random_seed=0)
        model.fit(problem.X_train, problem.y_train, **options)
        return Fitted(predict=model.predict), {}
    model = myfm.MyFMClassifier(rank=32, random_seed=0)
    model.fit(problem.X_train, problem.y_train, **options)

    def proba(X):
        p = model.predict_proba(X)
        return np.column_stack([1 - p, p])

    return Fitted(predict_proba=proba), {}


def field_codes(problem, X):
    """(n_rows, n_fields) category index of each row in each one-hot field."""
    X = X.tocsr()
    codes = np.zeros((X.shape[0], len(problem.fields)), dtype=np.int64)
    rows = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    for f, (start, stop) in enumerate(problem.fields):
        inside = (X.indices >= start) & (X.indices < stop)
        codes[rows[inside], f] = X.indices[inside] - start
    return codes


def best_of_epochs(train_one_epoch, output, problem, X_val, y_val, state, load):
    """Train until PEER_PATIENCE epochs bring no better validation loss."""
    best, since = (np.inf, None, 0), 0
    for epoch in range(1, PEER_EPOCHS + 1):
        train_one_epoch()
        loss = evaluate(problem, Fitted(*output()), X_val, y_val)["loss"]
        if loss < best[0]:
            best, since = (loss, copy.deepcopy(state()), epoch), 0
        else:
            since += 1
            if since >= PEER_PATIENCE:
                break
    load(best[1])
    return best[2]


def _outputs(problem, raw):
    """(predict, predict_proba) from a function X -> raw output."""
    if problem.task == "regression":
        return raw, None

    def proba(X):
        p = raw(X)
        return np.column_stack([1 - p, p])

    return None, proba


def run_deepctr(problem):
    import torch
    from deepctr_torch.inputs import SparseFeat
    from deepctr_torch.models import AFM

    if problem.fields is None:
        raise NotImplementedError("takes one-hot fields only")
    sizes = [stop - start for start, stop in problem.fields]
    names = [f"field{f}" for f in range(len(sizes))]
    columns = [
        SparseFeat(n, s, embedding_dim=64) for n, s in zip(names, sizes, strict=True)
    ]

    def inputs(X):
        codes = field_codes(problem, X)
        return {name: codes[:, f] for f, name in enumerate(names)}

    torch.manual_seed(0)
    binary = problem.task == "classification"
    model = AFM(
        columns,
        columns,
        attention_factor=64,
        task="binary" if binary else "regression",
        device="cpu",
    )
    model.compile("adam", "binary_crossentropy" if binary else "mse")
    X_fit, y_fit, X_val, y_val = validation_split(problem)
    fit_inputs = inputs(X_fit)

    def raw(X):
        return model.predict(inputs(X), batch_size=4096).ravel()

    epochs = best_of_epochs(
        lambda: model.fit(fit_inputs, y_fit, batch_size=512, epochs=1, verbose=0),
        lambda: _outputs(problem, raw),
        problem,
        X_val,
        y_val,
        model.state_dict,
        model.load_state_dict,
    )
    return Fitted(*_outputs(problem, raw)), {"epochs": epochs}


def run_torchfm(problem):
    import torch
    from torchfm.model.afm import AttentionalFactorizationMachineModel

    if problem.fields is None:
        raise NotImplementedError("takes one-hot fields only")
    sizes = np.array([stop - start for start, stop in problem.fields])
    torch.manual_seed(0)
    model = AttentionalFactorizationMachineModel(sizes, 64, 64, (0.0, 0.0))
    binary = problem.task == "classification"

    def forward(x):
        return (model.linear(x) + model.afm(model.embedding(x))).squeeze(1)

    def raw(X):
        x = torch.from_numpy(field_codes(problem, X))
        model.eval()
        with torch.no_grad():
            out = torch.cat([forward(x[i : i + 4096]) for i in range(0, len(x), 4096)])
        return (torch.sigmoid(out) if binary else out).numpy()

    X_fit, y_fit, X_val, y_val = validation_split(problem)
    x_fit = torch.from_numpy(field_codes(problem, X_fit))
    t_fit = torch.from_numpy(np.asarray(y_fit, dtype=np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = (
        torch.nn.functional.binary_cross_entropy_with_logits
        if binary
        else torch.nn.functional.mse_loss
    )
    generator = torch.Generator().manual_seed(0)

    def one_epoch():
        model.train()
        order = torch.randperm(len(x_fit), generator=generator)
        for start in range(0, len(order), 512):
            rows = order[start : start + 512]
            loss = loss_fn(forward(x_fit[rows]), t_fit[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epochs = best_of_epochs(
        one_epoch,
        lambda: _outputs(problem, raw),
        problem,
        X_val,
        y_val,
        model.state_dict,
        model.load_state_dict,
    )
    return Fitted(*_outputs(problem, raw)), {"epochs": epochs}


RUNNERS = {
    "skafm-default": run_skafm_default,
    "skafm-tuned": run_skafm_tuned,
    "skafm-fm": run_skafm_fm,
    "linear": run_linear,
    "myfm": run_myfm,
    "deepctr-torch": run_deepctr,
    "torchfm": run_torchfm,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default=",".join(LOADERS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    report = []
    for name in args.datasets.split(","):
        try:
            problem = LOADERS[name]()
        except OSError as error:
            print(f"{name}: data not found ({error})", flush=True)
            report.append({"dataset": name, "error": f"data not found: {error}"})
            continue
        for system in args.systems.split(","):
            print(f"{name} / {system}", flush=True)
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model, details = RUNNERS[system](problem)
            except (ImportError, NotImplementedError) as error:
                print(f"  skipped: {error}", flush=True)
                report.append(
                    {"dataset": name, "system": system, "skipped": str(error)}
                )
                continue
            seconds = time.perf_counter() - start
            metrics = evaluate(problem, model, problem.X_test, problem.y_test)
            metrics.pop("loss")
            if hasattr(model, "best_phase_"):  # a skafm model
                details["epochs"] = model.n_iter_
                details["best_phase"] = model.best_phase_
            result = {
                "dataset": name,
                "task": problem.task,
                "system": system,
                "fit_seconds": round(seconds, 1),
                **metrics,
                **details,
            }
            report.append(result)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"  test {shown}  fit {seconds:.0f} s  {details}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
