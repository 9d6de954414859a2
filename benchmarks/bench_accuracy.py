"""Accuracy on Frappe: skafm with defaults and tuned, against the peers.

Regression on the +/-1 labels (test RMSE, the AFM paper's metric) and binary
classification (labels > 0 positive; test ROC AUC and log-loss), for:

- skafm ``AFMRegressor()`` / ``AFMClassifier()`` with default parameters, fitted
  on the whole training file (its early stopping sets aside its own part);
- skafm tuned: a small grid chosen on a validation part of the training file;
- skafm plain FM (``attention=False``) with the tuned AFM's other settings;
- DeepCTR-Torch ``AFM`` and pytorch-fm ``AttentionalFactorizationMachineModel``
  (k = t = 64, Adam 1e-3, batch 512), the epoch chosen on the validation part;
- myFM (Bayesian FM, rank 64, 200 Gibbs iterations).

Hyperparameters and epochs of every system are chosen on the validation part
(10% of frappe.validation.libfm, stratified, fixed seed); the test file is
predicted once per system, at the end.

    python benchmarks/bench_accuracy.py [--task regression,classification]
                                        [--systems ...] [--data-dir PATH]
"""

import argparse
import copy
import itertools
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _frappe import (  # noqa: E402
    deepctr_features,
    field_indices,
    field_offsets,
    load_frappe,
)

SYSTEMS = (
    "skafm-default",
    "skafm-tuned",
    "skafm-fm",
    "deepctr-torch",
    "torchfm",
    "myfm",
)
PEER_EPOCHS = 30

# The tuning grid for skafm, searched on the validation part.
TUNING_GRID = {
    "n_factors": [64, 128],
    "attention_size": [16],
    "dropout": [0.5, 0.7],
    "average_window": [None, 40],
}


def scores(task, y_true, output):
    """Test metrics; output is a prediction (regression) or P(y=1)."""
    if task == "regression":
        return {"rmse": root_mean_squared_error(y_true, output)}
    clipped = np.clip(output, 1e-7, 1 - 1e-7)
    return {"auc": roc_auc_score(y_true, output), "log_loss": log_loss(y_true, clipped)}


def validation_loss(task, y_true, output):
    """Lower is better: what every system's choices are made on."""
    if task == "regression":
        return root_mean_squared_error(y_true, output)
    return log_loss(y_true, np.clip(output, 1e-7, 1 - 1e-7))


def skafm_estimator(task, **params):
    from skafm import AFMClassifier, AFMRegressor

    return (AFMRegressor if task == "regression" else AFMClassifier)(**params)


def skafm_output(task, model, X):
    return model.predict(X) if task == "regression" else model.predict_proba(X)[:, 1]


def run_skafm_default(task, data):
    X_train, y_train, X_test, _ = data["full"]
    model = skafm_estimator(task, random_state=0).fit(X_train, y_train)
    return skafm_output(task, model, X_test), {"epochs": model.n_iter_}


def tune_skafm(task, data, attention=True, grid=TUNING_GRID):
    X_fit, y_fit, X_val, y_val = data["split"]
    best = None
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        model = skafm_estimator(
            task,
            attention=attention,
            random_state=0,
            **params,
        ).fit(X_fit, y_fit, X_val=X_val, y_val=y_val)
        loss = validation_loss(task, y_val, skafm_output(task, model, X_val))
        print(
            f"    {params} -> validation {loss:.4f} ({model.n_iter_} epochs)",
            flush=True,
        )
        if best is None or loss < best[0]:
            best = (loss, params, model)
    return best


def run_skafm_tuned(task, data):
    _, params, model = tune_skafm(task, data)
    data["tuned_params"] = params
    X_test = data["full"][2]
    return skafm_output(task, model, X_test), params | {"epochs": model.n_iter_}


def run_skafm_fm(task, data):
    params = data.get("tuned_params") or tune_skafm(task, data)[1]
    X_fit, y_fit, X_val, y_val = data["split"]
    model = skafm_estimator(task, attention=False, random_state=0, **params).fit(
        X_fit, y_fit, X_val=X_val, y_val=y_val
    )
    return skafm_output(task, model, data["full"][2]), params | {
        "epochs": model.n_iter_
    }


def best_epoch(train_one_epoch, predict_val, y_val, task, state, load_state):
    """Train up to PEER_EPOCHS epochs; keep the state of the best validation epoch."""
    best = (np.inf, None, 0)
    for epoch in range(1, PEER_EPOCHS + 1):
        train_one_epoch()
        loss = validation_loss(task, y_val, predict_val())
        if loss < best[0]:
            best = (loss, copy.deepcopy(state()), epoch)
    load_state(best[1])
    return best[2]


