"""Predictions of fixed-seed models, to show that a change alters no result.

Fits a regressor, a plain FM, an averaged k = t = 64 regressor, a binary and
a three-class classifier on the first 12,000 rows of Frappe's training file,
and explains 50 test rows; writes every prediction to an .npz file. Run it
at two commits (one from a ``git worktree`` on ``PYTHONPATH``) and compare:

    PYTHONPATH=../old python benchmarks/fingerprint.py old.npz
    python benchmarks/fingerprint.py new.npz
    python benchmarks/fingerprint.py --compare old.npz new.npz

``SKAFM_NATIVE_KERNELS=0`` fingerprints the PyTorch-operations path.
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _frappe import load_frappe  # noqa: E402


def fingerprint(data_dir=None):
    import skafm.inspection
    from skafm import AFMClassifier, AFMRegressor

    X, y, X_test, _ = load_frappe(data_dir)
    X, y = X[:12000], y[:12000]
    settings = dict(max_iter=4, random_state=0)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["regressor"] = AFMRegressor(**settings).fit(X, y).predict(X_test)
        fm = AFMRegressor(attention=False, **settings).fit(X, y)
        out["fm"] = fm.predict(X_test)
        wide = AFMRegressor(attention_size=64, average_window=2, **settings)
        out["wide_averaged"] = wide.fit(X, y).predict(X_test)
        binary = AFMClassifier(**settings).fit(X, y)
        out["binary"] = binary.predict_proba(X_test)
        noise = np.random.RandomState(0).rand(X.shape[0])
        classes = np.digitize(np.asarray(X.sum(1)).ravel() + noise, [10.3, 10.6])
        three = AFMClassifier(**settings).fit(X, classes)
        out["three_classes"] = three.predict_proba(X_test)
        model = AFMRegressor(max_iter=2, random_state=0).fit(X, y)
        explanation = skafm.inspection.explain(model, X_test[:50], as_frame=False)
        out["explained"] = np.asarray(explanation.pairs["contribution"], float)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    if not args.compare:
        np.savez(args.paths[0], **fingerprint(args.data_dir))
        return
    first, second = (np.load(path) for path in args.paths)
    same = True
    for name in first.files:
        equal = np.array_equal(first[name], second[name])
        same &= equal
        largest = float(np.abs(first[name] - second[name]).max())
        verdict = "identical" if equal else "DIFFERENT"
        print(f"{name:<15} {verdict} (max diff {largest:.3g})")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
