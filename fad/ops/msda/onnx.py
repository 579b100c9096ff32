"""MSDA in ONNX: translations of the custom op `fad::ms_deform_attn` for `torch.onnx.export`
(dynamo exporter, `custom_translation_table=msda_translation_table(...)`).

    standard  standard ONNX ops any runtime runs: per level Slice -> Reshape to
              [N*M, D, H_l, W_l] -> GridSample (bilinear, zeros padding, align_corners 0, the
              grid 2 * loc - 1) -> [N*M, D, Lq, P]; the levels concatenated, weighted by the
              attention weights and summed over L*P. The level shapes are read from the
              spatial_shapes / level_start_index tensors, so dynamic image sizes export too.
    tensorrt  one node `MultiscaleDeformableAttnPlugin_TRT` in the custom domain `trt.plugins`
              (TensorRT's multi-scale deformable attention plugin; its inputs are value,
              spatial_shapes int32, level_start_index int32, sampling_locations,
              attention_weights and its output [N, Lq, M, D]), followed by a Reshape to
              [N, Lq, M*D]. ONNX Runtime cannot run this node; TensorRT's ONNX parser maps it
              to the plugin.

GridSample needs opset >= 16; the exporter's opset (20 by default) is what the file declares.
"""
from __future__ import annotations

from typing import Callable

import torch

from fad.errors import FadError

MODES = ("standard", "tensorrt")
TRT_DOMAIN = "trt.plugins"
TRT_OP = "MultiscaleDeformableAttnPlugin_TRT"


def _standard(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              level_shapes=None):
    """value [N, S, M, D], spatial_shapes [L, 2] int64, level_start_index [L] int64,
    sampling_locations [N, Lq, M, L, P, 2], attention_weights [N, Lq, M, L, P] -> [N, Lq, M*D]
    (ONNX graph built by onnxscript's tracing; L from the static shape of sampling_locations;
    the level shapes are read from the spatial_shapes tensor, `level_shapes` is not used)."""
    from onnxscript import opset18 as op

    num_levels = sampling_locations.shape[3]
    zero, one, two = (op.Constant(value_ints=[v]) for v in (0, 1, 2))
    value_shape = op.Shape(value)
    n, m, d = (op.Gather(value_shape, op.Constant(value_ints=[i]), axis=0) for i in (0, 2, 3))
    nm = op.Mul(n, m)
    lq = op.Gather(op.Shape(sampling_locations), one, axis=0)
    # [N, Lq, M, L, P, 2] -> [N, M, Lq, L, P, 2], grid in [-1, 1]
    grids = op.Transpose(sampling_locations, perm=[0, 2, 1, 3, 4, 5])
    grids = op.Sub(op.Mul(grids, op.CastLike(op.Constant(value_float=2.0), grids)),
                   op.CastLike(op.Constant(value_float=1.0), grids))
    # [N, S, M, D] -> [N, M, D, S]
    value_t = op.Transpose(value, perm=[0, 2, 3, 1])
    sampled = []
    for level in range(num_levels):
        idx = op.Constant(value_ints=[level])
        hw = op.Gather(spatial_shapes, idx, axis=0)  # [1, 2]
        h = op.Reshape(op.Slice(hw, zero, one, one), one)
        w = op.Reshape(op.Slice(hw, one, two, one), one)
        start = op.Gather(level_start_index, idx, axis=0)
        end = op.Add(start, op.Mul(h, w))
        value_l = op.Slice(value_t, start, end, op.Constant(value_ints=[3]))
        value_l = op.Reshape(value_l, op.Concat(nm, d, h, w, axis=0))
        grid_l = op.Gather(grids, op.Constant(value_int=level), axis=3)  # [N, M, Lq, P, 2]
        grid_l = op.Reshape(grid_l, op.Concat(nm, lq, op.Constant(value_ints=[-1, 2]), axis=0))
        sampled.append(op.GridSample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=0))  # [N*M, D, Lq, P]
    stacked = op.Concat(*sampled, axis=3) if num_levels > 1 else sampled[0]
    # [N, Lq, M, L, P] -> [N*M, 1, Lq, L*P]
    weights = op.Transpose(attention_weights, perm=[0, 2, 1, 3, 4])
    weights = op.Reshape(weights, op.Concat(nm, one, lq, op.Constant(value_ints=[-1]), axis=0))
    out = op.ReduceSum(op.Mul(stacked, weights), op.Constant(value_ints=[3]), keepdims=0)
    out = op.Reshape(out, op.Concat(n, op.Mul(m, d), lq, axis=0))  # [N, M*D, Lq]
    return op.Transpose(out, perm=[0, 2, 1])


def _trt_schema():
    """The plugin node's OpSchema (5 inputs, 1 output), so onnxscript can build the node."""
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
             "attention_weights")
    types = ("T", "I", "I", "T", "T")
    return OpSchema(
        TRT_OP, TRT_DOMAIN, 1,
        inputs=[param(name, t) for name, t in zip(names, types)],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "values"),
                          ("I", ["tensor(int32)"], "level shapes and starts")])


def _tensorrt(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
              level_shapes=None):
    """The same contract as `_standard`, as one TensorRT plugin node plus a Reshape."""
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset

    plugin = Op(Opset(TRT_DOMAIN, 1), TRT_OP, _trt_schema())
    out = plugin(
        value, op.Cast(spatial_shapes, to=6), op.Cast(level_start_index, to=6),
        sampling_locations, attention_weights)  # [N, Lq, M, D]; to=6 is INT32
    n_lq = op.Slice(op.Shape(sampling_locations), op.Constant(value_ints=[0]),
                    op.Constant(value_ints=[2]))
    return op.Reshape(out, op.Concat(n_lq, op.Constant(value_ints=[-1]), axis=0))


def msda_translation_table(mode: str = "standard") -> dict[Callable, Callable]:
    """`custom_translation_table` entry that exports `fad::ms_deform_attn` in `mode` (one of
    MODES); a one-line FadError for any other mode."""
    translations = {"standard": _standard, "tensorrt": _tensorrt}
    if mode not in translations:
        raise FadError(f"MSDA ONNX mode {mode!r} is unknown; use one of {', '.join(MODES)}")
    return {torch.ops.fad.ms_deform_attn.default: translations[mode]}
