"""Depthwise 3x3 convolution with a compiled CPU forward and backward (csrc/depthwise).

`DepthwiseConv3x3(channels, dilation)` is an `nn.Conv2d(C, C, 3, padding=d, dilation=d,
groups=C, bias=False)` (same parameters and state_dict) whose forward on CPU float32/float64
tensors, NCHW or channels-last (csrc/depthwise/depthwise_nhwc_cpu.cpp), runs `torch.ops.fad_dw`
kernels: PyTorch's CPU depthwise path runs far below its dense 3x3 throughput (several times
slower fwd+bwd than this kernel, most of all with dilation), and the FAD supernet and sinSep /
dilated units are full of these convolutions. Everywhere else it is plain `F.conv2d`. Laid out
as every op in `fad.ops`:

    schema.py     kernel schemas `fad_dw` (`conv`: forward + autograd in C++), FLOP formula
    reference.py  `F.conv2d`
    dispatch.py   the backend choice: `kernel_runs`, `depthwise_conv3x3`
    layer.py      `DepthwiseConv3x3`
"""
from .dispatch import depthwise_conv3x3, kernel_runs
from .layer import DepthwiseConv3x3
from .reference import depthwise_conv3x3_reference

__all__ = ["DepthwiseConv3x3", "depthwise_conv3x3", "depthwise_conv3x3_reference", "kernel_runs"]
