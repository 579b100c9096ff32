"""A convolution's weight gradient as GEMMs over blocks of its im2col (`weight_grad_gemm`) or
summed directly by a compiled kernel (`weight_grad_direct`), and the `nn.Conv2d` that uses them
in training where they pay (`WgradConv2d`, `use_fast_weight_grad`; `weight_grad_path`;
`MODEL.OPS.CONV_WGRAD_BACKEND`)."""
from .direct import weight_grad_direct
from .dispatch import shape_eligible, weight_grad_path
from .gemm import weight_grad_gemm
from .layer import WgradConv2d, use_fast_weight_grad

__all__ = ["WgradConv2d", "shape_eligible", "use_fast_weight_grad", "weight_grad_direct",
           "weight_grad_gemm", "weight_grad_path"]
