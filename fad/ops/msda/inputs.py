"""Random MSDA inputs (tests, examples): value, shapes, starts, locations, weights
(`level_tensors`, from `layer.py`, makes the level tensors)."""
from __future__ import annotations

import torch
from torch import Tensor

from .layer import level_tensors


def edge_locations(height: int, width: int, dtype: torch.dtype, kinks: bool = True) -> Tensor:
    """[K, 2] (x, y) points on and around the map's borders: pixel coordinate x * W - 0.5 at
    -3, -0.75, -0.5, 0.25, W - 0.75, W - 0.5, W - 0.25, W + 2 and, with `kinks`, also at the
    points where bilinear sampling is not differentiable (-1, 0, W - 1, W); each x is paired with
    inside and outside y values and vice versa."""
    def coords(size: int) -> list[float]:
        pix = [-3.0, -0.75, -0.5, 0.25, size - 0.75, size - 0.5, size - 0.25, size + 2.0]
        if kinks:
            pix += [-1.0, 0.0, size - 1.0, float(size)]
        return [(p + 0.5) / size for p in pix]

    xs, ys = coords(width), coords(height)
    pairs = [(x, y) for x in xs for y in (ys[0], ys[3], ys[5])]
    pairs += [(x, y) for x in (xs[3], xs[5]) for y in ys]
    return torch.tensor(pairs, dtype=dtype)


def random_msda_inputs(
    batch: int, shapes: list[tuple[int, int]], heads: int, dim: int, queries: int, points: int,
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu", seed: int = 0,
    edges: bool = False, kinks: bool = True, margin: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(value [N, S, M, D], spatial_shapes, level_start_index, sampling_locations
    [N, Lq, M, L, P, 2] uniform in [-margin, 1 + margin], attention_weights [N, Lq, M, L, P]
    softmaxed over L * P). With `edges`, the first points of every level are replaced by
    `edge_locations(..., kinks)` of that level (as many as fit in N * Lq * M * P)."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes, starts = level_tensors(shapes)
    num_levels, num_tokens = len(shapes), int(spatial_shapes.prod(1).sum())
    value = torch.randn(batch, num_tokens, heads, dim, generator=g, dtype=dtype)
    loc = torch.rand(batch, queries, heads, num_levels, points, 2, generator=g, dtype=dtype)
    loc = loc * (1 + 2 * margin) - margin
    if edges:
        for level, (h, w) in enumerate(shapes):
            pts = edge_locations(h, w, dtype, kinks)
            slots = loc[:, :, :, level].reshape(-1, 2)  # [N*Lq*M*P, 2] copy
            k = min(len(pts), len(slots))
            slots[:k] = pts[:k]
            loc[:, :, :, level] = slots.view(batch, queries, heads, points, 2)
    attn = torch.randn(batch, queries, heads, num_levels * points, generator=g, dtype=dtype)
    attn = attn.softmax(-1).view(batch, queries, heads, num_levels, points)
    return (value.to(device), spatial_shapes.to(device), starts.to(device), loc.to(device),
            attn.to(device))
