"""Export fitted models to ONNX, for serving without Python, torch or skafm.

Two ways in (the optional extra ``skafm[onnx]`` installs onnx, skl2onnx and
onnxruntime):

- :func:`to_onnx` exports a bare estimator; its graph takes CSR rows as
  ``indices``, ``values`` and ``offsets`` tensors, or a dense ``X``;
- importing this module registers converters for :class:`~skafm.AFMRegressor`
  and :class:`~skafm.AFMClassifier` with skl2onnx, so that
  ``skl2onnx.to_onnx(pipeline, X_sample)`` turns a whole fitted Pipeline
  (OneHotEncoder, ColumnTransformer, scalers, then the AFM model) into one
  graph that takes the raw columns.

The graph computes the model's outputs as ``predict`` and ``predict_proba``
do, in float32: the weight average where the model predicts with it, the
regressor's target scaling, rows with no pairs.
"""

try:
    import onnx  # noqa: F401
    import skl2onnx  # noqa: F401
except ImportError as exc:
    raise ImportError(
        "skafm.onnx needs the optional packages onnx and skl2onnx: "
        'pip install "skafm[onnx]"'
    ) from exc

from ._export import to_onnx
from ._skl2onnx import register_converters

register_converters()

__all__ = ["register_converters", "to_onnx"]
