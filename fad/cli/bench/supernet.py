"""FAD supernet towers: representation sharing vs the 10 candidates as separate ops.

Forward+backward of the search head (box + cls search towers over 5 FPN levels, predictors) at a
search-size input, once with RepShare mixed edges and once with the same ten candidates computed
as independent ops (`SeparateCandidates`), interleaved in one process, medians reported.
`speedup` = separate / shared time; `peak_memory_ratio` = separate / shared peak memory of one
step (CUDA: max allocated; CPU: bytes of tensors saved for backward); `flop_ratio` = separate /
shared forward FLOPs (torch's FlopCounterMode: convolutions, matmuls and the compiled depthwise
kernel, which registers the same count as a depthwise convolution), the limit of the speed-up;
`fraction_of_limit` = speedup / flop_ratio (`fraction_of_limit_paired`: from the median of the
rounds' own separate / shared ratios); the `_cpu` keys are the same from the process CPU
time of each step (all threads: at 1 thread on a machine that other jobs load it leaves out the
time the process waits for a core; with more threads it counts their spinning). On a CPU with
>= 2 threads the same two heads are also timed, in the same rounds, with their levels on two
threads (`TowerHead.parallel_levels`, as SOLVER.PARALLEL_HEAD_LEVELS runs them in training:
`--parallel-levels` K levels on the calling thread, the others on a worker, each thread with
half the intra-op threads): the `*_parallel_levels` keys. Also times full iterations (alpha
step + weight step) of the tiny search config on random data.
"""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fad.config import load_config
from fad.modeling.fcos import STRIDES
from fad.search.engine import SearchStep
from fad.search.supernet import build_search_head, build_supernet

from .batch import random_detection_batch
from .timing import Samples, time_rounds

TINY_CONFIG = "configs/fad/search/fad-fcos_tiny_synthetic.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", type=int, nargs=2, default=(416, 693) if cuda else (208, 347),
                        metavar=("H", "W"), help="input size (default 416x693 on CUDA, "
                        "208x347 on the CPU)")
    parser.add_argument("--batch", type=int, default=2 if cuda else 1)
    parser.add_argument("--edge-channels", type=int, default=96, help="C of every edge")
    parser.add_argument("--tower-channels", type=int, default=256, help="FPN and tower width")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--tiny-config", default=TINY_CONFIG,
                        help="search config whose full iteration is timed ('' to skip)")
    parser.add_argument("--tiny-iters", type=int, default=3, help="timed tiny search iterations")
    parser.add_argument("--parallel-levels", type=int, default=1, metavar="K",
                        help="also time the heads with levels [0, K) on the calling thread and "
                        "the others on a worker thread (CPU, >= 2 threads; 0 skips)")


def _features(args, device) -> list[torch.Tensor]:
    h, w = (math.ceil(v / 32) * 32 for v in args.size)
    g = torch.Generator().manual_seed(0)
    return [torch.randn(args.batch, args.tower_channels, math.ceil(h / s), math.ceil(w / s),
                        generator=g).to(device) for s in STRIDES]


class _SavedBytes:
    """Counts the bytes of distinct tensors autograd saves for backward (CPU memory proxy)."""

    def __init__(self):
        self.ptrs: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type != "meta":
            self.ptrs[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.ptrs.values())


def _step(head: nn.Module, feats: list[torch.Tensor]) -> Callable[[], None]:
    """One forward+backward of `head` (gradients cleared first)."""
    def step() -> None:
        head.zero_grad(set_to_none=True)
        sum(v.float().mean() for v in head(feats).values()).backward()
    return step


def _parallel_step(head: nn.Module, feats: list[torch.Tensor], first: int
                   ) -> Callable[[], None]:
    """`_step` with the head's levels [0, first) on this thread and the others on the worker."""
    step = _step(head, feats)

    def parallel() -> None:
        head.parallel_levels = first
        try:
            step()
        finally:
            head.parallel_levels = 0
    return parallel


def _ratios(samples: Samples, flop_ratio: float, suffix: str) -> dict:
    """Step seconds (medians), speed-up and `fraction_of_limit` (wall and CPU) of the heads
    `shared` + suffix and `separate` + suffix, and `fraction_of_limit_paired` (the median over
    rounds of each round's separate / shared wall time, which a drift of the machine's speed
    between rounds moves less); the keys carry the suffix."""
    times, cpu = samples.medians(), samples.medians(cpu=True)
    shared, separate = times["shared" + suffix], times["separate" + suffix]
    paired = samples.median_ratio("separate" + suffix, "shared" + suffix)
    return {
        f"shared_step{suffix}_s": round(shared, 4), f"separate_step{suffix}_s": round(separate, 4),
        f"speedup{suffix}": round(separate / shared, 3),
        f"fraction_of_limit{suffix}": round(separate / shared / flop_ratio, 3),
        f"fraction_of_limit_paired{suffix}": round(paired / flop_ratio, 3),
        f"shared_step_cpu{suffix}_s": round(cpu["shared" + suffix], 4),
        f"separate_step_cpu{suffix}_s": round(cpu["separate" + suffix], 4),
        f"fraction_of_limit_cpu{suffix}": round(cpu["separate" + suffix] / cpu["shared" + suffix]
                                                / flop_ratio, 3),
    }


