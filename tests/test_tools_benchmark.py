"""A smoke run of every tools/benchmark.py sub-command at tiny sizes (no timing asserted)."""
import importlib.util
import json
import os
import shlex

import pytest
import torch
from conftest import REPO

from fad.cli.bench import BENCHMARKS, timing
from fad.errors import FadError

TOOLS = os.path.join(REPO, "tools")

TINY = {
    "fcos_step": ["--size", "64", "64", "--batch", "1", "--classes", "3", "--repeats", "1",
                  "--device", "cpu"],
    "demo_step": ["--size", "64", "64", "--batch", "1", "--classes", "3", "--repeats", "1",
                  "--iterations", "7"],
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
    "compile": ["--size", "64", "64", "--batch", "1", "--backend", "eager", "--warmup", "0",
                "--repeats", "1"],
    "triton_resources": ["--dtypes", "fp32", "--head-dims", "32", "--archs", "90",
                         "--kernels", "forward", "--cache", ""],
    "export": ["--models", "fcos", "--scales", "tiny", "--tiny-size", "64", "64", "--no-compile",
               "--warmup", "0", "--repeats", "1"],
}
TINY["limits"] = [a for n in ("sparse_resnet", "supernet", "msda", "fcos_step", "demo_step")
                  for a in ("--set", f"{n}={shlex.join(TINY[n])}")]
# keys that docs/BENCHMARKS.md and the per-topic docs quote
KEYS = {
    "fcos_step": {"ours_step_s", "ours_nchw_step_s", "torchvision_step_s", "time_ratio",
                  "time_ratio_nchw", "cpu_time_ratio", "ours_reference_wgrad_step_s",
                  "time_ratio_reference_wgrad", "conv_wgrad_backend", "limit_step_s",
                  "fraction_of_limit", "fraction_of_limit_torchvision"},
    "demo_step": {"step_s", "step_gflop", "limit_step_s", "fraction_of_limit", "mm_gflops",
                  "conv_gflops", "augment_floor_s", "augment_s", "levels_step_s",
                  "mosaic_speedup"},
    "supernet": {"speedup", "peak_memory_ratio", "flop_ratio", "fraction_of_limit",
                 "fraction_of_limit_cpu", "fraction_of_limit_paired", "shared_step_s",
                 "separate_step_s"},
    "msda": {"speedup", "speedup_cpp", "forward_speedup_cpp", "backward_speedup_cpp",
             "memory_ratio_cpp", "cpp_fwd_ms", "reference_fwd_bwd_ms", "cpp_peak_mb",
             "max_abs_diff_cpp"},
    "sparse_resnet": {"speedup_at_density_0.5", "speedup_vs_plain_at_density_0.5",
                      "cpu_time_speedup_vs_plain_at_density_0.5", "sparse_ms_at_density_0.5",
                      "theory_speedup_vs_plain_at_density_0.5",
                      "fraction_of_limit_at_density_0.5",
                      "fraction_of_limit_at_density_0.5_threads_2"},
    "detr_flops": {"flops_ratio", "deformable_gmacs", "sparse_gmacs"},
    "op_latency": {"ops_ms", "fixed_ms"},
    "asag": {"asag_head_latency_s", "fast_vs_full_head_latency", "asag_vs_deformable_head_latency",
             "mean_queries"},
    "compile": {"eager_step_s", "compiled_step_s", "time_ratio", "compile_s"},
    "export": {"rows", "threads"},
    "triton_resources": {"specializations", "max_registers", "spilling"},
    "limits": {"rows", "goals_met", "goals", "arguments", "results"},
}
# C++ kernels may compile first (30-60 s on 2 CPUs); export writes ONNX and pt2 files (minutes);
# triton_resources compiles a Triton kernel to a cubin
SLOW = {"msda", "sparse_resnet", "supernet", "export", "triton_resources", "limits"}


def _benchmark(monkeypatch):
    """tools/benchmark.py as a module (a thin wrapper of fad.cli.bench)."""
    spec = importlib.util.spec_from_file_location("benchmark", os.path.join(TOOLS, "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_sub_command_has_a_tiny_case_and_a_line_in_the_help():
    import fad.cli.bench

    assert set(BENCHMARKS.names()) == set(TINY)
    assert all(f"\n  {name} " in fad.cli.bench.__doc__ for name in TINY)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in TINY])