def run_deepctr(task, data):
    import torch
    from deepctr_torch.models import AFM

    X_fit, y_fit, X_val, y_val = data["split"]
    X_test = data["full"][2]
    columns, inputs = deepctr_features(data["full"][0], X_test, embedding_dim=64)

    torch.manual_seed(0)
    model = AFM(
        columns,
        columns,
        attention_factor=64,
        task=task if task == "regression" else "binary",
        device="cpu",
    )
    model.compile("adam", "mse" if task == "regression" else "binary_crossentropy")
    fit_inputs, val_inputs = inputs(X_fit), inputs(X_val)
    epochs = best_epoch(
        lambda: model.fit(fit_inputs, y_fit, batch_size=512, epochs=1, verbose=0),
        lambda: model.predict(val_inputs, batch_size=4096).ravel(),
        y_val,
        task,
        model.state_dict,
        model.load_state_dict,
    )
    return model.predict(inputs(X_test), batch_size=4096).ravel(), {"epochs": epochs}


def run_torchfm(task, data):
    import torch
    from torchfm.model.afm import AttentionalFactorizationMachineModel

    X_fit, y_fit, X_val, y_val = data["split"]
    X_test = data["full"][2]
    starts, sizes = field_offsets(data["full"][0], X_test)
    torch.manual_seed(0)
    model = AttentionalFactorizationMachineModel(
        sizes.astype(np.int64), 64, 64, (0.0, 0.0)
    )

    def raw(x):
        return (model.linear(x) + model.afm(model.embedding(x))).squeeze(1)

    def output(x):
        model.eval()
        with torch.no_grad():
            out = torch.cat([raw(x[i : i + 4096]) for i in range(0, len(x), 4096)])
        return (out if task == "regression" else torch.sigmoid(out)).numpy()

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_fit = torch.from_numpy(field_indices(X_fit, starts))
    t_fit = torch.from_numpy(y_fit.astype(np.float32))
    x_val = torch.from_numpy(field_indices(X_val, starts))
    generator = torch.Generator().manual_seed(0)
    loss_fn = (
        torch.nn.functional.mse_loss
        if task == "regression"
        else torch.nn.functional.binary_cross_entropy_with_logits
    )

    def one_epoch():
        model.train()
        order = torch.randperm(len(x_fit), generator=generator)
        for start in range(0, len(order), 512):
            rows = order[start : start + 512]
            loss = loss_fn(raw(x_fit[rows]), t_fit[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    epochs = best_epoch(
        one_epoch,
        lambda: output(x_val),
        y_val,
        task,
        model.state_dict,
        model.load_state_dict,
    )
    return output(torch.from_numpy(field_indices(X_test, starts))), {"epochs": epochs}


def run_myfm(task, data):
    import myfm

    X_train, y_train, X_test, _ = data["full"]
    if task == "regression":
        model = myfm.MyFMRegressor(rank=64, random_seed=0)
        model.fit(X_train, y_train, n_iter=200, n_kept_samples=150)
        return model.predict(X_test), {"rank": 64, "gibbs_iterations": 200}
    model = myfm.MyFMClassifier(rank=64, random_seed=0)
    model.fit(X_train, y_train, n_iter=200, n_kept_samples=150)
    return model.predict_proba(X_test), {"rank": 64, "gibbs_iterations": 200}


RUNNERS = {
    "skafm-default": run_skafm_default,
    "skafm-tuned": run_skafm_tuned,
    "skafm-fm": run_skafm_fm,
    "deepctr-torch": run_deepctr,
    "torchfm": run_torchfm,
    "myfm": run_myfm,
}


def task_data(task, frappe):
    X_train, y_train, X_test, y_test = frappe
    if task == "classification":
        y_train, y_test = (y_train > 0).astype(int), (y_test > 0).astype(int)
    stratify = y_train > 0
    X_fit, X_val, y_fit, y_val = train_test_split(
        X_train, y_train, test_size=0.1, stratify=stratify, random_state=0
    )
    return {
        "full": (X_train, y_train, X_test, y_test),
        "split": (X_fit, y_fit, X_val, y_val),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--task", default="regression,classification")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    frappe = load_frappe(args.data_dir)
    report = []
    for task in args.task.split(","):
        data = task_data(task, frappe)
        y_test = data["full"][3]
        for system in args.systems.split(","):
            print(f"{task} / {system}", flush=True)
            start = time.perf_counter()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    output, details = RUNNERS[system](task, data)
            except ImportError as error:
                report.append({"task": task, "system": system, "error": str(error)})
                print(f"  not importable: {error}")
                continue
            seconds = time.perf_counter() - start
            result = {"task": task, "system": system, "seconds": seconds, **details}
            result |= scores(task, y_test, output)
            report.append(result)
            metrics = "  ".join(
                f"{key} {result[key]:.4f}"
                for key in ("rmse", "auc", "log_loss")
                if key in result
            )
            print(f"  test {metrics}  ({seconds:.0f} s) {details}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
