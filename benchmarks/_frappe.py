"""Loading the Frappe split of ``../shared/data/frappe`` for the benchmarks.

The files are in libFM format with exactly one active one-hot feature per
field (10 fields, contiguous feature ids per field). skafm reads the sparse
matrix directly; the peers want one categorical index per field, which
:func:`field_indices` derives.
"""

import os
from pathlib import Path

import numpy as np
from sklearn.datasets import load_svmlight_file

N_FEATURES = 5382
DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "frappe"


def data_dir(path=None):
    path = Path(path or os.environ.get("SKAFM_FRAPPE_DIR", DEFAULT_DIR)).resolve()
    if not (path / "frappe.validation.libfm").exists():
        raise SystemExit(
            f"Frappe data not found in {path}: pass --data-dir or set SKAFM_FRAPPE_DIR "
            "(see ../shared/README.md)."
        )
    return path


def load_frappe(path=None):
    """Return ``(X_train, y_train, X_test, y_test)``; labels in {-1, 1}.

    The training part is frappe.validation.libfm (57,722 rows), the test part
    frappe.test.libfm (28,860 rows), as ../shared/README.md prescribes.
    """
    path = data_dir(path)
    X_train, y_train = load_svmlight_file(
        str(path / "frappe.validation.libfm"),
        n_features=N_FEATURES,
        zero_based=True,
        dtype=np.float32,
    )
    X_test, y_test = load_svmlight_file(
        str(path / "frappe.test.libfm"),
        n_features=N_FEATURES,
        zero_based=True,
        dtype=np.float32,
    )
    return X_train, y_train, X_test, y_test


def field_offsets(X_train, X_test):
    """Start of each field's id range and each field's vocabulary size."""
    both = np.concatenate(
        [np.sort(X.indices.reshape(X.shape[0], -1), axis=1) for X in (X_train, X_test)]
    )
    starts = both.min(axis=0)
    sizes = both.max(axis=0) - starts + 1
    return starts, sizes


def field_indices(X, starts):
    """(n_rows, n_fields) array of each row's category index within each field."""
    columns = np.sort(X.indices.reshape(X.shape[0], -1), axis=1)
    return (columns - starts).astype(np.int64)


def deepctr_features(X_train, X_test, embedding_dim):
    """DeepCTR-Torch feature columns, and a function from X to its input dict."""
    from deepctr_torch.inputs import SparseFeat

    starts, sizes = field_offsets(X_train, X_test)
    names = [f"field{f}" for f in range(len(starts))]
    columns = [
        SparseFeat(name, int(size), embedding_dim=embedding_dim)
        for name, size in zip(names, sizes, strict=True)
    ]

    def as_inputs(X):
        fields = field_indices(X, starts)
        return {name: fields[:, f] for f, name in enumerate(names)}

    return columns, as_inputs
