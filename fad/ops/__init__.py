"""Fused ops: multi-scale deformable attention (custom op `fad::ms_deform_attn`) and its layer.

Importing needs no compiler: the C++/CUDA kernels are built (or loaded) on first use, and the
pure-PyTorch reference runs where they cannot be (see `fad.ops.backend`).
"""
from .backend import get_msda_backend, set_msda_backend
from .ms_deform_attn import MSDeformAttn
from .msda import multi_scale_deformable_attention
from .msda_reference import ms_deform_attn_reference

__all__ = [
    "MSDeformAttn",
    "get_msda_backend",
    "ms_deform_attn_reference",
    "multi_scale_deformable_attention",
    "set_msda_backend",
]
