"""Float .tflite -> Keras import (segzoo.litert): real models on real images, tiny models per op, errors.

The reference is always the LiteRT interpreter running the file itself.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from tflite_builder import TinyModel, run_interpreter

from segzoo.errors import ModelError
from segzoo.litert.flatbuffer import constant_values, quantization_problem, read_flatbuffer
from segzoo.litert.importer import compare_with_interpreter, import_tflite
from segzoo.litert.sparsity import DENSE, SPARSE_CSR, DimensionMetadata, Sparsity, densify

TOLERANCE = 1e-4
"""Largest output difference allowed, as a fraction of the output's range over the test images."""

REAL_MODELS = {
    # file, input size, scale, offset, aspect ratio (as each model's own application preprocesses)
    "deeplabv3_257": (("google_deeplabv3_257_float", "deeplabv3_257_mv_gpu.tflite"), 257, 1 / 127.5, -1.0, "fit"),
    "pose_detection": (("mediapipe_pose", "pose_detection.tflite"), 224, 1 / 127.5, -1.0, "padding"),
    "pose_landmark": (("mediapipe_pose", "pose_landmark_full.tflite"), 256, 1 / 255.0, 0.0, "fit"),
}
ORIGINAL_OUTPUTS = {
    "deeplabv3_257": ["ResizeBilinear_3"],
    "pose_detection": ["Identity", "Identity_1"],
    "pose_landmark": ["Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4"],
}
ROUND_OFF_BOUND = 2e-3
"""How far the file's own float32 result may be from a float64 evaluation of the same network (fraction of range)."""
ILL_CONDITIONED = {("pose_landmark", "Identity_2")}
"""Outputs whose float32 round-off alone exceeds TOLERANCE (measured: the interpreter itself is 7.7e-4 of the range
away from the float64 result on these images); they are checked against float64 instead (see the test)."""


def _coco_batch(size: int, scale: float, offset: float, aspect: str, count: int = 3) -> np.ndarray:
    from segzoo.data.loader import read_image
    from segzoo.preprocess import Preprocessing, to_model_input

    folder = shared_path("datasets", "coco128_semseg", "images", "train2017")
    pp = Preprocessing(scale=scale, offset=offset, aspect_ratio=aspect)
    paths = sorted(folder.glob("*.jpg"))[:count]
    return np.stack([to_model_input(read_image(p), (size, size), pp)[0] for p in paths]).astype(np.float32)


@pytest.fixture(scope="module")
def imported() -> dict:
    """Each real float model, its rebuilt Keras model and a batch of real COCO images preprocessed for it."""
    found = {}
    for key, (parts, size, scale, offset, aspect) in REAL_MODELS.items():
        path = shared_path("pretrained", *parts)
        found[key] = (path, import_tflite(path), _coco_batch(size, scale, offset, aspect))
    return found


# ---------------------------------------------------------------------------------------- real models
@pytest.mark.parametrize("key", list(REAL_MODELS))
def test_real_model_outputs_equal_the_interpreter(imported, key) -> None:
    path, model, batch = imported[key]
    assert model.output_names == ORIGINAL_OUTPUTS[key]
    rows = compare_with_interpreter(path, model, batch)
    assert [r["output"] for r in rows] == ORIGINAL_OUTPUTS[key]
    assert all(r["range"] > 0 for r in rows)
    exceptions = {(key, r["output"]) for r in rows if r["relative"] > TOLERANCE}
    assert exceptions <= ILL_CONDITIONED, rows
    if exceptions:
        _check_round_off(path, model, batch, {name for _, name in exceptions})


