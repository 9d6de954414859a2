"""The fitted model as ONNX operators: inputs -> active features -> outputs.

The graph computes what :func:`skafm._nn.inference.additive_parts` does,
row by row: each row's active features are gathered into a padded
(rows, width) block, where width is the widest row of the call (at least
two), and every pair of positions above the diagonal is a pair; padding
and explicit zeros are masked out of the pairs and of the softmax. The
arithmetic is float32, as the network's.

Nothing here depends on skl2onnx: a :class:`GraphWriter` is handed
functions that add a node and a constant, which the standalone export and
the skl2onnx converter each provide.
"""

import numpy as np
from onnx import TensorProto

# Reduce* operators take their axes as an input from this opset on
MIN_OPSET = 18


class GraphWriter:
    """Adds nodes and constants to a graph under unique names.

    Parameters
    ----------
    add_node : callable
        ``add_node(op_type, inputs, outputs, domain, attributes)``.
    add_constant : callable
        ``add_constant(name, array)``.
    unique_name : callable
        ``unique_name(hint)``, a name not used in the graph yet.
    """

    def __init__(self, add_node, add_constant, unique_name):
        self._add_node = add_node
        self._add_constant = add_constant
        self.unique_name = unique_name

    def op(self, op_type, *inputs, output=None, **attributes):
        """Add one node with one output; returns the output's name."""
        output = output or self.unique_name(op_type.lower())
        self._add_node(op_type, list(inputs), [output], "", attributes)
        return output

    def const(self, array, hint="c"):
        """Add a constant tensor; returns its name."""
        name = self.unique_name(hint)
        self._add_constant(name, np.asarray(array))
        return name

    def axes(self, *axes):
        return self.const(np.array(axes, dtype=np.int64), "axes")


def model_parameters(estimator):
    """The predicting network's weights as float32 arrays, and the output units."""
    module = estimator.module_

    def array(name):
        return getattr(module, name).detach().cpu().numpy().astype(np.float32)

    parameters = {
        name: array(name) for name in ("bias", "linear", "embedding", "projection")
    }
    if module.attention:
        for name in ("attention_weight", "attention_bias", "attention_query"):
            parameters[name] = array(name)
    return parameters


def dense_active_features(g, X, n_features):
    """Padded (index, value) of the non-zero entries of a dense (rows, n) input."""
    X = g.op("Cast", X, to=TensorProto.FLOAT)
    # two columns of zeros: every row then has at least two (padding)
    # positions, and TopK never asks for more positions than columns
    rows = g.op("Slice", g.op("Shape", X), g.const([0]), g.const([1]))
    padding = g.op(
        "ConstantOfShape",
        g.op("Concat", rows, g.const(np.array([2], dtype=np.int64)), axis=0),
        value=_float_tensor(0.0),
    )
    X = g.op("Concat", X, padding, axis=1)
    active = g.op(
        "Cast",
        g.op("Not", g.op("Equal", X, g.const(np.float32(0)))),
        to=TensorProto.FLOAT,
    )
    widths = g.op("ReduceSum", active, g.axes(1), keepdims=0)
    width = _padded_width(g, g.op("Cast", widths, to=TensorProto.INT64))
    # ties keep the lower column first, so the active columns come first
    _, positions = _top_k(g, active, width)
    value = g.op("GatherElements", X, positions, axis=1)
    in_range = g.op("Less", positions, g.const(np.array(n_features, dtype=np.int64)))
    index = g.op("Where", in_range, positions, g.const(np.array(0, dtype=np.int64)))
    return index, value


def sparse_active_features(g, indices, values, offsets):
    """Padded (index, value) of CSR rows given as indices, values and offsets."""
    indices = g.op("Cast", indices, to=TensorProto.INT64)
    values = g.op("Cast", values, to=TensorProto.FLOAT)
    offsets = g.op("Cast", offsets, to=TensorProto.INT64)
    starts = g.op("Slice", offsets, g.const([0]), g.const([-1]))
    ends = g.op("Slice", offsets, g.const([1]), g.const([np.iinfo(np.int64).max]))
    widths = g.op("Sub", ends, starts)
    width = _padded_width(g, widths)
    # one padding entry at the end: masked positions point at it, so that
    # gathering never leaves the arrays, even with no entries at all
    n_entries = g.op("Shape", indices)
    indices = g.op("Concat", indices, g.const(np.array([0], dtype=np.int64)), axis=0)
    values = g.op("Concat", values, g.const(np.array([0], dtype=np.float32)), axis=0)
    steps = g.op(
        "Range",
        g.const(np.array(0, dtype=np.int64)),
        g.op("Squeeze", width, g.axes(0)),
        g.const(np.array(1, dtype=np.int64)),
    )
    steps = g.op("Unsqueeze", steps, g.axes(0))
    positions = g.op("Add", g.op("Unsqueeze", starts, g.axes(1)), steps)
    inside = g.op("Less", steps, g.op("Unsqueeze", widths, g.axes(1)))
    positions = g.op("Where", inside, positions, g.op("Squeeze", n_entries, g.axes(0)))
    return g.op("Gather", indices, positions), g.op("Gather", values, positions)


