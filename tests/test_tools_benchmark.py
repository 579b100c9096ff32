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
    "op_latency": ["--num-classes", "3", "--repeats", "1", "--device", "cpu",
                   "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.FAD.TOWER_CHANNELS", "16",
                   "MODEL.FAD.EDGE_CHANNELS", "8", "MODEL.FAD.COST_INPUT_SIZE", "(64,64)"],
    "asag": ["--depth", "18", "--size", "96", "128", "--classes", "3", "--images", "1",
             "--anchor-logit", "-0.4", "--warmup", "0", "--repeats", "1"],
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


def _run_msda(extra: list[str], env_extra: dict):
    """`tools/benchmark.py msda` at the tiny size in a fresh process."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    return subprocess.run([sys.executable, os.path.join(TOOLS, "benchmark.py"), "msda",
                           *TINY["msda"], *extra], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.slow
def test_msda_times_the_triton_backend_side_by_side_under_the_interpreter():
    """The GPU benchmark's Triton arm, run on the CPU by Triton's interpreter (a fresh process:
    TRITON_INTERPRET must be set before triton is imported)."""
    proc = _run_msda(["--backends", "triton", "cpp", "--image", "16"], {"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backends"] == ["triton", "cpp"] and result["unavailable"] == {}
    assert result["max_abs_diff_triton"] < 1e-5 and result["max_abs_diff_cpp"] < 1e-5
    assert result["speedup"] == result["speedup_triton"] > 0


def test_msda_on_cuda_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here: the CUDA benchmark runs instead of failing")
    proc = _run_msda(["--device", "cuda"], {})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: msda benchmark: --device cuda")


def test_msda_reports_a_backend_that_cannot_run():
    """Triton without the interpreter cannot run CPU tensors: reported, the others still timed."""
    proc = _run_msda(["--backends", "triton", "cpp"], {"TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backends"] == ["cpp"] and "TRITON_INTERPRET" in result["unavailable"]["triton"]
