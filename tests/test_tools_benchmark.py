"""A smoke run of every tools/benchmark.py sub-command at tiny sizes (no timing asserted)."""
import importlib.util
import json
import os

import pytest
from conftest import REPO

TOOLS = os.path.join(REPO, "tools")

TINY = {
    "fcos_step": ["--size", "64", "64", "--batch", "1", "--classes", "3", "--repeats", "1",
                  "--device", "cpu"],
    "supernet": ["--size", "64", "64", "--edge-channels", "8", "--tower-channels", "16",
                 "--classes", "3", "--repeats", "1", "--device", "cpu", "--tiny-config", ""],
    "msda": ["--device", "cpu", "--image", "64", "--batch", "1", "--heads", "2", "--dim", "8",
             "--points", "2", "--levels", "2", "--warmup", "0", "--repeats", "1"],
    "sparse_resnet": ["--depth", "18", "--size", "64x64", "--densities", "0.5", "--repeats", "1",
                      "--device", "cpu"],
    "detr_flops": ["--depth", "18", "--size", "64", "64", "--classes", "3", "--repeats", "0"],
}
SLOW = {"msda", "sparse_resnet", "supernet"}  # C++ kernels may compile first; 30-60 s on 2 CPUs


def _benchmark(monkeypatch):
    """tools/benchmark.py as a module (a thin wrapper of fad.cli.bench)."""
    spec = importlib.util.spec_from_file_location("benchmark", os.path.join(TOOLS, "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_sub_command_has_a_tiny_case(monkeypatch):
    assert set(_benchmark(monkeypatch).COMMANDS) == set(TINY)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in TINY])
def test_sub_command_prints_one_json_line(monkeypatch, capsys, tmp_path, name):
    out = tmp_path / "result.json"
    _benchmark(monkeypatch).main([name, "--json", str(out), *TINY[name]])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert result["benchmark"] == name and json.loads(out.read_text()) == result
