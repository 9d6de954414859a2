"""A bare estimator as a standalone ONNX model (no skl2onnx needed)."""

import itertools

from onnx import TensorProto, helper, numpy_helper
from sklearn.base import is_classifier
from sklearn.utils.validation import check_is_fitted

from . import _graph

INPUT_FORMATS = ("sparse", "dense")


def to_onnx(estimator, *, input_format="sparse", opset=_graph.MIN_OPSET):
    """Export a fitted AFMRegressor or AFMClassifier as an ONNX model.

    ONNX Runtime has no sparse inputs, so the default graph takes a batch of
    CSR rows as three tensors: ``indices`` (int64, every row's active column
    ids, row after row), ``values`` (float32, the same length) and
    ``offsets`` (int64, n_rows + 1: row i holds entries ``offsets[i]`` to
    ``offsets[i + 1]``), which are a ``scipy.sparse.csr_matrix``'s
    ``indices``, ``data`` and ``indptr``. ``input_format="dense"`` takes one
    float32 tensor ``X`` of shape ``(n_rows, n_features_in_)`` instead. Explicit
    zeros are not active features, as in ``predict``.

    Outputs are named as skl2onnx names them: the regressor's ``variable``
    of shape (n_rows, 1); the classifier's ``label`` (n_rows,) and
    ``probabilities`` (n_rows, n_classes), as ``predict`` and
    ``predict_proba`` return them.

    Parameters
    ----------
    estimator : AFMRegressor or AFMClassifier
        A fitted estimator (not a Pipeline: use :func:`skl2onnx.to_onnx`
        after ``import skafm.onnx`` for those).
    input_format : {"sparse", "dense"}, default="sparse"
        The graph's inputs, see above.
    opset : int, default=18
        ONNX opset of the graph, at least 18.

    Returns
    -------
    model : onnx.ModelProto
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}."
        )
    if opset < _graph.MIN_OPSET:
        raise ValueError(f"opset must be at least {_graph.MIN_OPSET}, got {opset}.")
    if not hasattr(estimator, "module_") and hasattr(estimator, "steps"):
        raise TypeError(
            "to_onnx exports a bare AFM estimator; for a Pipeline, import "
            "skafm.onnx and call skl2onnx.to_onnx(pipeline, X_sample)."
        )
    check_is_fitted(estimator)
    nodes, constants = [], []
    counter = itertools.count()
    g = _graph.GraphWriter(
        add_node=lambda op, inputs, outputs, domain, attrs: nodes.append(
            helper.make_node(op, inputs, outputs, domain=domain, **attrs)
        ),
        add_constant=lambda name, array: constants.append(
            numpy_helper.from_array(array, name)
        ),
        unique_name=lambda hint: f"{hint}_{next(counter)}",
    )
    n_features = estimator.n_features_in_
    if input_format == "sparse":
        inputs = [
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["n_entries"]),
            helper.make_tensor_value_info("values", TensorProto.FLOAT, ["n_entries"]),
            helper.make_tensor_value_info("offsets", TensorProto.INT64, ["n_offsets"]),
        ]
        index, value = _graph.sparse_active_features(g, "indices", "values", "offsets")
    else:
        inputs = [
            helper.make_tensor_value_info(
                "X", TensorProto.FLOAT, ["n_rows", n_features]
            )
        ]
        index, value = _graph.dense_active_features(g, "X", n_features)
    raw = _graph.raw_outputs(g, _graph.model_parameters(estimator), index, value)
    if is_classifier(estimator):
        classes = _graph.onnx_labels(estimator.classes_)
        _graph.classifier_outputs(g, raw, classes, "label", "probabilities")
        label_type = (
            TensorProto.STRING if classes.dtype == object else TensorProto.INT64
        )
        outputs = [
            helper.make_tensor_value_info("label", label_type, ["n_rows"]),
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["n_rows", len(classes)]
            ),
        ]
    else:
        scale, offset = estimator._output_units()
        _graph.regressor_output(g, raw, scale, offset, "variable")
        outputs = [
            helper.make_tensor_value_info("variable", TensorProto.FLOAT, ["n_rows", 1])
        ]
    graph = helper.make_graph(
        nodes, type(estimator).__name__, inputs, outputs, initializer=constants
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="skafm",
    )
    return model