def raw_outputs(g, parameters, index, value):
    """Bias + linear term + pooled pairs: (rows, n_outputs) float32."""
    value_3d = g.op("Unsqueeze", value, g.axes(2))
    scaled = g.op(
        "Mul", g.op("Gather", g.const(parameters["embedding"]), index), value_3d
    )
    linear = g.op(
        "ReduceSum",
        g.op("Mul", g.op("Gather", g.const(parameters["linear"]), index), value_3d),
        g.axes(1),
        keepdims=0,
    )
    active = g.op(
        "Cast",
        g.op("Not", g.op("Equal", value, g.const(np.float32(0)))),
        to=TensorProto.FLOAT,
    )

    # the pairs: positions (l, r) with l < r of a (width, width) grid
    width = g.op("Slice", g.op("Shape", index), g.const([1]), g.const([2]))
    grid = g.op(
        "ConstantOfShape",
        g.op("Concat", width, width, axis=0),
        value=_float_tensor(1.0),
    )
    pairs = g.op(
        "NonZero", g.op("Trilu", grid, g.const(np.array(1, dtype=np.int64)), upper=1)
    )
    left = g.op("Gather", pairs, g.const(np.array(0, dtype=np.int64)))
    right = g.op("Gather", pairs, g.const(np.array(1, dtype=np.int64)))
    products = g.op(
        "Mul",
        g.op("Gather", scaled, left, axis=1),
        g.op("Gather", scaled, right, axis=1),
    )
    real_pairs = g.op(
        "Mul",
        g.op("Gather", active, left, axis=1),
        g.op("Gather", active, right, axis=1),
    )

    if "attention_weight" in parameters:
        hidden = g.op(
            "Relu",
            g.op(
                "Add",
                g.op("MatMul", products, g.const(parameters["attention_weight"].T)),
                g.const(parameters["attention_bias"]),
            ),
        )
        scores = g.op(
            "Squeeze",
            g.op("MatMul", hidden, g.const(parameters["attention_query"])),
            g.axes(2),
        )
        weights = _masked_softmax(g, scores, real_pairs)
    else:
        weights = real_pairs
    pooled = g.op(
        "ReduceSum",
        g.op("Mul", products, g.op("Unsqueeze", weights, g.axes(2))),
        g.axes(1),
        keepdims=0,
    )
    interactions = g.op("MatMul", pooled, g.const(parameters["projection"]))
    return g.op("Add", g.op("Add", linear, interactions), g.const(parameters["bias"]))


def regressor_output(g, raw, scale, offset, output):
    """``raw * scale + offset`` as the (rows, 1) predictions."""
    return g.op(
        "Add",
        g.op("Mul", raw, g.const(np.float32(scale))),
        g.const(np.float32(offset)),
        output=output,
    )


def classifier_outputs(g, raw, classes, label_output, proba_output):
    """Labels (taken from ``classes``) and (rows, n_classes) probabilities."""
    if len(classes) == 2:
        logit = g.op("Squeeze", raw, g.axes(1))
        positive = g.op("Sigmoid", raw)
        g.op(
            "Concat",
            g.op("Sub", g.const(np.float32(1)), positive),
            positive,
            axis=1,
            output=proba_output,
        )
        # from the logit, as predict decides: classes_[1] when it is above 0
        chosen = g.op(
            "Cast", g.op("Greater", logit, g.const(np.float32(0))), to=TensorProto.INT64
        )
    else:
        g.op("Softmax", raw, axis=1, output=proba_output)
        chosen = g.op("ArgMax", raw, axis=1, keepdims=0)
    g.op("Gather", g.const(classes, "classes"), chosen, output=label_output)


def onnx_labels(classes):
    """``classes_`` as the array an ONNX graph can hold: int64 or strings."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "iub":
        return classes.astype(np.int64)
    if classes.dtype.kind == "f" and np.all(classes == np.round(classes)):
        return classes.astype(np.int64)
    if classes.dtype.kind in "UO" and all(isinstance(c, str) for c in classes):
        return classes.astype(object)
    raise ValueError(
        "ONNX export needs integer or string class labels; this model's "
        f"classes_ are {classes.dtype} ({classes[:3].tolist()}...). Refit it with "
        "the labels encoded as integers or strings."
    )


def _padded_width(g, widths):
    """The widest row, at least 2, as a 1-element int64 tensor."""
    widths = g.op("Concat", widths, g.const(np.array([2], dtype=np.int64)), axis=0)
    return g.op("ReduceMax", widths, g.axes(0), keepdims=1)


def _top_k(g, values, k):
    node_values, node_indices = g.unique_name("topk_values"), g.unique_name("topk")
    g._add_node(
        "TopK",
        [values, k],
        [node_values, node_indices],
        "",
        {"axis": 1, "largest": 1, "sorted": 1},
    )
    return node_values, node_indices


def _masked_softmax(g, scores, mask):
    """Softmax of each row's scores over its real pairs; 0 on a row with none."""
    lowest = g.const(np.float32(np.finfo(np.float32).min))
    is_real = g.op("Cast", mask, to=TensorProto.BOOL)
    filled = g.op("Where", is_real, scores, lowest)
    shifted = g.op("Sub", filled, g.op("ReduceMax", filled, g.axes(1), keepdims=1))
    exponentials = g.op("Mul", g.op("Exp", shifted), mask)
    total = g.op("ReduceSum", exponentials, g.axes(1), keepdims=1)
    tiny = g.const(np.float32(np.finfo(np.float32).tiny))
    return g.op("Div", exponentials, g.op("Max", total, tiny))


def _float_tensor(number):
    from onnx import helper

    return helper.make_tensor("value", TensorProto.FLOAT, [1], [number])
