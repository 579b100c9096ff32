"""The SparseResNet ops: Gaussian interpolation of rows, gathered convs and im2col windows at
sampled positions, active rows of a mask, mask-conv tap sums, the fused stem (the model side is
`fad.modeling.backbone.sparse`). Laid out as every op in `fad.ops`:

    schema.py     kernel schemas `fad_sparse` (csrc/sparse_resnet), FLOP formulas
    reference.py  pure-PyTorch references (any device and dtype, differentiable)
    dispatch.py   kernel or reference per call (MODEL.OPS.SPARSE_BACKEND / FAD_SPARSE_BACKEND)
"""
from . import schema  # noqa: F401  (declares fad_sparse and its FLOP formula)
from .dispatch import (
    active_rows,
    gather_conv,
    gather_windows,
    interpolate_rows,
    kernel_available,
    kernel_runs,
    stem,
    tap_sum,
)
from .reference import EPS, interpolate_dense, with_zero_row

__all__ = [
    "EPS",
    "active_rows",
    "gather_conv",
    "gather_windows",
    "interpolate_dense",
    "interpolate_rows",
    "kernel_available",
    "kernel_runs",
    "stem",
    "tap_sum",
    "with_zero_row",
]