def _peak_bytes(head: nn.Module, feats: list[torch.Tensor], device: torch.device) -> int:
    """Peak memory of one forward+backward: CUDA max allocated above the start, on the CPU the
    bytes of the tensors saved for backward."""
    counter = _SavedBytes()
    head.zero_grad(set_to_none=True)  # the last timed step's gradients are not in the baseline
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t):
        _step(head, feats)()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    return counter.total


def _tower_benchmark(args, device: torch.device) -> dict:
    cfg = load_config(None, ["MODEL.FPN.OUT_CHANNELS", args.tower_channels,
                             "MODEL.FAD.TOWER_CHANNELS", args.tower_channels,
                             "MODEL.FAD.EDGE_CHANNELS", args.edge_channels])
    heads = {}
    for name, shared in (("shared", True), ("separate", False)):
        torch.manual_seed(0)
        heads[name] = build_search_head(cfg, args.classes, shared=shared).to(device).train()
    feats = _features(args, device)
    steps = {n: _step(h, feats) for n, h in heads.items()}
    parallel = (device.type == "cpu" and torch.get_num_threads() >= 2
                and 0 < args.parallel_levels < len(feats))
    if parallel:
        steps.update({f"{n}_parallel_levels": _parallel_step(h, feats, args.parallel_levels)
                      for n, h in heads.items()})
    samples = time_rounds(steps, 1, args.repeats, device, grad=True)
    peaks = {n: _peak_bytes(h, feats, device) for n, h in heads.items()}
    flops = {}
    for name, head in heads.items():
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            head(feats)
        flops[name] = counter.get_total_flops()
    flop_ratio = flops["separate"] / flops["shared"]
    params = {n: sum(p.numel() for p in h.parameters()) for n, h in heads.items()}
    result = {
        "input": list(args.size), "batch": args.batch, "edge_channels": args.edge_channels,
        "tower_channels": args.tower_channels, "levels": [list(f.shape[-2:]) for f in feats],
        **_ratios(samples, flop_ratio, ""), "target": ">= 2.0",
        "memory": "cuda max allocated" if device.type == "cuda" else "bytes saved for backward",
        "shared_peak_mib": round(peaks["shared"] / 2**20, 1),
        "separate_peak_mib": round(peaks["separate"] / 2**20, 1),
        "peak_memory_ratio": round(peaks["separate"] / peaks["shared"], 3),
        "shared_forward_gflops": round(flops["shared"] / 1e9, 2),
        "separate_forward_gflops": round(flops["separate"] / 1e9, 2),
        "flop_ratio": round(flop_ratio, 3),
        "shared_params": params["shared"], "separate_params": params["separate"],
    }
    if parallel:
        result.update(parallel_levels_first=args.parallel_levels,
                      **_ratios(samples, flop_ratio, "_parallel_levels"))
    return result


def _tiny_search_benchmark(args, device: torch.device) -> dict:
    cfg = load_config(args.tiny_config, ["MODEL.DEVICE", str(device)])
    torch.manual_seed(0)
    num_classes = 4
    model = build_supernet(cfg, num_classes).to(device).train()
    step = SearchStep(cfg, model, device)
    size = (cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN)
    train, val = (random_detection_batch(size, cfg.SOLVER.IMS_PER_BATCH, num_classes, device,
                                         seed, boxes=3) for seed in (1, 2))
    iter_s = time_rounds({"iter": lambda: step.run((train, val))}, 1, args.tiny_iters, device,
                         grad=True).medians()["iter"]
    return {"tiny_config": args.tiny_config, "tiny_batch": cfg.SOLVER.IMS_PER_BATCH,
            "tiny_input": [cfg.INPUT.MIN_SIZE_TRAIN[0], cfg.INPUT.MAX_SIZE_TRAIN],
            "tiny_search_iter_s": round(iter_s, 3),
            "tiny_search_max_iter": cfg.SOLVER.MAX_ITER,
            "tiny_search_est_total_s": round(iter_s * cfg.SOLVER.MAX_ITER, 1)}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    result = {"device": str(device), "threads": torch.get_num_threads(),
              **_tower_benchmark(args, device)}
    if args.tiny_config:
        result.update(_tiny_search_benchmark(args, device))
    return result
