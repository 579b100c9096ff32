"""`python -m fad.ops.selftest`: its report parsed (every CPU backend passes, an unavailable one
is reported as such, a wrong kernel fails with exit code 1)."""
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from fad.ops import selftest
from fad.ops.msda import dispatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_TRITON_MODULE = importlib.util.find_spec("fad.ops.msda.triton") is not None


def _report(text: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    """{(op, backend, device): (result, detail)} from the lines under the header."""
    lines = text.splitlines()
    assert selftest.HEADER in lines, text
    rows = {}
    for line in lines[lines.index(selftest.HEADER) + 1:]:
        op, backend, device, result, detail = line.split(None, 4)
        rows[op, backend, device] = (result, detail)
    return rows


def _run(env: dict) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **env}
    for name in ("FAD_MSDA_BACKEND", "FAD_DEPTHWISE_BACKEND", "FAD_SPARSE_BACKEND"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "fad.ops.selftest"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("interpret, capability", [("0", ""), ("1", ""), ("0", "default")])
def test_every_cpu_backend_passes(interpret, capability):
    """Also with ATEN_CPU_CAPABILITY=default: the baseline (non-AVX2) copies of every kernel."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    env = {"TRITON_INTERPRET": interpret}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    proc = _run(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = _report(proc.stdout)
    for key in (("msda", "cpp", "cpu"), ("depthwise", "cpp", "cpu"), ("sparse", "cpp", "cpu"),
                ("gn_relu", "cpp", "cpu")):
        result, detail = rows[key]
        assert result == "pass" and detail.startswith("max error"), (key, detail)
        assert float(detail.split()[2]) <= selftest.TOLERANCE
    triton_result, triton_detail = rows["msda", "triton", "cpu"]
    if interpret == "1" and HAS_TRITON_MODULE:
        assert triton_result == "pass", triton_detail
    elif interpret == "0":
        assert triton_result == "unavailable" and "TRITON_INTERPRET=1" in triton_detail
    assert all(result in ("pass", "unavailable") for result, _ in rows.values())


def test_a_wrong_kernel_fails_with_exit_code_1(monkeypatch, capsys):
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setitem(dispatch.FORWARD, "cpp",
                        lambda *args: 1.01 * dispatch.FORWARD["reference"](*args))
    assert selftest.main() == 1
    rows = _report(capsys.readouterr().out)
    assert rows["msda", "cpp", "cpu"][0] == "FAIL"
    assert rows["depthwise", "cpp", "cpu"][0] == "pass"
