"""Fused ops: multi-scale deformable attention (custom op `fad::ms_deform_attn`) and its layer,
the depthwise 3x3 convolution, and the loader and backend settings of their compiled kernels.

Importing needs no compiler or GPU: kernels are built (or loaded) on first use, and the
pure-PyTorch reference runs where they cannot (see `fad.ops.kernels` and docs/ops.md).
`python -m fad.ops.selftest` checks every available backend against the reference.
"""
from .kernels import configure_backends, get_backend, set_backend
from .msda import multi_scale_deformable_attention
from .msda_layer import MSDeformAttn
from .msda_reference import ms_deform_attn_reference

__all__ = [
    "MSDeformAttn",
    "configure_backends",
    "get_backend",
    "ms_deform_attn_reference",
    "multi_scale_deformable_attention",
    "set_backend",
]