def test_sub_command_prints_one_json_line(monkeypatch, capsys, tmp_path, name):
    out = tmp_path / "result.json"
    _benchmark(monkeypatch).main([name, "--json", str(out), *TINY[name]])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(line)
    assert result["benchmark"] == name and json.loads(out.read_text()) == result
    assert KEYS[name] <= set(result), KEYS[name] - set(result)
    if name == "supernet":
        assert result["fraction_of_limit"] == pytest.approx(
            result["speedup"] / result["flop_ratio"], abs=2e-3)
        assert result["fraction_of_limit_cpu"] == pytest.approx(  # step times rounded to 0.1 ms
            result["separate_step_cpu_s"] / result["shared_step_cpu_s"] / result["flop_ratio"],
            rel=0.05)
    if name in ("demo_step", "fcos_step"):
        limit = result["step_gflop"] / max(result["mm_gflops"], result["conv_gflops"])
        assert result["limit_step_s"] == pytest.approx(limit, rel=0.01)
        steps = {"demo_step": {"": "step_s"},
                 "fcos_step": {"": "ours_step_s", "_torchvision": "torchvision_step_s"}}[name]
        for suffix, key in steps.items():  # step times rounded to 0.1 ms
            assert result[f"fraction_of_limit{suffix}"] == pytest.approx(
                limit / result[key], rel=0.03)
    if name == "demo_step":
        assert result["augment_floor_s"] == pytest.approx(7 * limit, abs=0.06)
        assert result["mosaic_speedup"] > 0 and result["levels_step_s"] > 0
    if name == "msda":
        # the backward alone = fwd+bwd - fwd; the times are rounded to 0.01 ms, so +- 0.01
        backward = {n: result[f"{n}_fwd_bwd_ms"] - result[f"{n}_fwd_ms"]
                    for n in ("reference", "cpp")}
        assert (backward["reference"] - 0.01) / (backward["cpp"] + 0.01) <= result[
            "backward_speedup_cpp"] <= (backward["reference"] + 0.01) / (backward["cpp"] - 0.01)
    if name == "limits":
        _check_limits_rows(result)
    if name == "sparse_resnet":
        assert result["fraction_of_limit_at_density_0.5"] == pytest.approx(
            result["speedup_vs_plain_at_density_0.5"]
            / result["theory_speedup_vs_plain_at_density_0.5"], abs=2e-3)


def _check_limits_rows(result: dict) -> None:
    """The limits table: one row per density and thread count, supernet, two msda rows,
    fcos_step and demo_step, each read from its benchmark's JSON and judged against its goal."""
    rows, rounds = result["rows"], result["results"]
    assert set(rounds) == {"sparse_resnet", "supernet", "msda", "fcos_step", "demo_step"}
    assert result["rounds"] == 1 and all(len(r) == 1 for r in rounds.values())
    results = {name: runs[0] for name, runs in rounds.items()}
    sparse = results["sparse_resnet"]
    assert [r["measured"] for r in rows[:2]] == [
        sparse[f"speedup_vs_plain_at_density_0.5_threads_{t}"] for t in (2, 1)]
    assert rows[0]["fraction_of_limit"] == sparse["fraction_of_limit_at_density_0.5_threads_2"]
    assert rows[2]["measured"] == results["supernet"]["speedup"]
    assert rows[2]["limit"] == results["supernet"]["flop_ratio"]
    msda = results["msda"]
    assert rows[3]["measured"] == msda["speedup"]
    assert rows[4]["measured"] == pytest.approx(
        msda["backward_speedup_cpp"] / msda["forward_speedup_cpp"], abs=1e-3)
    assert rows[5]["measured"] == results["fcos_step"]["time_ratio"]
    assert rows[6]["fraction_of_limit"] == results["demo_step"]["fraction_of_limit"]
    assert len(rows) == 7 and all("->" in r["load"] for r in rows)
    expected = [rows[0]["fraction_of_limit"] >= 0.9, rows[1]["fraction_of_limit"] >= 0.9,
                rows[2]["fraction_of_limit"] >= 0.95, rows[3]["measured"] >= 15,
                rows[4]["measured"] >= 1, rows[5]["measured"] <= 0.85, None]
    assert [r["met"] for r in rows] == expected
    assert result["goals"] == 6 and result["goals_met"] == sum(filter(None, expected))


def test_limits_rows_over_rounds_take_medians_and_are_judged_again():
    from fad.cli.bench.limits import _row, combine, markdown

    runs = [_row("supernet", m, "fraction >= 0.95", 2.3, f) | {"load": load}
            for m, f, load in ((2.0, 0.87, "1.0 -> 1.2"), (2.3, 1.0, "1.2 -> 1.1"),
                               (2.2, 0.96, "1.1 -> 1.0"))]
    assert [r["met"] for r in runs] == [False, True, True]
    row = combine(runs)
    assert (row["measured"], row["fraction_of_limit"], row["limit"]) == (2.2, 0.96, 2.3)
    assert row["met"] is True and row["rounds_fraction"] == [0.87, 1.0, 0.96]
    assert row["load"] == "1.0 -> 1.2, 1.2 -> 1.1, 1.1 -> 1.0"
    even = combine(runs[:2])  # the mean of the two middle values
    assert even["fraction_of_limit"] == 0.935 and even["met"] is False
    no_fraction = combine([_row("fcos_step", v, "<= 0.85") | {"load": ""} for v in (0.9, 0.7)])
    assert no_fraction["fraction_of_limit"] is None and no_fraction["met"] is True
    table = markdown([row])
    assert "| supernet | 2.2 (2.0-2.3) | 2.3 | 0.96 (0.87-1.0) | fraction >= 0.95 | yes |" in table


