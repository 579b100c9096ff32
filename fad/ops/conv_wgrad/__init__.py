"""A convolution's weight gradient as GEMMs over blocks of its im2col (`weight_grad_gemm`), and the
`nn.Conv2d` that uses it in training where it pays (`GemmWgradConv2d`, `use_gemm_weight_grad`;
`MODEL.OPS.CONV_WGRAD_BACKEND`)."""
from .dispatch import gemm_weight_grad_runs, shape_eligible
from .gemm import weight_grad_gemm
from .layer import GemmWgradConv2d, use_gemm_weight_grad

__all__ = ["GemmWgradConv2d", "gemm_weight_grad_runs", "shape_eligible",
           "use_gemm_weight_grad", "weight_grad_gemm"]
