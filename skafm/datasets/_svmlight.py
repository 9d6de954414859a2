"""Reading a libFM / svmlight file in chunks, for out-of-core training."""

import io
import os
from numbers import Integral

import numpy as np
from sklearn.datasets import load_svmlight_file
from sklearn.utils._param_validation import Interval, StrOptions, validate_params


@validate_params(
    {
        "path": [str, os.PathLike],
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "chunk_bytes": [Interval(Integral, 1, None, closed="left")],
        "zero_based": ["boolean", StrOptions({"auto"})],
        "dtype": "no_validation",
    },
    prefer_skip_nested_validation=True,
)
def iter_svmlight_chunks(
    path, n_features, *, chunk_bytes=64 * 2**20, zero_based=True, dtype=np.float64
):
    """Yield ``(X, y)`` chunks of a libFM / svmlight file without loading it whole.

    Each chunk is about ``chunk_bytes`` of the file, extended to the end of its
    last line and parsed by :func:`sklearn.datasets.load_svmlight_file`, so
    the chunks hold the file's lines in order, each exactly once, and memory
    stays near one chunk. Feed them to ``partial_fit``, once per epoch::

        for epoch in range(n_epochs):
            for X, y in iter_svmlight_chunks(path, n_features):
                model.partial_fit(X, y, classes=[-1, 1])

    Parameters
    ----------
    path : str or path-like
        The file.

    n_features : int
        Number of columns of every chunk; the file's largest feature index
        plus one (zero-based). It must be known up front, since one chunk
        cannot tell.

    chunk_bytes : int, default=64 * 2**20
        Bytes of the file per chunk (plus the rest of the chunk's last line).

    zero_based : bool or "auto", default=True
        Whether the file's feature indices start at 0 (libFM files, such as
        Frappe's) or at 1 (the svmlight convention). "auto" would guess per
        chunk, and could guess differently for different chunks, so it is
        taken as True, as ``load_svmlight_file`` does with ``offset``.

    dtype : numpy dtype, default=np.float64
        Dtype of the returned matrices.

    Yields
    ------
    X : scipy.sparse.csr_matrix of shape (n_chunk_samples, n_features)
        The chunk's samples.

    y : ndarray of shape (n_chunk_samples,)
        Their targets.

    Examples
    --------
    >>> import tempfile, os
    >>> import numpy as np
    >>> from sklearn.datasets import dump_svmlight_file
    >>> from skafm.datasets import iter_svmlight_chunks
    >>> X = np.eye(6)
    >>> y = np.arange(6)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = os.path.join(folder, "data.libfm")
    ...     dump_svmlight_file(X, y, path, zero_based=True)
    ...     chunks = iter_svmlight_chunks(path, 6, chunk_bytes=20)
    ...     sizes = [len(y) for _, y in chunks]
    >>> sum(sizes), len(sizes) > 1
    (6, True)
    """
    if zero_based == "auto":
        zero_based = True
    with open(path, "rb") as file:
        while chunk := file.read(chunk_bytes):
            chunk += file.readline()
            X, y = load_svmlight_file(
                io.BytesIO(chunk),
                n_features=n_features,
                dtype=dtype,
                zero_based=zero_based,
            )
            if X.shape[0]:
                yield X, y
