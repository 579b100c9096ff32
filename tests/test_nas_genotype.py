"""Genotype text format, safe parser, genotype.log files and diagrams."""
import os
import re

import pytest

from fad.nas.draw import draw_genotype, genotype_digraph, op_label_lines
from fad.nas.genotype import (
    Genotype,
    GenotypeError,
    format_genotype,
    parse_genotype,
    read_genotype_file,
    write_genotype_file,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = os.path.join(ROOT, "configs", "fad", "genotypes", "fad_paper.log")
BOX = ("Genotype(normal=[[('sinSep_conv_3x3_x3', 0), ('std_conv_3x3_x3', 1)], "
       "[('std_conv_3x3', 2), ('sinSep_conv_3x3+dil_conv_3x3', 1)], "
       "[('sinSep_conv_3x3_x2', 2), ('std_conv_3x3_x2', 3)]], "
       "normal_concat=range(2, 5))")


def test_paper_file_parses():
    box, cls = read_genotype_file(PAPER, num_nodes=3)
    assert format_genotype(box) == BOX
    assert box.normal[1] == [("std_conv_3x3", 2), ("sinSep_conv_3x3+dil_conv_3x3", 1)]
    assert cls.normal[0][0] == ("sinSep_conv_3x3_x2+dil_conv_3x3", 1)
    assert cls.normal_concat == range(2, 5) and cls.num_nodes == 3


def test_round_trip(tmp_path):
    g = Genotype([[("std_conv_3x3", 0), ("sinSep_conv_3x3_x3", 1)],
                  [("std_conv_3x3_x2+dil_conv_3x3", 2), ("std_conv_3x3", 0)]], range(2, 4))
    h = Genotype([[("sinSep_conv_3x3", 1), ("sinSep_conv_3x3", 0)],
                  [("std_conv_3x3_x3", 1), ("sinSep_conv_3x3_x2", 2)]], range(2, 4))
    path = str(tmp_path / "genotype.log")
    write_genotype_file(path, g, h)
    assert read_genotype_file(path) == (g, h)
    with open(path) as f:
        assert f.read().splitlines() == [format_genotype(g), format_genotype(h)]


def _write(tmp_path, second_line):
    path = tmp_path / "genotype.log"
    path.write_text(BOX + "\n" + second_line + "\n")
    return str(path)


@pytest.mark.parametrize("line,message", [
    (BOX.replace("std_conv_3x3_x3", "conv_7x7"), "unknown op 'conv_7x7'"),
    (BOX.replace("('std_conv_3x3', 2)", "('none', 2)"), "picks 'none'"),
    (BOX.replace("('std_conv_3x3_x2', 3)", "('std_conv_3x3_x2', 4)"), "source 4"),
    (BOX.replace("('sinSep_conv_3x3_x3', 0)", "('sinSep_conv_3x3_x3', -1)"), "source -1"),
    (BOX.replace("('sinSep_conv_3x3_x3', 0)", "('sinSep_conv_3x3_x3', '0')"), "integer literal"),
    (BOX.replace("('sinSep_conv_3x3_x3', 0)", "('sinSep_conv_3x3_x3', True)"), "integer literal"),
    (BOX.replace("range(2, 5)", "range(2, 6)"), "must be range(2, 5)"),
    (BOX.replace(", [('sinSep_conv_3x3_x2', 2), ('std_conv_3x3_x2', 3)]", ""), "2 nodes"),
    (BOX.replace(", ('std_conv_3x3_x3', 1)", ""), "1 edges"),
    ("__import__('os').system('touch /tmp/fad_pwned')", "not a Genotype(...) call"),
    ("Genotype(normal=__import__('os').listdir('.'), normal_concat=range(2, 5))", "normal= must"),
    ("Genotype(normal=[], normal_concat=range(2, 5), extra=1)", "exactly the keywords"),
    ("Genotype(normal=[[(open('x'), 0)]], normal_concat=range(2, 3))", "quoted string"),
    ("[x for x in ().__class__.__bases__]", "not a Genotype(...) call"),
    ("Genotype(normal=[[('std_conv_3x3', 0)", "not a valid Genotype(...) expression"),
    (BOX.replace("range(2, 5)", "list(range(2, 5))"), "range(start, stop)"),
    ("Genotype(" + "[" * 5000, "longer than"),
])
def test_malformed_lines_give_one_line_errors(tmp_path, line, message):
    path = _write(tmp_path, line)
    with pytest.raises(GenotypeError) as info:
        read_genotype_file(path, num_nodes=3 if "2 nodes" in message else None)
    text = str(info.value)
    assert message in text and f"{path}:2:" in text and "\n" not in text
    assert not os.path.exists("/tmp/fad_pwned")


def test_file_level_errors(tmp_path):
    with pytest.raises(GenotypeError, match="not found"):
        read_genotype_file(str(tmp_path / "missing.log"))
    one = tmp_path / "one.log"
    one.write_text(BOX + "\n\n")
    with pytest.raises(GenotypeError, match="expected 2 Genotype lines .* found 1"):
        read_genotype_file(str(one))
    binary = tmp_path / "bin.log"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GenotypeError, match="not a text file"):
        read_genotype_file(str(binary))


def test_node_count_must_fit_config():
    with pytest.raises(GenotypeError, match="MODEL.FAD.NUM_NODES is 4"):
        parse_genotype(BOX, "f:1", num_nodes=4)


def test_diagram(tmp_path, monkeypatch):
    g = parse_genotype(BOX)
    src = genotype_digraph(g, "FAD cell of the box tower", "search iteration 7").source
    assert "rankdir=LR" in src and "labelloc=t" in src
    assert "<B>FAD cell of the box tower</B>" in src and "search iteration 7" in src
    assert "c<SUB>k-2</SUB>" in src and "c_{k" not in src  # subscripts, no raw markup
    for i in range(3):
        assert f"node_{i} -> c_k" in src
    # every chosen edge runs through its own op node, named in words, tooltip = genotype name
    assert '"c_k-2" -> op_0_0' in src and "op_0_0 -> node_0" in src
    assert "op_0_0 [label=<3×3 sep conv ×3> comment=sinSep_conv_3x3_x3" in src
    assert re.findall(r"tooltip=\"?([^\" \]]+)", src) == [op for n in g.normal for op, _ in n]
    assert op_label_lines("std_conv_3x3_x2+dil_conv_3x3") == ["3×3 conv ×2", "+ dil-2 sep 3×3"]
    assert op_label_lines("sinSep_conv_3x3+dil_conv_3x3_r3") == ["3×3 sep conv",
                                                                  "+ dil-3 sep 3×3"]
    paths = draw_genotype(g, str(tmp_path / "box"), "box tower")
    assert paths[0].endswith("box.gv") and os.path.isfile(paths[0])
    monkeypatch.setenv("PATH", "")
    only_source = draw_genotype(g, str(tmp_path / "nodot"), "box tower", "svg")
    assert only_source == [str(tmp_path / "nodot.gv")]


@pytest.mark.skipif(not __import__("shutil").which("dot"), reason="graphviz `dot` not installed")
def test_diagram_renders(tmp_path):
    paths = draw_genotype(parse_genotype(BOX), str(tmp_path / "box"), "box tower", "svg")
    with open(paths[1]) as f:
        assert "<svg" in f.read()
