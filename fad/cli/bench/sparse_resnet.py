"""SparseResNet: dense-masked vs sparse execution latency at forced mask densities, and GMACs.

The same randomly initialised SparseResNet body (FrozenBN, eval, batch `--batch`) runs with the
masks of every block replaced by seeded Bernoulli(d) masks (identical for both paths) in its
masked dense execution and in its sparse execution, interleaved, `--repeats` times after one
untimed round; a plain torchvision ResNet body of the same depth runs in the same loop. This is
done for every thread count of `--threads` (default 1 and 2) in the same process. Reported per
density d and thread count t: median latencies, the median of the per-repetition ratios
`speedup_at_density_<d>_threads_<t>` (dense-masked / sparse) and
`speedup_vs_plain_at_density_<d>_threads_<t>` (plain ResNet / sparse), and the largest difference
between the two paths' outputs relative to the output's largest magnitude; the keys without
`_threads_<t>` repeat the last thread count of `--threads`. `cpu_time_speedup_vs_plain_...` is
the same ratio of process CPU time (less disturbed by other jobs on a shared machine, but it
counts the time threads spin while they wait). Per density: the theoretical ratio
`theory_speedup_vs_plain_at_density_<d>` from the FLOPs calculator (the limit the FLOPs set),
and per thread count `fraction_of_limit_at_density_<d>_threads_<t>` = measured speed-up vs
plain / that limit. `dense_r101_gmacs_1000` is the published dense R-101 (DCN in res3-res5)
baseline at resolution 1000 from the calculator. `--profile` adds, per density and thread
count, the milliseconds of one sparse forward under torch.profiler by stage and op
(`profile_at_density_<d>_threads_<t>`: {"stem"|"res2".."res5": {op: ms}}, ops below 1% of the
forward left out).
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

from fad.modeling.backbone.resnet import STAGE_BLOCKS, ResNetBody
from fad.modeling.backbone.sparse.flops import backbone_macs, reference_canvas
from fad.modeling.backbone.sparse.masks import forced_density
from fad.modeling.backbone.sparse_resnet import SparseOptions, SparseResNetBody
from fad.ops.sparse import kernel_available

from .timing import time_rounds

STAGES = ("res2", "res3", "res4", "res5")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, default=101, help="ResNet depth (default 101)")
    parser.add_argument("--size", default="800x1333", type=_parse_size,
                        help="HxW input size (padded to /32); e.g. 320x512 for a fast run")
    parser.add_argument("--densities", default="0.3,0.5,0.2", help="comma-separated densities")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per path")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--threads", default="1,2", type=_parse_threads,
                        help="comma-separated torch thread counts, each measured in turn "
                             "(0 = torch's default); unsuffixed keys repeat the last")
    parser.add_argument("--profile", action="store_true",
                        help="add a torch.profiler breakdown of one sparse forward by stage/op")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, input and masks")


def _parse_size(text: str) -> tuple[int, int]:
    """"HxW" -> (H, W), each rounded up to a multiple of 32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 800x1333, got {text!r}") from None
    return -(-h // 32) * 32, -(-w // 32) * 32


def _parse_threads(text: str) -> list[int]:
    """"1,2" -> [1, 2] (0 = torch's default thread count)."""
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"must look like 1,2 (counts >= 0), got {text!r}")
    return counts


