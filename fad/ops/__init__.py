"""Fused ops: multi-scale deformable attention (custom op `fad::ms_deform_attn`) and its layer,
the depthwise 3x3 convolution, the SparseResNet sparse-execution kernels, and the build and
backend settings of their compiled kernels.

Every op is a package of the same shape (`fad/ops/<op>/`): `schema.py` (torch.library
definitions, fake, autograd, FLOP formula), `reference.py` (pure PyTorch), `dispatch.py` (which
backend runs). `build.py` compiles or loads the csrc/ extensions; `backends.py` holds the
backend settings (MODEL.OPS.<OP>_BACKEND, FAD_<OP>_BACKEND). Importing needs no compiler or
GPU: kernels are built (or loaded) on first use, and the reference runs where they cannot (see
docs/ops.md). `python -m fad.ops.selftest` checks every available backend against the reference.
"""
from .backends import configure_backends, get_backend, set_backend
from .msda import MSDeformAttn, ms_deform_attn_reference, multi_scale_deformable_attention

__all__ = [
    "MSDeformAttn",
    "configure_backends",
    "get_backend",
    "ms_deform_attn_reference",
    "multi_scale_deformable_attention",
    "set_backend",
]
