"""Multi-scale deformable attention (Deformable DETR), laid out as every op in `fad.ops`:

    schema.py     custom op `fad::ms_deform_attn` (+ backward), kernel schemas `fad_msda`,
                  input checks, fake, autograd, autocast, FLOP formulas, and the entry point
                  `multi_scale_deformable_attention`
    reference.py  pure-PyTorch reference (`grid_sample`) and its closed-form backward
    dispatch.py   the backend choice (reference, cpp, cuda, triton, auto) and the call into each
    triton.py     Triton kernels (GPU; CPU under TRITON_INTERPRET=1), imported on first use
    layer.py      `MSDeformAttn`, the attention layer on the op; `level_tensors`
    inputs.py     random and edge-case inputs (selftest, tests, examples)
"""
from .dispatch import backend_for, backend_unavailable
from .layer import MSDeformAttn, level_tensors
from .reference import ms_deform_attn_reference, ms_deform_attn_reference_backward
from .schema import msda_flops, multi_scale_deformable_attention

__all__ = [
    "MSDeformAttn",
    "backend_for",
    "backend_unavailable",
    "level_tensors",
    "ms_deform_attn_reference",
    "ms_deform_attn_reference_backward",
    "msda_flops",
    "multi_scale_deformable_attention",
]
