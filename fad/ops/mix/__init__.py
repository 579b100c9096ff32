"""The mixing of a FAD supernet edge as one op: `sum_k relu(GroupNorm_k(x_k)) (+ base)`.

`gn_relu_sum(xs, scale, shift, groups, eps, base)` takes the K candidates that end in GroupNorm
+ ReLU (their GroupNorm inputs), each GroupNorm's affine already multiplied by the candidate's
mixing weight (`fad.nas.repshare`), and adds them into `base` (the other candidates' sum). On
CPU float32/float64 tensors it runs one compiled kernel (csrc/mix) forward and backward instead
of a GroupNorm, a ReLU and an add per candidate; everywhere else the pure-PyTorch reference.
Laid out as every op in `fad.ops`:

    schema.py     kernel schemas `fad_mix`, autograd (`GnReluSumFunction`)
    reference.py  `F.group_norm` + `F.relu` + adds
    dispatch.py   the backend choice: `kernel_runs`, `gn_relu_sum`
"""
from .dispatch import gn_relu_sum, kernel_runs
from .reference import gn_relu_sum_reference

__all__ = ["gn_relu_sum", "gn_relu_sum_reference", "kernel_runs"]