def profile_forward(body: SparseResNetBody, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Milliseconds of one forward of `body` by stage ("stem", "res2".."res5") and top-level op
    (torch.profiler; ops below 1% of the forward are left out)."""
    layers = [body.layer1, body.layer2, body.layer3, body.layer4]
    open_ranges: list[torch.autograd.profiler.record_function] = []

    def enter(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            open_ranges.append(torch.autograd.profiler.record_function(name))
            open_ranges[-1].__enter__()
        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        open_ranges.pop().__exit__(None, None, None)

    handles = [h for name, layer in zip(STAGES, layers) for h in (
        layer.register_forward_pre_hook(enter(name)), layer.register_forward_hook(leave))]
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            body(x)
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    stage_of_range = {e.id: e.name for e in events if e.name in STAGES}
    total = sum(e.cpu_time_total for e in events if e.cpu_parent is None)
    table: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in events:
        parent = e.cpu_parent
        if e.name in STAGES or (parent is not None and parent.id not in stage_of_range):
            continue
        stage = "stem" if parent is None else stage_of_range[parent.id]
        table[stage][e.name] += e.cpu_time_total
    return {stage: {op: round(us / 1e3, 1) for op, us in sorted(ops.items(), key=lambda i: -i[1])
                    if us >= 0.01 * total}
            for stage, ops in table.items()}


def _measure(sparse: SparseResNetBody, plain: nn.Module, x: torch.Tensor, density: float,
             args: argparse.Namespace, device: torch.device) -> dict:
    """One density at the current thread count: latencies, ratios, output difference."""
    x_plain = x.contiguous(memory_format=torch.channels_last)

    def forward(mode: str):
        sparse.execution = mode
        return sparse(x)

    with forced_density(sparse, density, args.seed):
        ref, out = forward("dense_masked"), forward("sparse")
        diff = max(((ref[k] - out[k]).abs().max() / ref[k].abs().max()).item() for k in ref)
        runs = {"dense": lambda: forward("dense_masked"), "sparse": lambda: forward("sparse"),
                "plain": lambda: plain(x_plain)}
        samples = time_rounds(runs, 1, args.repeats, device)
        profile = profile_forward(sparse, x) if args.profile else None
    med = {k: v * 1e3 for k, v in samples.medians().items()}
    result = {
        "speedup_at_density": samples.median_ratio("dense", "sparse"),
        "speedup_vs_plain_at_density": samples.median_ratio("plain", "sparse"),
        "cpu_time_speedup_vs_plain_at_density": samples.median_ratio("plain", "sparse", cpu=True),
        "dense_masked_ms_at_density": med["dense"], "sparse_ms_at_density": med["sparse"],
        "plain_ms_at_density": med["plain"], "max_rel_diff_at_density": diff,
    }
    result = {k: v if "diff" in k else round(v, 3 if "speedup" in k else 1)
              for k, v in result.items()}
    if profile is not None:
        result["profile_at_density"] = profile
    return result


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    height, width = args.size
    densities = [float(d) for d in args.densities.split(",") if d.strip()]
    sparse = SparseResNetBody(args.depth, FrozenBatchNorm2d, SparseOptions()).to(device).eval()
    block = tv_resnet.Bottleneck if args.depth >= 50 else tv_resnet.BasicBlock
    plain = ResNetBody(tv_resnet.ResNet(block, list(STAGE_BLOCKS[args.depth]),
                                        norm_layer=FrozenBatchNorm2d)).to(device).eval()
    plain = plain.to(memory_format=torch.channels_last)
    x = torch.rand(args.batch, 3, height, width, device=device)
    default_threads = torch.get_num_threads()
    threads = [t or default_threads for t in args.threads]
    plain_gmacs = backbone_macs(args.depth, height, width) / 1e9
    result = {
        "dense_r101_gmacs_1000": round(backbone_macs(
            101, *reference_canvas(1000), stage_with_dcn=(False, True, True, True)) / 1e9, 2),
        "depth": args.depth, "size": f"{height}x{width}", "batch": args.batch,
        "device": str(device), "threads": threads,
        "interp_kernel": kernel_available(device.type), "repeats": args.repeats,
        "plain_gmacs": round(plain_gmacs, 2),
    }
    try:
        with torch.no_grad():
            for d in densities:
                tag = f"{d:g}"
                limit = plain_gmacs / (backbone_macs(args.depth, height, width, d) / 1e9)
                result[f"theory_speedup_vs_plain_at_density_{tag}"] = round(limit, 3)
                for t in threads:
                    torch.set_num_threads(t)
                    measured = _measure(sparse, plain, x, d, args, device)
                    measured["fraction_of_limit_at_density"] = round(
                        measured["speedup_vs_plain_at_density"] / limit, 3)
                    for key, value in measured.items():
                        result[f"{key}_{tag}_threads_{t}"] = value
                        if t == threads[-1]:
                            result[f"{key}_{tag}"] = value
    finally:
        torch.set_num_threads(default_threads)
    return result