def _check_round_off(path: Path, model, batch: np.ndarray, names: set[str]) -> None:
    """For an ill-conditioned output: the file's float32 result is within ROUND_OFF_BOUND of a float64 evaluation,
    the Keras float32 result is no farther from it than the file is, and 99.9% of the values are within TOLERANCE
    of the file (a wrong import would fail the first check: its float64 result would be far from the file's)."""
    from segzoo.litert.importer import _interpreter_outputs

    reference = dict(zip(model.output_names, _interpreter_outputs(path, [batch])))
    exact = import_tflite(path, dtype="float64")
    float64 = dict(zip(exact.output_names, (np.asarray(o) for o in exact(batch.astype(np.float64)))))
    float32 = dict(zip(model.output_names, (np.asarray(o) for o in model(batch))))
    for name in names:
        ref, spread = reference[name], float(reference[name].max() - reference[name].min())
        file_error = np.abs(ref - float64[name]).max() / spread
        keras_error = np.abs(float32[name] - float64[name]).max() / spread
        assert file_error <= ROUND_OFF_BOUND, (name, file_error)
        assert keras_error <= file_error, (name, keras_error, file_error)
        assert np.quantile(np.abs(float32[name] - ref) / spread, 0.999) <= TOLERANCE
        assert np.mean((float32[name] > 0) == (ref > 0)) >= 0.9999


def test_imported_layers_are_stock_keras_with_readable_names(imported) -> None:
    _, model, _ = imported["deeplabv3_257"]
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds <= {"InputLayer", "Conv2D", "DepthwiseConv2D", "ReLU", "Add", "AveragePooling2D", "UpSampling2D",
                     "Identity", "Concatenate", "ResizeImage"}
    first = model.get_layer("MobilenetV2_Conv_Relu6_conv")
    assert first.get_config()["activation"] == "linear" and first.strides == (2, 2)
    assert model.get_layer("MobilenetV2_Conv_Relu6").get_config()["max_value"] == 6.0
    # 33 -> 257 with align_corners: TF's kernel with the file's flags; 1x1 -> 33x33: a plain UpSampling2D
    final = model.get_layer("ResizeBilinear_3")
    assert final.align_corners and not final.half_pixel_centers
    assert type(model.get_layer("ResizeBilinear_1")).__name__ == "UpSampling2D"
    _, pose, _ = imported["pose_detection"]
    pads = [layer for layer in pose.layers if type(layer).__name__ == "ZeroPadding2D"]
    assert len(pads) == 8
    after_pad = {type(node.operation).__name__: node.operation.padding
                 for pad in pads for node in pad._outbound_nodes}  # noqa: SLF001
    assert set(after_pad.values()) == {"valid"}


def test_formatting_runs_on_the_imported_deeplab_and_keeps_its_outputs(imported) -> None:
    from segzoo.quantization.formatting import optimize_for_per_tensor

    _, model, batch = imported["deeplabv3_257"]
    optimized, report = optimize_for_per_tensor(model, relu6="clip")
    assert report["cle_groups"] >= 30 and report["channel_relus"] > 0 and report["exact"]
    before, after = np.asarray(model(batch)), np.asarray(optimized(batch))
    assert np.abs(before - after).max() <= TOLERANCE * (before.max() - before.min())


def test_saved_and_loaded_model_computes_the_same(imported, tmp_path) -> None:
    import keras

    _, model, batch = imported["pose_detection"]  # holds DepthToSpace, Reshape
    path = tmp_path / "detector.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    for a, b in zip(model(batch[:1]), loaded(batch[:1])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_quantization_loads_a_float_tflite(imported) -> None:
    from segzoo.quantization.quantize import load_float_model

    path, _, _ = imported["deeplabv3_257"]
    model = load_float_model(path)
    assert model.input_shape == (None, 257, 257, 3) and model.output_shape == (None, 257, 257, 21)


