"""`fad-bench triton_resources`: registers and spills of the Triton MSDA kernels, compiled for
sm_80/sm_90 on the CPU (no GPU). The full table (every dtype and head dim) is the benchmark's
job (docs/msda_triton.md); the test compiles the hot subset in a fresh process (triton must be
imported without TRITON_INTERPRET, which tests/test_msda_triton.py may have set)."""
import json
import os
import subprocess
import sys

import pytest

from fad.cli.bench.triton_resources import occupancy

pytest.importorskip("triton")


@pytest.mark.parametrize("registers,warps,expected", [
    (32, 4, 1.0),      # 32 x 32 = 1024 registers a warp: 64 warps fit
    (48, 4, 0.625),    # 1536 a warp: 42 warps -> 10 programs of 4 = 40 warps
    (128, 4, 0.25),    # 4096 a warp: 16 warps
    (129, 4, 0.188),   # rounded up to 136: 15 warps -> 3 programs of 4
    (255, 4, 0.125),   # 256 -> 8 warps
    (64, 16, 0.5),     # 32 warps -> 2 programs of 16
])
def test_occupancy_from_registers(registers, warps, expected):
    assert occupancy(registers, warps) == expected


def _specializations(tmp_path, *args: str) -> list[dict]:
    """The `specializations` rows of `fad-bench triton_resources ARGS`, run in a fresh process
    without TRITON_INTERPRET and without the ptxas cache."""
    out = tmp_path / "res.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", "from fad.cli.bench import main; main()", "triton_resources",
         *args, "--cache", "", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())["specializations"]


@pytest.mark.slow
def test_hot_specializations_neither_spill_nor_exceed_128_registers(tmp_path):
    """float32, D = 32, forward and backward, sm_80 and sm_90, at the decoder shape."""
    rows = _specializations(tmp_path, "--dtypes", "fp32", "--head-dims", "32")
    assert sorted((r["kernel"], r["arch"]) for r in rows) == [
        ("backward", "sm_80"), ("backward", "sm_90"), ("forward", "sm_80"), ("forward", "sm_90")]
    for row in rows:
        assert row["dtype"] == "fp32" and row["head_dim"] == 32
        assert row["spill_bytes"] == 0, row
        assert 0 < row["registers"] <= 128, row
        assert row["programs"] >= 132, row  # fills an H100's 132 SMs at the decoder shape


@pytest.mark.slow
def test_float64_wide_backward_does_not_spill_on_sm80(tmp_path):
    """The last specialization of docs/msda_triton.md that spilled (16 bytes at 4 warps)."""
    (row,) = _specializations(tmp_path, "--dtypes", "fp64", "--head-dims", "256", "--archs",
                              "80", "--kernels", "backward")
    assert (row["spill_bytes"], row["num_warps"]) == (0, 8), row
