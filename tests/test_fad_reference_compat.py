"""FAD against the reference code: op names and alpha order, genotype files in its names (default
and dilation-3 spaces) parse, build and draw, our text form is its text form, and the init rules
of the augment towers and the head (edge / adapter biases, cls_reduce N(0, 0.01))."""
import collections
import math
import os
import re

import pytest
import torch
from torch import nn

from fad.config import get_cfg_defaults
from fad.modeling.fcos import build_fad_head
from fad.nas.draw import dot_available, draw_genotype
from fad.nas.genotype import format_genotype, read_genotype_file
from fad.nas.primitives import PRIMITIVES, PRIMITIVES_DIL3
from fad.search.cells import MixedEdge

# The reference's candidate names in its RepShare emit order (read from its genotypes / ops
# modules): the default space (`stack_x5_*` families) and the dilation-3 space (`stack_x6_*`,
# whose extra dilation-3 unit sits on x1 and is emitted second).
REFERENCE_DEFAULT = [
    "std_conv_3x3", "std_conv_3x3+dil_conv_3x3", "std_conv_3x3_x2",
    "std_conv_3x3_x2+dil_conv_3x3", "std_conv_3x3_x3",
    "sinSep_conv_3x3", "sinSep_conv_3x3+dil_conv_3x3", "sinSep_conv_3x3_x2",
    "sinSep_conv_3x3_x2+dil_conv_3x3", "sinSep_conv_3x3_x3", "none"]
REFERENCE_DIL3 = [
    "std_conv_3x3", "std_conv_3x3+dil_conv_3x3_r3", "std_conv_3x3+dil_conv_3x3",
    "std_conv_3x3_x2", "std_conv_3x3_x2+dil_conv_3x3", "std_conv_3x3_x3",
    "sinSep_conv_3x3", "sinSep_conv_3x3+dil_conv_3x3_r3", "sinSep_conv_3x3+dil_conv_3x3",
    "sinSep_conv_3x3_x2", "sinSep_conv_3x3_x2+dil_conv_3x3", "sinSep_conv_3x3_x3", "none"]

# genotype.log files as the reference's search writes them (box line, cls line), written by hand;
# together they use every candidate name of each space
DEFAULT_LOG = (
    "Genotype(normal=[[('std_conv_3x3', 0), ('std_conv_3x3+dil_conv_3x3', 1)], "
    "[('std_conv_3x3_x2', 2), ('std_conv_3x3_x2+dil_conv_3x3', 0)], "
    "[('std_conv_3x3_x3', 3), ('sinSep_conv_3x3', 1)]], normal_concat=range(2, 5))\n"
    "Genotype(normal=[[('sinSep_conv_3x3+dil_conv_3x3', 1), ('sinSep_conv_3x3_x2', 0)], "
    "[('sinSep_conv_3x3_x2+dil_conv_3x3', 0), ('sinSep_conv_3x3_x3', 2)], "
    "[('sinSep_conv_3x3_x2', 2), ('std_conv_3x3', 3)]], normal_concat=range(2, 5))\n")
DIL3_LOG = (
    "Genotype(normal=[[('std_conv_3x3+dil_conv_3x3_r3', 0), ('std_conv_3x3_x3', 1)], "
    "[('std_conv_3x3', 2), ('sinSep_conv_3x3+dil_conv_3x3_r3', 1)], "
    "[('std_conv_3x3+dil_conv_3x3', 2), ('std_conv_3x3_x2+dil_conv_3x3', 3)]], "
    "normal_concat=range(2, 5))\n"
    "Genotype(normal=[[('sinSep_conv_3x3_x2', 1), ('std_conv_3x3_x2', 0)], "
    "[('sinSep_conv_3x3_x2+dil_conv_3x3', 0), ('sinSep_conv_3x3', 2)], "
    "[('sinSep_conv_3x3+dil_conv_3x3', 2), ('sinSep_conv_3x3_x3', 3)]], "
    "normal_concat=range(2, 5))\n")


def _genotypes(tmp_path, text=DEFAULT_LOG):
    path = tmp_path / "genotype.log"
    path.write_text(text)
    return read_genotype_file(str(path), num_nodes=3)


def _cfg(width=32):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.FPN.OUT_CHANNELS", width, "MODEL.FAD.TOWER_CHANNELS", width,
                         "MODEL.FAD.EDGE_CHANNELS", width])
    return cfg


def test_alpha_order_is_the_reference_emit_order():
    assert list(PRIMITIVES) == REFERENCE_DEFAULT
    assert list(PRIMITIVES_DIL3) == REFERENCE_DIL3


@pytest.mark.parametrize("text,space", [(DEFAULT_LOG, REFERENCE_DEFAULT),
                                        (DIL3_LOG, REFERENCE_DIL3)])
def test_reference_genotype_files_parse_build_and_draw(tmp_path, text, space):
    box, cls = _genotypes(tmp_path, text)
    used = {op for g in (box, cls) for node in g.normal for op, _ in node}
    assert used == set(space[:-1])
    # ours in theirs: our text form is the str() of the reference's Genotype namedtuple
    reference_type = collections.namedtuple("Genotype", "normal normal_concat")
    for line, g in zip(text.splitlines(), (box, cls)):
        assert format_genotype(g) == line == str(reference_type(g.normal, g.normal_concat))
    head = build_fad_head(_cfg(), 3, box, cls)
    sizes = ((8, 6), (4, 3), (2, 2), (1, 1), (1, 1))
    out = head([torch.randn(1, 32, h, w) for h, w in sizes])
    assert out["cls_logits"].shape == (1, sum(h * w for h, w in sizes), 3)
    for name, g in (("box", box), ("cls", cls)):
        written = draw_genotype(g, str(tmp_path / f"genotype_{name}"), f"{name} tower")
        source = open(written[0]).read()
        labels = re.findall(r'tooltip="?([^" \]]+)', source)
        assert labels == [op for node in g.normal for op, _ in node]
        if dot_available():
            assert written[1].endswith(".png") and os.path.getsize(written[1]) > 0


def test_augment_edge_and_adapter_convs_have_a_bias(tmp_path):
    head = build_fad_head(_cfg(), 3, *_genotypes(tmp_path))
    for tower in (head.box_tower, head.cls_tower):
        for cell in tower.cells:
            for squeeze, _, expand in cell.edges:
                assert squeeze.bias is not None and expand.bias is not None
        adapter = tower.cells[1].pre1  # the second cell's 96-wide s1
        assert isinstance(adapter[0], nn.Conv2d) and adapter[0].bias is not None
        assert isinstance(adapter[1], nn.GroupNorm)
    # the supernet's edge 1x1s stay bias-free (as the reference's search cells)
    edge = MixedEdge(32, 32)
    assert edge.squeeze.bias is None and edge.expand.bias is None


def test_reduce_conv_init(tmp_path):
    """cls_reduce ~ N(0, 0.01), bias 0; box_reduce keeps PyTorch's default init."""
    torch.manual_seed(0)
    head = build_fad_head(_cfg(256), 3, *_genotypes(tmp_path))
    cls_w, box_w = head.cls_reduce.weight, head.box_reduce.weight
    assert cls_w.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.cls_reduce.bias.abs().max().item() == 0.0
    # default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    bound = 1 / math.sqrt(box_w.shape[1])
    assert box_w.abs().max().item() <= bound
    assert box_w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert head.box_reduce.bias.abs().max().item() > 0.0