# ------------------------------------------------------------------------------------------- sparsity
def test_densify_equals_the_interpreter_on_the_detector_weights() -> None:
    import warnings

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    path = shared_path("pretrained", "mediapipe_pose", "pose_detection.tflite")
    flat = read_flatbuffer(path)
    constants, folded = constant_values(flat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # preserve_all_tensors is a debugging option
        interpreter = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.invoke()
    densify_ops = [op for op in flat.operators if op.name == "DENSIFY"]
    assert len(densify_ops) == 38 and {op.index for op in densify_ops} <= folded
    for op in densify_ops:
        assert flat.tensors[op.inputs[0]].sparsity is not None
        expected = interpreter.get_tensor(op.outputs[0])
        mine = constants[op.outputs[0]]
        assert mine.dtype == expected.dtype == np.float16
        np.testing.assert_array_equal(mine, expected)
        assert 0 < np.count_nonzero(mine) < mine.size
    dequantize = [op for op in flat.operators if op.name == "DEQUANTIZE"]
    assert len(dequantize) == 144 and {op.index for op in dequantize} <= folded
    for op in dequantize:  # float16 weights (dense, or densified just before) become float32 constants
        assert flat.tensors[op.inputs[0]].type == "FLOAT16"
        np.testing.assert_array_equal(constants[op.outputs[0]], constants[op.inputs[0]].astype(np.float32))
        assert constants[op.outputs[0]].dtype == np.float32
    assert not flat.signatures


def _block_sparse(dense: np.ndarray, block: int) -> tuple[np.ndarray, Sparsity]:
    """``dense`` [R,C] stored as rows (dense) x column blocks (CSR) x block entries (dense), zero blocks dropped."""
    rows, cols = dense.shape
    blocks = dense.reshape(rows, cols // block, block)
    segments, indices, values = [0], [], []
    for r in range(rows):
        for c in range(cols // block):
            if blocks[r, c].any():
                indices.append(c)
                values.extend(blocks[r, c])
        segments.append(len(indices))
    dims = (DimensionMetadata(DENSE, rows), DimensionMetadata(SPARSE_CSR, 0, np.array(segments), np.array(indices)),
            DimensionMetadata(DENSE, block))
    return np.asarray(values, dense.dtype), Sparsity((0, 1, 2), (1,), dims)


def test_block_sparse_densify_equals_the_interpreter(tmp_path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    rng = np.random.default_rng(3)
    dense = rng.normal(size=(4, 8)).astype(np.float32) * (rng.random((4, 2, 1)) > 0.5).repeat(4, 2).reshape(4, 8)
    values, sparsity = _block_sparse(dense, 4)
    np.testing.assert_array_equal(densify(values, dense.shape, sparsity), dense)
    params = schema.SparsityParametersT()
    params.traversalOrder, params.blockMap = list(sparsity.traversal_order), list(sparsity.block_map)
    params.dimMetadata = []
    for meta in sparsity.dims:
        raw = schema.DimensionMetadataT()
        raw.format, raw.denseSize = meta.format, meta.dense_size
        if meta.format == SPARSE_CSR:
            raw.arraySegmentsType = raw.arrayIndicesType = schema.SparseIndexVector.Int32Vector
            raw.arraySegments, raw.arrayIndices = schema.Int32VectorT(), schema.Int32VectorT()
            raw.arraySegments.values, raw.arrayIndices.values = list(meta.segments), list(meta.indices)
        params.dimMetadata.append(raw)
    m = TinyModel()
    x = m.tensor("x", [4, 8])
    sparse = m.tensor("w_sparse", [4, 8], values, sparsity=params)
    w, y = m.tensor("w", [4, 8]), m.tensor("y", [4, 8])
    m.op("DENSIFY", [sparse], [w])
    m.op("ADD", [x, w], [y], "AddOptions")
    m.inputs, m.outputs = [x], [y]
    path = m.save(tmp_path / "block_sparse.tflite")
    zeros = np.zeros((4, 8), np.float32)
    np.testing.assert_array_equal(run_interpreter(path, [zeros])[0], dense)
    constants, _ = constant_values(read_flatbuffer(path))
    np.testing.assert_array_equal(constants[w], dense)


# ------------------------------------------------------------------------------------------ tiny models
def _check_tiny(path: Path, inputs: list[np.ndarray]) -> object:
    """Import ``path`` and compare with the interpreter on ``inputs``; the Keras model."""
    model = import_tflite(path)
    reference = run_interpreter(path, inputs)
    outputs = model(inputs[0] if len(inputs) == 1 else inputs)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    for ref, got in zip(reference, outputs):
        got = np.asarray(got)
        assert got.shape[1:] == ref.shape[1:]
        spread = max(float(ref.max() - ref.min()), 1e-6)
        assert np.abs(got - ref).max() <= TOLERANCE * spread, (path.name, np.abs(got - ref).max(), spread)
    return model


def _conv_out(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    effective = (kernel - 1) * dilation + 1
    return -(-size // stride) if padding == "same" else (size - effective) // stride + 1


ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3, "TANH": 4}
CONV_CASES = [  # padding, stride, dilation, kernel, activation
    ("same", 1, 1, 3, "RELU6"), ("same", 2, 1, 3, "NONE"), ("same", 2, 1, 4, "RELU"), ("valid", 2, 1, 3, "TANH"),
    ("same", 1, 2, 3, "RELU_N1_TO_1"), ("valid", 1, 2, 3, "RELU6"), ("valid", 1, 1, 1, "NONE"),
]


@pytest.mark.parametrize("padding,stride,dilation,kernel,activation", CONV_CASES)
@pytest.mark.parametrize("depthwise", [False, True])
def test_conv_padding_stride_dilation_activation(tmp_path, caplog, padding, stride, dilation, kernel, activation,
                                                 depthwise) -> None:
    rng = np.random.default_rng(0)
    h, w, c = 9, 12, 4
    out_c = 8  # depthwise: multiplier 2
    oh, ow = (_conv_out(s, kernel, stride, dilation, padding) for s in (h, w))
    m = TinyModel()
    x = m.tensor("x", [1, h, w, c])
    shape = (1, kernel, kernel, out_c) if depthwise else (out_c, kernel, kernel, c)
    weights, bias = m.constant("w", rng.normal(size=shape)), m.constant("b", rng.normal(size=out_c))
    y = m.tensor("conv/out", [1, oh, ow, out_c])
    options = dict(padding=0 if padding == "same" else 1, strideW=stride, strideH=stride, dilationWFactor=dilation,
                   dilationHFactor=dilation, fusedActivationFunction=ACTIVATIONS[activation])
    if depthwise:
        m.op("DEPTHWISE_CONV_2D", [x, weights, bias], [y], "DepthwiseConv2DOptions", depthMultiplier=2, **options)
    else:
        m.op("CONV_2D", [x, weights, bias], [y], "Conv2DOptions", **options)
    m.inputs, m.outputs = [x], [y]
    model = _check_tiny(m.save(tmp_path / "conv.tflite"), [rng.normal(size=(1, h, w, c)).astype(np.float32)])
    conv = model.layers[1]
    assert type(conv).__name__ == ("DepthwiseConv2D" if depthwise else "Conv2D")
    assert conv.padding == padding and conv.get_config()["activation"] == "linear"
    # TFLite's conv kernels do not apply a fused TANH: neither does the rebuilt model, and it says so
    assert len(model.layers) == (2 if activation in ("NONE", "TANH") else 3)
    assert ("do not apply" in caplog.text) == (activation == "TANH")


def test_explicit_pad_then_valid_conv(tmp_path) -> None:
    rng = np.random.default_rng(1)
    m = TinyModel()
    x = m.tensor("x", [1, 8, 8, 3])
    pads = m.constant("pads", [[0, 0], [1, 2], [0, 1], [0, 0]], np.int32)
    padded = m.tensor("padded", [1, 11, 9, 3])
    weights, bias = m.constant("w", rng.normal(size=(1, 3, 3, 3))), m.constant("b", rng.normal(size=3))
    y = m.tensor("y", [1, 5, 4, 3])
    m.op("PAD", [x, pads], [padded], "PadOptions")
    m.op("DEPTHWISE_CONV_2D", [padded, weights, bias], [y], "DepthwiseConv2DOptions", padding=1, strideW=2,
         strideH=2, depthMultiplier=1, fusedActivationFunction=3)
    m.inputs, m.outputs = [x], [y]
    model = _check_tiny(m.save(tmp_path / "pad.tflite"), [rng.normal(size=(1, 8, 8, 3)).astype(np.float32)])
    pad = model.get_layer("padded")
    assert type(pad).__name__ == "ZeroPadding2D" and pad.padding == ((1, 2), (0, 1))
    assert model.get_layer("y_dwconv").padding == "valid"


RESIZE_CASES = [((5, 7), (9, 13)), ((4, 4), (8, 8)), ((1, 1), (5, 6)), ((6, 6), (4, 3))]


@pytest.mark.parametrize("in_hw,out_hw", RESIZE_CASES)
@pytest.mark.parametrize("align,half", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("method", ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"])
def test_resize_flags(tmp_path, in_hw, out_hw, align, half, method) -> None:
    rng = np.random.default_rng(2)
    m = TinyModel()
    x = m.tensor("x", [1, *in_hw, 3])
    size = m.constant("size", list(out_hw), np.int32)
    y = m.tensor("y", [1, *out_hw, 3])
    options = "ResizeBilinearOptions" if method == "RESIZE_BILINEAR" else "ResizeNearestNeighborOptions"
    m.op(method, [x, size], [y], options, alignCorners=align, halfPixelCenters=half)
    m.inputs, m.outputs = [x], [y]
    _check_tiny(m.save(tmp_path / "resize.tflite"), [rng.normal(size=(1, *in_hw, 3)).astype(np.float32)])


def _deconv_reference(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: tuple[int, int], pad: tuple,
                      out_hw: tuple[int, int]) -> np.ndarray:
    """A transposed convolution written from its definition: every input pixel scatters ``kernel`` (``[O,H,W,I]``)
    times its value to the outputs starting at ``in * stride - pad_before``; outside ``out_hw`` is dropped."""
    _, h, w, _ = x.shape
    out_c, kh, kw, _ = kernel.shape
    out = np.broadcast_to(bias, (1, *out_hw, out_c)).astype(np.float64).copy()
    for i in range(h):
        for j in range(w):
            contribution = np.einsum("ohwi,i->hwo", kernel, x[0, i, j])
            for di in range(kh):
                for dj in range(kw):
                    oi, oj = i * stride[0] - pad[0] + di, j * stride[1] - pad[1] + dj
                    if 0 <= oi < out_hw[0] and 0 <= oj < out_hw[1]:
                        out[0, oi, oj] += contribution[di, dj]
    return out.astype(np.float32)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("in_hw,kernel", [((5, 6), 3), ((4, 5), 4), ((3, 3), 2)])
def test_mediapipe_convolution_2d_transpose_bias(tmp_path, padding, in_hw, kernel) -> None:
    rng = np.random.default_rng(4)
    stride, channels, out_c = 2, 3, 4
    cuts = [max(0, kernel - (n - 1) % stride - 1) if padding == "same" else 0 for n in in_hw]
    out_hw = tuple(stride * (n - 1) + kernel - cut for n, cut in zip(in_hw, cuts))
    m = TinyModel()
    x = m.tensor("x", [1, *in_hw, channels])
    weights = rng.normal(size=(out_c, kernel, kernel, channels)).astype(np.float32)
    bias = rng.normal(size=out_c).astype(np.float32)
    y = m.tensor("deconv", [1, *out_hw, out_c])
    code = 1 if padding == "same" else 2  # TfLitePadding: 1 SAME, 2 VALID
    m.op("Convolution2DTransposeBias", [x, m.constant("w", weights), m.constant("b", bias)], [y],
         custom_options=struct.pack("<iii", code, stride, stride))
    m.inputs, m.outputs = [x], [y]
    path = m.save(tmp_path / "mediapipe_deconv.tflite")
    inputs = rng.normal(size=(1, *in_hw, channels)).astype(np.float32)
    model = _check_tiny(path, [inputs])  # XNNPACK runs MediaPipe's op
    expected = _deconv_reference(inputs, weights, bias, (stride, stride), tuple(c // 2 for c in cuts), out_hw)
    got = np.asarray(model(inputs))
    assert np.abs(got - expected).max() <= TOLERANCE * (expected.max() - expected.min())
    assert type(model.layers[1]).__name__ == "Conv2DTranspose"


@pytest.mark.parametrize("padding,in_hw,kernel,out_hw,activation", [
    ("same", (5, 6), 3, (10, 12), 0), ("same", (5, 5), 4, (10, 10), 1), ("valid", (4, 5), 3, (9, 11), 3),
    ("same", (5, 6), 3, (9, 11), 0),
])
def test_transpose_conv(tmp_path, padding, in_hw, kernel, out_hw, activation) -> None:
    rng = np.random.default_rng(5)
    m = TinyModel()
    x = m.tensor("x", [1, *in_hw, 3])
    shape = m.constant("shape", [1, *out_hw, 4], np.int32)
    weights, bias = m.constant("w", rng.normal(size=(4, kernel, kernel, 3))), m.constant("b", rng.normal(size=4))
    y = m.tensor("y", [1, *out_hw, 4])
    m.op("TRANSPOSE_CONV", [shape, weights, x, bias], [y], "TransposeConvOptions",
         padding=0 if padding == "same" else 1, strideW=2, strideH=2, fusedActivationFunction=activation)
    m.inputs, m.outputs = [x], [y]
    _check_tiny(m.save(tmp_path / "tconv.tflite"), [rng.normal(size=(1, *in_hw, 3)).astype(np.float32)])


def test_keras_conv2d_transpose_converted_by_tensorflow(tmp_path) -> None:
    import keras
    import tensorflow as tf

    inputs = keras.Input((7, 9, 3), batch_size=1)
    x = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same", activation="relu", name="up")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(x))
    path = tmp_path / "keras_deconv.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    flat = read_flatbuffer(path)
    assert "TRANSPOSE_CONV" in {op.name for op in flat.operators}
    assert [sig.key for sig in flat.signatures] == ["serving_default"]  # the shared files have none
    batch = np.random.default_rng(6).normal(size=(1, 7, 9, 3)).astype(np.float32)
    rebuilt = _check_tiny(path, [batch])
    np.testing.assert_allclose(np.asarray(rebuilt(batch)), np.asarray(model(batch)), atol=1e-4)


def _unary_model(name: str, shape: list[int], out_shape: list[int] | None = None, options: str | None = None,
                 extra: list[np.ndarray] | None = None, **values) -> TinyModel:
    m = TinyModel()
    x = m.tensor("x", shape)
    constants = [m.constant(f"c{i}", c, np.asarray(c).dtype) for i, c in enumerate(extra or [])]
    y = m.tensor("y", out_shape or shape)
    m.op(name, [x, *constants], [y], options, **values)
    m.inputs, m.outputs = [x], [y]
    return m


_C = np.array([0.5, -1.0, 2.0, 0.25], np.float32)
OP_CASES = {
    "add_const": lambda: _unary_model("ADD", [1, 3, 3, 4], options="AddOptions", extra=[_C],
                                      fusedActivationFunction=3),
    "sub_const_first": lambda: _reversed_sub(),
    "mul_const": lambda: _unary_model("MUL", [1, 3, 3, 4], options="MulOptions", extra=[_C.reshape(1, 1, 1, 4)]),
    "maximum_const": lambda: _unary_model("MAXIMUM", [1, 3, 3, 4], extra=[_C]),
    "minimum_scalar": lambda: _unary_model("MINIMUM", [1, 3, 3, 4], extra=[np.float32(0.3)]),
    "mean_spatial": lambda: _unary_model("MEAN", [1, 4, 5, 4], [1, 1, 1, 4], "ReducerOptions",
                                         extra=[np.array([1, 2], np.int32)], keepDims=True),
    "mean_channels": lambda: _unary_model("MEAN", [1, 4, 5, 4], [1, 4, 5], "ReducerOptions",
                                          extra=[np.array([3], np.int32)], keepDims=False),
    "hard_swish": lambda: _unary_model("HARD_SWISH", [1, 3, 3, 4]),
    "relu": lambda: _unary_model("RELU", [1, 3, 3, 4]),
    "relu6": lambda: _unary_model("RELU6", [1, 3, 3, 4]),
    "relu_n1_to_1": lambda: _unary_model("RELU_N1_TO_1", [1, 3, 3, 4]),
    "leaky_relu": lambda: _unary_model("LEAKY_RELU", [1, 3, 3, 4], options="LeakyReluOptions", alpha=0.1),
    "prelu": lambda: _unary_model("PRELU", [1, 3, 3, 4], extra=[_C.reshape(1, 1, 4)]),
    "softmax": lambda: _unary_model("SOFTMAX", [1, 3, 3, 4], options="SoftmaxOptions", beta=1.0),
    "tanh": lambda: _unary_model("TANH", [1, 3, 3, 4]),
    "logistic": lambda: _unary_model("LOGISTIC", [1, 3, 3, 4]),
    "strided_slice": lambda: _unary_model("STRIDED_SLICE", [1, 6, 7, 4], [1, 3, 2, 4], "StridedSliceOptions",
                                          extra=[np.array(v, np.int32) for v in ([0, 1, 1, 0], [1, 6, 7, 4],
                                                                                 [1, 2, 3, 1])]),
    "strided_slice_shrink": lambda: _unary_model("STRIDED_SLICE", [1, 6, 7, 4], [1, 7, 4], "StridedSliceOptions",
                                                 extra=[np.array(v, np.int32) for v in ([0, 2, 0, 0], [1, 3, 7, 4],
                                                                                        [1, 1, 1, 1])],
                                                 beginMask=0b1101, endMask=0b1101, shrinkAxisMask=0b0010),
    "fully_connected": lambda: _unary_model("FULLY_CONNECTED", [1, 6], [1, 3], "FullyConnectedOptions",
                                            extra=[np.arange(18, dtype=np.float32).reshape(3, 6) / 9 - 1,
                                                   np.array([0.1, -0.2, 0.3], np.float32)],
                                            fusedActivationFunction=1),
    "fully_connected_4d": lambda: _unary_model("FULLY_CONNECTED", [1, 1, 1, 6], [1, 3], "FullyConnectedOptions",
                                               extra=[np.ones((3, 6), np.float32) / 6, np.zeros(3, np.float32)]),
    "space_to_depth": lambda: _unary_model("SPACE_TO_DEPTH", [1, 4, 6, 3], [1, 2, 3, 12], "SpaceToDepthOptions",
                                           blockSize=2),
    "depth_to_space": lambda: _unary_model("DEPTH_TO_SPACE", [1, 2, 3, 12], [1, 4, 6, 3], "DepthToSpaceOptions",
                                           blockSize=2),
    "average_pool_same": lambda: _unary_model("AVERAGE_POOL_2D", [1, 5, 7, 4], [1, 3, 4, 4], "Pool2DOptions",
                                              padding=0, strideW=2, strideH=2, filterWidth=3, filterHeight=3,
                                              fusedActivationFunction=1),
    "max_pool_valid": lambda: _unary_model("MAX_POOL_2D", [1, 5, 7, 4], [1, 2, 3, 4], "Pool2DOptions",
                                           padding=1, strideW=2, strideH=2, filterWidth=2, filterHeight=2),
    "reshape": lambda: _unary_model("RESHAPE", [1, 4, 6, 3], [1, 24, 3], extra=[np.array([1, -1, 3], np.int32)]),
    "concatenation": lambda: _two_inputs("CONCATENATION", "ConcatenationOptions", axis=-1),
    "add_two": lambda: _two_inputs("ADD", "AddOptions", fusedActivationFunction=1),
    "sub_two": lambda: _two_inputs("SUB", "SubOptions"),
    "mul_two": lambda: _two_inputs("MUL", "MulOptions"),
    "maximum_two": lambda: _two_inputs("MAXIMUM", None),
}


def _reversed_sub() -> TinyModel:
    m = TinyModel()
    x = m.tensor("x", [1, 3, 3, 4])
    c = m.constant("c", _C)
    y = m.tensor("y", [1, 3, 3, 4])
    m.op("SUB", [c, x], [y], "SubOptions")
    m.inputs, m.outputs = [x], [y]
    return m


def _two_inputs(name: str, options: str | None, **values) -> TinyModel:
    m = TinyModel()
    a, b = m.tensor("a", [1, 3, 3, 4]), m.tensor("b", [1, 3, 3, 4])
    y = m.tensor("y", [1, 3, 3, 8] if name == "CONCATENATION" else [1, 3, 3, 4])
    m.op(name, [a, b], [y], options, **values)
    m.inputs, m.outputs = [a, b], [y]
    return m


@pytest.mark.parametrize("case", list(OP_CASES))
def test_common_ops(tmp_path, case) -> None:
    m = OP_CASES[case]()
    path = m.save(tmp_path / f"{case}.tflite")
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=m.tensors[i].shape).astype(np.float32) * 3 for i in m.inputs]
    _check_tiny(path, inputs)


# ------------------------------------------------------------------------------------------------ errors
def test_unsupported_builtin_op_is_named_with_its_index(tmp_path) -> None:
    m = _unary_model("RELU", [1, 3, 3, 4])
    y2 = m.tensor("y2", [1, 3, 3, 4])
    m.op("EXP", [m.outputs[0]], [y2])
    m.outputs = [y2]
    with pytest.raises(ModelError, match=r"op EXP \(op 1\) cannot be rebuilt"):
        import_tflite(m.save(tmp_path / "exp.tflite"))


def test_unsupported_custom_op_is_named_with_its_index(tmp_path) -> None:
    m = _unary_model("MaxPoolingWithArgmax2D", [1, 4, 4, 2], [1, 2, 2, 2])
    with pytest.raises(ModelError, match=r"custom op 'MaxPoolingWithArgmax2D' \(op 0\)"):
        import_tflite(m.save(tmp_path / "custom.tflite"))


def test_st_int8_model_is_refused_as_already_quantized(st_model) -> None:
    assert "UINT8" in quantization_problem(read_flatbuffer(st_model))
    with pytest.raises(ModelError, match="already quantized.*float model"):
        import_tflite(st_model)


def test_int8_weights_are_refused_as_already_quantized(tmp_path) -> None:
    from ai_edge_litert import schema_py_generated as schema

    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint = [0.1], [0]
    m = TinyModel()
    x = m.tensor("x", [1, 6])
    w_int8 = m.tensor("w_int8", [3, 6], np.ones((3, 6), np.int8), np.int8, quantization=q)
    w, y = m.tensor("w", [3, 6]), m.tensor("y", [1, 3])
    m.op("DEQUANTIZE", [w_int8], [w])
    m.op("FULLY_CONNECTED", [x, w, -1], [y], "FullyConnectedOptions")
    m.inputs, m.outputs = [x], [y]
    with pytest.raises(ModelError, match="already quantized.*INT8 quantized constant 'w_int8'"):
        import_tflite(m.save(tmp_path / "int8_weights.tflite"))


def test_truncated_and_foreign_files_are_model_errors(tmp_path) -> None:
    source = shared_path("pretrained", "google_deeplabv3_257_float", "deeplabv3_257_mv_gpu.tflite").read_bytes()
    for cut in (len(source) // 2, len(source) - 1000, 100):
        path = tmp_path / f"cut_{cut}.tflite"
        path.write_bytes(source[:cut])
        with pytest.raises(ModelError, match=str(path)):
            import_tflite(path)
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    with pytest.raises(ModelError, match="not a TFLite flatbuffer"):
        import_tflite(text)


def test_config_accepts_a_float_tflite_for_quantization_and_refuses_a_quantized_one(st_model) -> None:
    from segzoo.config.checks import check_mode
    from segzoo.config.validate import build_config

    float_model = shared_path("pretrained", "google_deeplabv3_257_float", "deeplabv3_257_mv_gpu.tflite")
    for mode in ("quantization", "chain_eqe", "chain_eqeb", "chain_qb", "chain_qd"):
        for model, refused in ((float_model, False), (st_model, True)):
            cfg, errors = build_config({"operation_mode": mode, "general": {"model_path": str(model)}})
            assert not errors
            problems = [e for e in check_mode(cfg) if e.startswith("general.model_path")]
            assert bool(problems) == refused, (mode, model.name, problems)
            assert all("already quantized" in e and "float" in e for e in problems)
