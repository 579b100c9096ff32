"""SparseResNet: dense-masked vs sparse execution latency at forced mask densities, and GMACs.

The same randomly initialised SparseResNet body (FrozenBN, eval, batch `--batch`) runs with the
masks of every block replaced by seeded Bernoulli(d) masks (identical for both paths) in its
masked dense execution and in its sparse execution, interleaved, `--repeats` times; a plain
torchvision ResNet body of the same depth runs in the same loop. Reported per density d:
median latencies, the median of the per-repetition ratios `speedup_at_density_<d>`
(dense-masked / sparse) and `speedup_vs_plain_at_density_<d>` (plain ResNet / sparse), the
theoretical ratio from the FLOPs calculator, and the largest difference between the two paths'
outputs relative to the output's largest magnitude. `dense_r101_gmacs_1000` is the published
dense R-101 (DCN in res3-res5) baseline at resolution 1000 from the calculator.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

from fad.modeling.backbone.resnet import STAGE_BLOCKS, ResNetBody
from fad.modeling.backbone.sparse.flops import backbone_macs, reference_canvas
from fad.modeling.backbone.sparse.kernel import kernel_available
from fad.modeling.backbone.sparse.masks import forced_density
from fad.modeling.backbone.sparse_resnet import SparseOptions, SparseResNetBody


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--depth", type=int, default=101, help="ResNet depth (default 101)")
    parser.add_argument("--size", default="800x1333", type=_parse_size,
                        help="HxW input size (padded to /32); e.g. 320x512 for a fast run")
    parser.add_argument("--densities", default="0.3,0.5,0.2", help="comma-separated densities")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per path")
    parser.add_argument("--batch", type=int, default=1, help="images per forward")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, input and masks")


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _parse_size(text: str) -> tuple[int, int]:
    """"HxW" -> (H, W), each rounded up to a multiple of 32."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 800x1333, got {text!r}") from None
    return -(-h // 32) * 32, -(-w // 32) * 32


def run(args: argparse.Namespace) -> dict:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
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
    x_plain = x.contiguous(memory_format=torch.channels_last)

    def forward(mode: str):
        sparse.execution = mode
        return sparse(x)

    result = {
        "dense_r101_gmacs_1000": round(backbone_macs(
            101, *reference_canvas(1000), stage_with_dcn=(False, True, True, True)) / 1e9, 2),
        "depth": args.depth, "size": f"{height}x{width}", "batch": args.batch,
        "device": str(device), "threads": torch.get_num_threads(),
        "interp_kernel": kernel_available(device.type), "repeats": args.repeats,
    }
    plain_gmacs = backbone_macs(args.depth, height, width) / 1e9
    result["plain_gmacs"] = round(plain_gmacs, 2)
    with torch.no_grad():
        for d in densities:
            with forced_density(sparse, d, args.seed):
                ref, out = forward("dense_masked"), forward("sparse")
                diff = max(((ref[k] - out[k]).abs().max() / ref[k].abs().max()).item()
                           for k in ref)
                plain(x_plain)
                times = {"dense": [], "sparse": [], "plain": []}
                for _ in range(args.repeats):
                    times["dense"].append(_timed(lambda: forward("dense_masked"), device))
                    times["sparse"].append(_timed(lambda: forward("sparse"), device))
                    times["plain"].append(_timed(lambda: plain(x_plain), device))
            tag = f"{d:g}"
            med = {k: statistics.median(v) for k, v in times.items()}
            ratio = statistics.median(a / b for a, b in zip(times["dense"], times["sparse"]))
            ratio_plain = statistics.median(a / b for a, b in zip(times["plain"], times["sparse"]))
            sparse_gmacs = backbone_macs(args.depth, height, width, d) / 1e9
            result.update({
                f"speedup_at_density_{tag}": round(ratio, 3),
                f"speedup_vs_plain_at_density_{tag}": round(ratio_plain, 3),
                f"theory_speedup_vs_plain_at_density_{tag}": round(plain_gmacs / sparse_gmacs, 3),
                f"dense_masked_ms_at_density_{tag}": round(med["dense"], 1),
                f"sparse_ms_at_density_{tag}": round(med["sparse"], 1),
                f"plain_ms_at_density_{tag}": round(med["plain"], 1),
                f"max_rel_diff_at_density_{tag}": diff,
            })
    return result

