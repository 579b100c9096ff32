"""Building the compiled ops (fad.ops.build): a fresh CPU build, a compile-only build of the
CUDA sources, the setup.py extension list, the baseline (non-AVX2) code path."""
import glob
import os
import re
import shutil

import pytest
import torch
from conftest import REPO, run_at_baseline_isa, run_python

from fad.ops import build


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
    code = ("import torch; import fad.ops; from fad.ops.build import load; load('msda_cpu'); "
            "from fad.ops.msda.inputs import random_msda_inputs; "
            "from fad.ops import ms_deform_attn_reference as ref; "
            "a = random_msda_inputs(1, [(3, 4)], 2, 8, 5, 2); "
            "assert torch.allclose(torch.ops.fad_msda.forward(*a), ref(*a)); print('ok')")
    proc = run_python(code, {"TORCH_EXTENSIONS_DIR": str(tmp_path), "PYTHONPATH": REPO})
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
    code = ("import fad.ops; from fad.ops.build import jit_build; "
            f"jit_build('msda_cuda', build_directory={str(tmp_path)!r}); print('ok')")
    env = {"CUDA_HOME": root, "PYTHONPATH": REPO,
           "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    proc = run_python(code, env)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
    assert glob.glob(str(tmp_path / "*.so"))


def test_missing_sources_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "csrc_dir", lambda: tmp_path)
    with pytest.raises(build.ExtensionUnavailable, match="MSDA CPU kernel sources not found"):
        build.jit_build("msda_cpu")


def test_setup_extensions_list_every_extension(monkeypatch):
    from torch.utils.cpp_extension import CUDA_HOME

    monkeypatch.setenv("FAD_BUILD_CUDA", "0")
    modules, cmdclass = build.setup_extensions()
    cpu = ["msda_cpu", "depthwise_cpu", "sparse_cpu", "mix_cpu", "gn_relu_cpu",
           "conv_wgrad_cpu"]
    assert [m.name for m in modules] == [f"fad.ops._{name}" for name in cpu]
    for module, name in zip(modules, cpu):
        assert module.sources == [f"csrc/{s}" for s in build.EXTENSIONS[name].sources]
        assert all(os.path.exists(os.path.join(REPO, s)) for s in module.sources)
    assert "build_ext" in cmdclass
    if CUDA_HOME is not None:  # CUDAExtension needs a toolkit to resolve its library paths
        monkeypatch.setenv("FAD_BUILD_CUDA", "1")
        modules = build.setup_extensions()[0]
        assert [m.name for m in modules] == ["fad.ops._msda_cpu", "fad.ops._msda_cuda",
                                             "fad.ops._depthwise_cpu", "fad.ops._sparse_cpu",
                                             "fad.ops._mix_cpu", "fad.ops._gn_relu_cpu",
                                             "fad.ops._conv_wgrad_cpu"]
        assert modules[1].sources == ["csrc/msda/cuda/msda_cuda.cu"]


def test_every_op_schema_is_declared_in_python_and_implemented_in_cpp():
    """One way: Python declares each kernel op (define_library), C++ only registers build."""
    import fad.ops.conv_wgrad  # noqa: F401  (declares fad_conv_wgrad)
    import fad.ops.depthwise  # noqa: F401  (declares fad_dw)
    import fad.ops.gn_relu  # noqa: F401  (declares fad_gn_relu)
    import fad.ops.mix  # noqa: F401  (declares fad_mix)
    import fad.ops.sparse  # noqa: F401  (declares fad_sparse)

    for name, ext in build.EXTENSIONS.items():
        text = "".join(p.read_text() for p in ext.source_paths())
        assert "TORCH_LIBRARY(" not in text, name
        namespace = text.split("TORCH_LIBRARY_IMPL(")[1].split(",")[0]
        impls = re.findall(r'm\.impl\("(\w+)"', text)
        assert impls, name
        for op in impls:
            assert hasattr(getattr(torch.ops, namespace), op), f"{namespace}::{op} undeclared"


def test_baseline_isa_path_matches_reference():
    """ATEN_CPU_CAPABILITY=default selects the non-AVX2 copy of the CPU loops; check it too."""
    run_at_baseline_isa(
        "import torch; import fad.ops; from fad.ops.build import load; load('msda_cpu')\n"
        "from fad.ops.msda.inputs import random_msda_inputs\n"
        "from fad.ops import ms_deform_attn_reference as ref\n"
        "for d in (32, 64, 71):\n"
        "    a = random_msda_inputs(2, [(5, 4), (2, 3)], 2, d, 6, 3, dtype=torch.float32,"
        " edges=True)\n"
        "    torch.testing.assert_close(torch.ops.fad_msda.forward(*a), ref(*a))")


def test_build_command_reports_each_extension(monkeypatch, capsys):
    """`python -m fad.ops`: one line per extension, `ready` or `unavailable (why)`; by default
    every CPU extension and no CUDA one; an unknown name is a usage error (exit 2)."""
    from fad.ops import __main__ as command

    asked = []
    reasons = {"mix_cpu": "no C++ compiler"}
    monkeypatch.setattr(command, "load_error",
                        lambda name: asked.append(name) or reasons.get(name))
    command.main(["gn_relu_cpu", "mix_cpu"])
    assert capsys.readouterr().out.splitlines() == [
        "gn_relu_cpu: ready", "mix_cpu: unavailable (no C++ compiler)"]
    asked.clear()
    command.main([])
    cpu = [n for n, ext in build.EXTENSIONS.items() if not ext.cuda]
    assert asked == cpu and "msda_cuda" not in asked and len(cpu) >= 5
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        command.main(["gn_relu_cpu", "nonesuch"])
    assert exc.value.code == 2
    assert "no extension nonesuch" in capsys.readouterr().err
