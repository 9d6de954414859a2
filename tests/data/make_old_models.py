"""Write the models tests/test_old_models.py loads, with the skafm of this commit.

Run from the repository root (``python tests/data/make_old_models.py``) only
when a new set of stored models is wanted: the point of the files is that they
were written by an older skafm than the one under test.
"""

import pickle
import subprocess
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import skafm
import skafm.io
from skafm import AFMClassifier, AFMRegressor
from skafm.datasets import make_interaction_data

HERE = Path(__file__).parent
SETTINGS = dict(n_factors=4, attention_size=4, max_iter=3, random_state=0)


def data():
    X, y, _ = make_interaction_data(
        300, n_fields=4, n_categories=5, noise=0.1, random_state=0
    )
    return X, y


def models():
    X, y = data()
    classes = np.digitize(y, np.quantile(y, [0.33, 0.66]))
    return {
        "regressor": AFMRegressor(**SETTINGS).fit(X, y),
        "fm_regressor": AFMRegressor(attention=False, **SETTINGS).fit(X, y),
        "binary_classifier": AFMClassifier(**SETTINGS).fit(X, y > np.median(y)),
        "multiclass_classifier": AFMClassifier(**SETTINGS).fit(X, classes),
    }


def main():
    X, _ = data()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    X_csr = sp.csr_matrix(X)
    expected = {
        "X_data": X_csr.data,
        "X_indices": X_csr.indices,
        "X_indptr": X_csr.indptr,
        "X_shape": np.array(X_csr.shape),
    }
    for name, model in models().items():
        with open(HERE / f"old_{name}.pkl", "wb") as file:
            pickle.dump(model, file)
        skafm.io.dump(model, HERE / f"old_{name}.skafm")
        expected[f"{name}_predict"] = model.predict(X)
        if hasattr(model, "predict_proba"):
            expected[f"{name}_proba"] = model.predict_proba(X)
    np.savez(HERE / "old_models_predictions.npz", **expected)
    (HERE / "old_models_version.txt").write_text(
        f"skafm {skafm.__version__}, commit {commit}\n"
    )


if __name__ == "__main__":
    main()
