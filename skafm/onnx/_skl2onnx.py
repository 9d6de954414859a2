"""skl2onnx converters, so that Pipelines ending in an AFM model convert whole."""

from onnx import TensorProto, numpy_helper

from .. import AFMClassifier, AFMRegressor
from . import _graph


def register_converters():
    """Register skafm's estimators with skl2onnx (done on ``import skafm.onnx``).

    Afterwards ``skl2onnx.to_onnx(model_or_pipeline, X_sample)`` converts
    them. The classifier follows skl2onnx's conventions for classifiers:
    pass ``options={"zipmap": False}`` for probabilities as an
    (n_rows, n_classes) tensor instead of a list of dicts.
    """
    from skl2onnx import update_registered_converter

    update_registered_converter(
        AFMRegressor, "SkafmAFMRegressor", _regressor_shapes, _convert_regressor
    )
    update_registered_converter(
        AFMClassifier,
        "SkafmAFMClassifier",
        _classifier_shapes,
        _convert_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False]},
    )


def _regressor_shapes(operator):
    from skl2onnx.common.data_types import FloatTensorType

    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([rows, 1])


def _classifier_shapes(operator):
    from skl2onnx.common.data_types import (
        FloatTensorType,
        Int64TensorType,
        StringTensorType,
    )

    rows = operator.inputs[0].get_first_dimension()
    classes = _graph.onnx_labels(operator.raw_operator.classes_)
    label_type = StringTensorType if classes.dtype == object else Int64TensorType
    operator.outputs[0].type = label_type([rows])
    operator.outputs[1].type = FloatTensorType([rows, len(classes)])


def _writer(scope, container):
    opset = container.target_opset
    if opset is not None and opset < _graph.MIN_OPSET:
        raise RuntimeError(
            f"skafm's ONNX graph needs target_opset >= {_graph.MIN_OPSET}, got {opset}."
        )

    def add_node(op_type, inputs, outputs, domain, attributes):
        container.add_node(
            op_type,
            inputs,
            outputs,
            op_domain=domain,
            name=scope.get_unique_operator_name(op_type),
            **attributes,
        )

    def add_constant(name, array):
        if array.dtype == object:
            values = [str(label).encode("utf-8") for label in array.ravel()]
            container.add_initializer(
                name, TensorProto.STRING, list(array.shape), values
            )
        else:
            container.add_initializer(name, None, None, numpy_helper.from_array(array))

    return _graph.GraphWriter(add_node, add_constant, scope.get_unique_variable_name)


def _model_inputs(g, operator):
    estimator = operator.raw_operator
    return _graph.dense_active_features(
        g, operator.inputs[0].full_name, estimator.n_features_in_
    )


def _convert_regressor(scope, operator, container):
    g = _writer(scope, container)
    estimator = operator.raw_operator
    index, value = _model_inputs(g, operator)
    raw = _graph.raw_outputs(g, _graph.model_parameters(estimator), index, value)
    scale, offset = estimator._output_units()
    _graph.regressor_output(g, raw, scale, offset, operator.outputs[0].full_name)


def _convert_classifier(scope, operator, container):
    g = _writer(scope, container)
    estimator = operator.raw_operator
    index, value = _model_inputs(g, operator)
    raw = _graph.raw_outputs(g, _graph.model_parameters(estimator), index, value)
    _graph.classifier_outputs(
        g,
        raw,
        _graph.onnx_labels(estimator.classes_),
        operator.outputs[0].full_name,
        operator.outputs[1].full_name,
    )