@pytest.mark.parametrize("argv, message", [
    (["--rounds", "0"], "--rounds must be >= 1"),
    (["--only", "msda,fast"], "unknown benchmark"),
    (["--only", "msda", "--set", "fcos_step=--repeats 1"], "NAME=ARGS with NAME among msda"),
    (["--set", "msda --repeats 1"], "must be NAME=ARGS"),
])
def test_limits_names_a_bad_choice(monkeypatch, argv, message):
    with pytest.raises(FadError, match=message):
        _benchmark(monkeypatch).main(["limits", *argv])


def test_limits_checks_every_argument_before_the_first_run(monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's usage error, nothing run yet
        _benchmark(monkeypatch).main(["limits", "--only", "fcos_step,msda",
                                      "--set", "msda=--repeats many"])
    assert exc.value.code == 2 and "--repeats" in capsys.readouterr().err


def test_limits_names_a_benchmark_that_fails_in_its_process(monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is usable here: the CUDA benchmark runs instead of failing")
    with pytest.raises(FadError, match=r"`fad-bench msda --device cuda` failed \(exit code 2"):
        _benchmark(monkeypatch).main(["limits", "--only", "msda", "--set", "msda=--device cuda"])


def test_step_flops_counts_a_convolution_s_forward_and_weight_gradient():
    """One 3x3 convolution (the input needs no gradient): forward + weight gradient = twice
    2 N Ho Wo O C k k FLOPs."""
    from fad.cli.bench.flop_limit import step_flops

    class OneConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 5, 3, padding=1)

        def forward(self, images, targets):
            return {"loss": self.conv(torch.stack(images)).sum()}

    images = [torch.rand(3, 6, 7) for _ in range(2)]
    model = OneConv()
    assert step_flops(model, (images, [])) == 2 * (2 * 2 * 6 * 7 * 5 * 3 * 9)
    assert model.conv.weight.grad is None  # cleared after counting


@pytest.mark.slow
def test_supernet_also_times_the_heads_with_their_levels_on_two_threads(monkeypatch, capsys):
    from fad.modeling.fcos import parallel_levels

    split = []
    apply = parallel_levels._ParallelLevels.apply
    monkeypatch.setattr(parallel_levels._ParallelLevels, "apply",
                        lambda level, first, *rest: split.append(first) or apply(level, first,
                                                                                 *rest))
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _benchmark(monkeypatch).main(["supernet", *TINY["supernet"], "--parallel-levels", "2"])
    finally:
        torch.set_num_threads(previous)
    assert split == [2] * 4  # (warm-up + 1 round) x 2 heads; every other pass sequential
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["threads"] == 2 and result["parallel_levels_first"] == 2
    for suffix in ("", "_parallel_levels"):
        speedup = result[f"separate_step{suffix}_s"] / result[f"shared_step{suffix}_s"]
        assert result[f"speedup{suffix}"] == pytest.approx(speedup, abs=2e-3)
        assert result[f"fraction_of_limit{suffix}"] == pytest.approx(
            speedup / result["flop_ratio"], abs=2e-3)
    # one round (--repeats 1): the paired ratio is that round's, the same as the medians'
    assert result["fraction_of_limit_paired_parallel_levels"] == pytest.approx(
        result["fraction_of_limit_parallel_levels"], abs=2e-3)


class _FakeClock:
    """perf_counter / process_time stand-ins that move only when a fake call says so."""

    def __init__(self):
        self.now, self.cpu = 0.0, 0.0

    def perf_counter(self) -> float:
        return self.now

    def process_time(self) -> float:
        return self.cpu


def test_timer_interleaves_skips_the_warmup_and_takes_medians(monkeypatch):
    clock, order = _FakeClock(), []
    monkeypatch.setattr(timing, "time", clock)
    durations = {"a": iter([9.0, 9.0, 1.0, 5.0, 2.0]), "b": iter([7.0, 7.0, 4.0, 2.0, 6.0])}

    def call(name):
        def run():
            order.append(name)
            seconds = next(durations[name])
            clock.now += seconds
            clock.cpu += 2 * seconds
        return run

    samples = timing.time_rounds({"a": call("a"), "b": call("b")}, warmup=2, repeats=3)
    assert order == ["a", "b"] * 5
    assert samples.wall == {"a": [1.0, 5.0, 2.0], "b": [4.0, 2.0, 6.0]}
    assert samples.cpu == {"a": [2.0, 10.0, 4.0], "b": [8.0, 4.0, 12.0]}
    assert samples.medians() == {"a": 2.0, "b": 4.0}
    assert samples.medians(cpu=True) == {"a": 4.0, "b": 8.0}
    assert samples.median_ratio("b", "a") == 3.0  # median of 4/1, 2/5, 6/2


def test_timer_synchronises_cuda_around_each_call_and_sets_autograd(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))

    def call():
        events.append(f"call grad={torch.is_grad_enabled()}")

    timing.time_rounds({"x": call}, warmup=0, repeats=2, device=torch.device("cuda"), grad=True)
    assert events == ["sync", "call grad=True", "sync"] * 2
    events.clear()
    timing.time_rounds({"x": call}, warmup=1, repeats=1, device=torch.device("cpu"))
    assert events == ["call grad=False"] * 2
    with pytest.raises(FadError, match="--repeats must be at least 1"):
        timing.time_rounds({"x": call}, warmup=1, repeats=0)


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
