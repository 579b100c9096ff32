"""MSDA's ONNX export path (fad.ops.msda.onnx), tested like its other backends: ONNX Runtime on
the exported standard-op graph against the pure-PyTorch reference, plus the TensorRT plugin node.
"""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fad.errors import FadError
from fad.ops.msda import ms_deform_attn_reference, multi_scale_deformable_attention
from fad.ops.msda.inputs import random_msda_inputs
from fad.ops.msda.onnx import TRT_DOMAIN, TRT_OP, msda_translation_table

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
         "attention_weights")


class _Msda(nn.Module):
    def forward(self, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                sampling_locations: Tensor, attention_weights: Tensor) -> Tensor:
        return multi_scale_deformable_attention(value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights)


def _export(inputs, path, mode: str = "standard", dynamic: bool = False):
    batch, seq, queries = (torch.export.Dim(n) for n in ("batch", "seq", "queries"))
    shapes = ({0: batch, 1: seq}, None, None, {0: batch, 1: queries}, {0: batch, 1: queries})
    program = torch.onnx.export(_Msda().eval(), inputs, dynamo=True, input_names=list(NAMES),
                                dynamic_shapes=shapes if dynamic else None,
                                custom_translation_table=msda_translation_table(mode),
                                verbose=False)
    program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=mode == "standard")
    return model


def _run(path, inputs) -> Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {name: t.numpy() for name, t in zip(NAMES, inputs)}
    return torch.from_numpy(session.run(None, feed)[0])


@pytest.mark.parametrize("shapes,heads,dim,points", [
    ([(6, 5)], 1, 4, 1),
    ([(6, 5), (3, 3)], 2, 4, 3),
    ([(8, 7), (4, 4), (2, 2), (1, 1)], 4, 8, 4),
])
def test_standard_ops_match_reference(tmp_path, shapes, heads, dim, points):
    inputs = random_msda_inputs(2, shapes, heads, dim, 5, points, dtype=torch.float32,
                                edges=True)
    model = _export(inputs, tmp_path / "msda.onnx")
    ops = {node.op_type for node in model.graph.node}
    assert "GridSample" in ops and all(node.domain == "" for node in model.graph.node)
    assert model.opset_import[0].version >= 16
    torch.testing.assert_close(_run(tmp_path / "msda.onnx", inputs),
                               ms_deform_attn_reference(*inputs), rtol=1e-5, atol=1e-5)


def test_dynamic_export_takes_other_sizes(tmp_path):
    """One file, exported at one size, runs other batch sizes, level shapes and query counts."""
    inputs = random_msda_inputs(2, [(6, 5), (3, 3)], 2, 4, 7, 3, dtype=torch.float32)
    _export(inputs, tmp_path / "msda.onnx", dynamic=True)
    for seed, (batch, shapes, queries) in enumerate(
            [(1, [(4, 9), (2, 5)], 3), (3, [(7, 7), (4, 4)], 11)]):
        other = random_msda_inputs(batch, shapes, 2, 4, queries, 3, dtype=torch.float32,
                                   seed=seed + 1, edges=True)
        torch.testing.assert_close(_run(tmp_path / "msda.onnx", other),
                                   ms_deform_attn_reference(*other), rtol=1e-5, atol=1e-5)


def test_tensorrt_mode_is_one_plugin_node(tmp_path):
    inputs = random_msda_inputs(1, [(6, 5), (3, 3)], 2, 4, 7, 3, dtype=torch.float32)
    model = _export(inputs, tmp_path / "msda_trt.onnx", mode="tensorrt", dynamic=True)
    plugins = [node for node in model.graph.node if node.domain == TRT_DOMAIN]
    assert [node.op_type for node in plugins] == [TRT_OP]
    assert "GridSample" not in {node.op_type for node in model.graph.node}
    assert list(plugins[0].input)[0] == "value" and list(plugins[0].input)[3:] == [
        "sampling_locations", "attention_weights"]
    casts = {node.output[0]: node for node in model.graph.node if node.op_type == "Cast"}
    for name, source in zip(plugins[0].input[1:3], NAMES[1:3]):
        assert casts[name].input[0] == source
        assert casts[name].attribute[0].i == onnx.TensorProto.INT32
    output = model.graph.output[0].type.tensor_type.shape.dim
    assert output[2].dim_value == 8  # [N, Lq, M * D]


def test_unknown_mode_is_one_line():
    with pytest.raises(FadError, match="use one of standard, tensorrt"):
        msda_translation_table("plugin")
