"""Building the MSDA extensions: a fresh CPU build and a compile-only build of the CUDA sources."""
import glob
import os
import shutil
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=1800)


def _cuda_root() -> str | None:
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    for root in sorted(glob.glob("/usr/local/cuda*")):
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


@pytest.mark.slow
def test_fresh_cpu_build(tmp_path):
    """Compile the CPU extension from scratch (empty TORCH_EXTENSIONS_DIR) and run it."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    code = ("import torch; from fad.ops.build import load_extension; load_extension('cpu'); "
            "from fad.ops.msda_inputs import random_msda_inputs; "
            "from fad.ops import ms_deform_attn_reference as ref; "
            "a = random_msda_inputs(1, [(3, 4)], 2, 8, 5, 2); "
            "assert torch.allclose(torch.ops.fad_msda.forward(*a), ref(*a)); print('ok')")
    proc = _run(code, {"TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": REPO})
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert glob.glob(str(tmp_path / "fad_msda_cpu*" / "*.so"))


@pytest.mark.slow
def test_cuda_sources_compile(tmp_path):
    """nvcc-compile and link the CUDA extension (no GPU needed; running it is test_msda_cuda)."""
    root = _cuda_root()
    if torch.version.cuda is None:
        pytest.skip("torch is a CPU-only build")
    if root is None or not os.path.exists(os.path.join(root, "bin", "nvcc")):
        pytest.skip("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    code = ("from fad.ops.build import load_extension, jit_build; load_extension('cpu'); "
            f"jit_build('cuda', build_directory={str(tmp_path)!r}); print('ok')")
    env = {"CUDA_HOME": root, "PYTHONPATH": REPO,
           "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    proc = _run(code, env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert glob.glob(str(tmp_path / "*.so"))


def test_missing_sources_give_a_clear_error(monkeypatch, tmp_path):
    from fad.ops import build

    monkeypatch.setattr(build, "CSRC", tmp_path)
    with pytest.raises(build.ExtensionUnavailable, match="MSDA sources not found"):
        build.jit_build("cpu")


def test_setup_extensions_list_the_sources(monkeypatch):
    from torch.utils.cpp_extension import CUDA_HOME

    from fad.ops import build

    monkeypatch.setenv("FAD_BUILD_CUDA", "0")
    modules, cmdclass = build.ext_modules_and_cmdclass()
    assert [m.name for m in modules] == ["fad.ops._msda_cpu", "fad.ops._sparse_cpu",
                                         "fad.ops._depthwise_cpu"]
    assert sorted(modules[0].sources) == ["csrc/msda/binding.cpp", "csrc/msda/cpu/msda_cpu.cpp"]
    assert modules[1].sources == ["csrc/sparse_resnet/interp_cpu.cpp"]
    assert modules[2].sources == ["csrc/depthwise/depthwise_cpu.cpp"]
    assert "build_ext" in cmdclass
    if CUDA_HOME is not None:  # CUDAExtension needs a toolkit to resolve its library paths
        monkeypatch.setenv("FAD_BUILD_CUDA", "1")
        modules = build.ext_modules_and_cmdclass()[0]
        assert [m.name for m in modules] == ["fad.ops._msda_cpu", "fad.ops._sparse_cpu",
                                             "fad.ops._depthwise_cpu", "fad.ops._msda_cuda"]
        assert modules[3].sources == ["csrc/msda/cuda/msda_cuda.cu"]


def test_baseline_isa_path_matches_reference():
    """ATEN_CPU_CAPABILITY=default selects the non-AVX2 copy of the CPU loops; check it too."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    code = ("import torch; from fad.ops.build import load_extension; load_extension('cpu')\n"
            "from fad.ops.msda_inputs import random_msda_inputs\n"
            "from fad.ops import ms_deform_attn_reference as ref\n"
            "for d in (32, 64, 71):\n"
            "    a = random_msda_inputs(2, [(5, 4), (2, 3)], 2, d, 6, 3, dtype=torch.float32,"
            " edges=True)\n"
            "    torch.testing.assert_close(torch.ops.fad_msda.forward(*a), ref(*a))\n"
            "print(torch.backends.cpu.get_cpu_capability())")
    proc = _run(code, {"ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": REPO})
    assert proc.returncode == 0 and "DEFAULT" in proc.stdout, proc.stderr[-3000:]
