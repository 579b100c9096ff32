"""GroupNorm + ReLU as one op for channels-last (NHWC) maps, with a compiled CPU forward and
backward (csrc/gn_relu).

`group_norm_relu(x, groups, weight, bias, eps)` is `relu(F.group_norm(x, ...))`. On CPU
float32/float64 channels-last tensors it runs one kernel each way (PyTorch's CPU GroupNorm on
channels-last input is several times slower than a pass over memory, and the ReLU and its
backward are two more passes); everywhere else (NCHW, CUDA, other dtypes, torch.compile) the
pure-PyTorch reference. `GroupNormReLU` is an `nn.GroupNorm` whose forward is the op, and
`fuse_group_norm_relu(model)` puts it in place of every (GroupNorm, ReLU) pair of a model's
nn.Sequential containers (same state dict). Laid out as every op in `fad.ops`:

    schema.py     kernel schemas `fad_gn_relu` (`gn_relu`: forward + autograd in C++), fakes
    reference.py  `F.group_norm` + `F.relu`
    dispatch.py   the backend choice: `kernel_runs`, `group_norm_relu`
    layer.py      `GroupNormReLU`, `fuse_group_norm_relu`
    segments.py   `group_norm_relu_segments`: each segment of a map's positions on its own
                  (the packed FPN levels of fad/modeling/fcos/mosaic.py), `segments_scope`
"""
from .dispatch import group_norm_relu, kernel_runs
from .layer import GroupNormReLU, fuse_group_norm_relu
from .reference import group_norm_relu_reference
from .segments import group_norm_relu_segments, segments_scope

__all__ = ["GroupNormReLU", "fuse_group_norm_relu", "group_norm_relu",
           "group_norm_relu_reference", "group_norm_relu_segments", "kernel_runs",
           "segments_scope"]
