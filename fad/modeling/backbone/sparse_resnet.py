"""SparseResNet: ResNet blocks that compute a sampled subset of positions and interpolate the rest.

"Spatially Adaptive Inference with Stochastic Feature Sampling and Interpolation" (ECCV 2020).
Every block (torchvision Bottleneck or BasicBlock, so torchvision state dicts load) gets two mask
convs reading the block input: `conv1_mask` at conv1's output resolution, `conv2_mask` at conv2's
(it also governs conv3). Masks are sampled (`sparse/masks.py`) and the features are
reconstructed by a learnable Gaussian interpolation (`sparse/interpolation.py`) after conv1 and
after conv2 (Bottleneck: on conv2's post-ReLU output; BasicBlock: on conv2's output before BN2,
which is equivalent since BN is per-channel affine). Stem, shortcuts and the residual add stay
dense. Optional deformable conv2 (torchvision `deform_conv2d`) with an offset conv reading the
block input.

Inference runs either the reference masked dense computation (`execution = "dense_masked"`) or
the sparse one (`"sparse"`, `sparse/execution.py`), equal to float rounding. The body runs
channels-last and returns channels-last feature maps.

The body adds `loss_sparse` = weight / num_blocks * sum_blocks (0.25 mean(p1) + 0.75 mean(p2))
through `aux_losses()` and reports mask densities and backbone GMACs through `log_stats()`
(training: means of the soft masks of the last forward; inference: fractions of computed
positions averaged over all forwards since `eval()`).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import deform_conv2d
from yacs.config import CfgNode

from ..hooks import ModelHooks
from .resnet import (
    STAGE_BLOCKS,
    STAGE_PLANES,
    body_channels,
    check_depth,
    freeze_stages,
    load_pretrained,
    norm_layer,
    set_norm_eval,
)
from .sparse.execution import (
    MaskLink,
    linked,
    run_stage,
    sparse_basic,
    sparse_bottleneck,
    sparse_stem,
)
from .sparse.flops import backbone_macs
from .sparse.interpolation import GaussianInterpolation
from .sparse.masks import MaskSampler, forced_density, small_conv3x3

EXECUTION_MODES = ("dense_masked", "sparse")
# parameters absent from torchvision checkpoints: trainable even in frozen stages
NEW_MODULES = ("conv1_mask", "conv2_mask", "conv2_offset", "interp1", "interp2")

__all__ = ["SparseOptions", "SparseBottleneck", "SparseBasicBlock", "SparseResNetBody",
           "build_sparse_resnet_body", "forced_density"]


@dataclass(frozen=True)
class SparseOptions:
    """Block options from `MODEL.SPARSE` (see fad/config/defaults_sparse.py)."""

    masked: bool = True
    mask_init_bias: float = 3.0
    temperature_init: float = 1.0
    temperature_decay: float = 0.99998
    test_temperature: float = 0.03
    sampling: str = "stochastic"
    grid_interval: int = 11
    interp_kernel: int = 7
    interp_init_scale: float = 3.0

    @classmethod
    def from_cfg(cls, sp: CfgNode) -> SparseOptions:
        return cls(sp.MASKED, sp.MASK_INIT_BIAS, sp.TEMPERATURE_INIT, sp.TEMPERATURE_DECAY,
                   sp.TEST_TEMPERATURE, sp.SAMPLING, sp.GRID_INTERVAL, sp.INTERP_KERNEL,
                   sp.INTERP_INIT_SCALE)


class SparseBlockMixin:
    """Masks, interpolation sites, optional DCN offsets and statistics shared by both blocks."""

    # sparse execution may write the output onto the input (set by `run_stage` while the body
    # runs a stage: the input is then the previous block's output, which nothing else holds)
    overwrite_input = False
    # sparse execution: the block computes the following block's mask tap rows (`link_out`), or
    # takes its own from the previous block (`link_in`); set by `linked` while the body runs
    link_in: MaskLink | None = None
    link_out: MaskLink | None = None

    def _init_sparse(self, inplanes: int, strides: tuple[int, int], opts: SparseOptions,
                     unit_id: int, dcn: bool) -> None:
        self.execution = "dense_masked"
        self.conv2_offset = None
        if dcn:
            self.conv2_offset = nn.Conv2d(inplanes, 18, 3, strides[1], 1)
        self.masked = opts.masked
        self.loss_term: Tensor | None = None
        self.density: Tensor | None = None
        if not opts.masked:
            return
        self.conv1_mask = nn.Conv2d(inplanes, 1, 3, strides[0], 1)
        self.conv2_mask = nn.Conv2d(inplanes, 1, 3, strides[1], 1)
        for conv in (self.conv1_mask, self.conv2_mask):
            nn.init.zeros_(conv.weight)
            nn.init.constant_(conv.bias, opts.mask_init_bias)
        samplers = [MaskSampler(opts.temperature_init, opts.temperature_decay,
                                opts.test_temperature, opts.grid_interval, opts.sampling,
                                unit_id=2 * unit_id + i) for i in range(2)]
        self.sampler1, self.sampler2 = samplers
        self.interp1 = GaussianInterpolation(opts.interp_kernel, opts.interp_init_scale)
        self.interp2 = GaussianInterpolation(opts.interp_kernel, opts.interp_init_scale)

    def masks(self, x: Tensor, count: bool = True,
              taps: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Masks (m1 [N,1,H1,W1], m2 [N,1,H2,W2]) for input x; records loss term and densities
        (at inference with `count` False the caller records them: sparse execution takes them
        from its own count of the sampled positions). `taps`: the mask convs' tap rows
        [N*H*W, 18] of x when already computed (`small_conv3x3`)."""
        logits1, logits2 = small_conv3x3(x, self.mask_convs(), taps)
        m1, m2 = self.sampler1(logits1), self.sampler2(logits2)
        self.loss_term = None
        if self.training:
            self.loss_term = (0.25 * torch.sigmoid(logits1).mean()
                              + 0.75 * torch.sigmoid(logits2).mean())
            self.density = torch.stack([m1.mean(), m2.mean()]).detach().float()
        elif count:
            density = [torch.count_nonzero(m) / m.numel() for m in (m1, m2)]
            self.density = torch.stack(density).float()
        return m1, m2

    def mask_convs(self) -> list[nn.Conv2d]:
        """conv1_mask and conv2_mask (one GEMM computes both, `small_conv3x3`)."""
        return [self.conv1_mask, self.conv2_mask]

    def _conv2(self, out: Tensor, x: Tensor) -> Tensor:
        """conv2 of the conv1 features `out`; deformable with offsets from the block input x."""
        if self.conv2_offset is None:
            return self.conv2(out)
        offset = small_conv3x3(x, [self.conv2_offset])[0]
        return deform_conv2d(out, offset, self.conv2.weight, stride=self.conv2.stride,
                             padding=self.conv2.padding)

    def _use_sparse(self) -> bool:
        return self.execution == "sparse" and self.masked and not self.training


class SparseBottleneck(SparseBlockMixin, tv_resnet.Bottleneck):
    """torchvision Bottleneck (stride in conv2) with masks, interpolation and optional DCN."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, norm: type[nn.Module] | None = None,
                 opts: SparseOptions = SparseOptions(), unit_id: int = 0, dcn: bool = False):
        super().__init__(inplanes, planes, stride, downsample, norm_layer=norm)
        self._init_sparse(inplanes, (1, stride), opts, unit_id, dcn)

    def forward(self, x: Tensor) -> Tensor:
        if self._use_sparse():
            return sparse_bottleneck(self, x)
        identity = x if self.downsample is None else self.downsample(x)
        m1, m2 = self.masks(x) if self.masked else (None, None)
        out = self.relu(self.bn1(self.conv1(x)))
        if m1 is not None:
            out = self.interp1(out, m1)
        out = self.relu(self.bn2(self._conv2(out, x)))
        if m2 is not None:
            out = self.interp2(out, m2)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class SparseBasicBlock(SparseBlockMixin, tv_resnet.BasicBlock):
    """torchvision BasicBlock with masks (both at the block's output resolution)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, norm: type[nn.Module] | None = None,
                 opts: SparseOptions = SparseOptions(), unit_id: int = 0, dcn: bool = False):
        if dcn:
            raise ValueError("a deformable conv2 (stage_with_dcn) needs Bottleneck blocks "
                             "(depth >= 50)")
        super().__init__(inplanes, planes, stride, downsample, norm_layer=norm)
        self._init_sparse(inplanes, (stride, stride), opts, unit_id, dcn=False)

    def forward(self, x: Tensor) -> Tensor:
        if self._use_sparse():
            return sparse_basic(self, x)
        identity = x if self.downsample is None else self.downsample(x)
        m1, m2 = self.masks(x) if self.masked else (None, None)
        out = self.relu(self.bn1(self.conv1(x)))
        if m1 is not None:
            out = self.interp1(out, m1)
        out = self.conv2(out)
        if m2 is not None:
            out = self.interp2(out, m2)
        out = self.bn2(out)
        return self.relu(out + identity)


class SparseResNetBody(nn.Module, ModelHooks):
    """Stem + res2..res5 of sparse blocks; `forward(x [N,3,H,W])` -> OrderedDict c2..c5.

    Module names follow torchvision's ResNet (conv1, bn1, layer1..layer4) so its state dicts load.
    Init from scratch as the reference's: kaiming convs, DCN offset convs zero (`reset_offsets`
    gives them PyTorch's default init, the reference's state under ImageNet weights).
    `norm_eval`: BatchNorm layers stay in eval mode when the body trains (frozen statistics,
    trainable affine parameters; the reference's `norm_eval`).
    """

    def __init__(self, depth: int, norm: type[nn.Module] = nn.BatchNorm2d,
                 opts: SparseOptions = SparseOptions(), loss_weight: float = 0.0,
                 stage_with_dcn: Sequence[bool] = (False, False, False, False),
                 norm_eval: bool = False):
        super().__init__()
        check_depth(depth)
        if len(stage_with_dcn) != 4:
            raise ValueError(f"stage_with_dcn needs 4 entries (res2..res5), got {stage_with_dcn}")
        self.depth = depth
        self.loss_weight = float(loss_weight)
        self.stage_with_dcn = tuple(bool(d) for d in stage_with_dcn)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        block = SparseBottleneck if depth >= 50 else SparseBasicBlock
        inplanes, unit = 64, 0
        for stage, (count, planes) in enumerate(zip(STAGE_BLOCKS[depth], STAGE_PLANES)):
            blocks = []
            for i in range(count):
                stride = 2 if (i == 0 and stage > 0) else 1
                downsample = None
                if stride != 1 or inplanes != planes * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                        norm(planes * block.expansion))
                blocks.append(block(inplanes, planes, stride, downsample, norm, opts, unit,
                                    self.stage_with_dcn[stage]))
                inplanes, unit = planes * block.expansion, unit + 1
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self._init_weights()
        self.execution = "dense_masked"
        self._input_size: tuple[int, int] | None = None
        self.norm_eval = norm_eval
        self.train()

    def _init_weights(self) -> None:
        for name, m in self.named_modules():
            if isinstance(m, nn.Conv2d) and not name.endswith(NEW_MODULES):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for conv in self._offset_convs():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def _offset_convs(self) -> list[nn.Conv2d]:
        return [b.conv2_offset for b in self.blocks if b.conv2_offset is not None]

    def reset_offsets(self) -> None:
        """PyTorch's default init for the DCN offset convs (done before loading ImageNet weights,
        as the reference, which zeroes them only when training from scratch)."""
        for conv in self._offset_convs():
            conv.reset_parameters()

    def stages(self) -> list[nn.Module]:
        """Stem (conv1 + bn1), layer1..layer4 (the order `freeze_stages` counts in)."""
        return [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3,
                self.layer4]

    @property
    def blocks(self) -> list[SparseBlockMixin]:
        return [b for layer in (self.layer1, self.layer2, self.layer3, self.layer4) for b in layer]

    @property
    def execution(self) -> str:
        return self._execution

    @execution.setter
    def execution(self, mode: str) -> None:
        if mode not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {', '.join(EXECUTION_MODES)}, "
                             f"got {mode!r}")
        self._execution = mode
        for b in self.blocks:
            b.execution = mode

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        self._input_size = (x.shape[-2], x.shape[-1])
        x = x.contiguous(memory_format=torch.channels_last)
        if self.execution == "sparse" and not self.training:
            x = sparse_stem(self, x)
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = OrderedDict()
        with linked(self.blocks):
            for name, layer in zip(("c2", "c3", "c4", "c5"),
                                   (self.layer1, self.layer2, self.layer3, self.layer4)):
                x = run_stage(layer, x)
                feats[name] = x
        if not self.training:
            self._accumulate_eval_stats()
        return feats

    def train(self, mode: bool = True) -> SparseResNetBody:
        """Switch mode (BatchNorm stays in eval mode with `norm_eval`); also restarts the
        inference statistics that `log_stats` averages."""
        super().train(mode)
        if mode and self.norm_eval:
            set_norm_eval(self)
        self._eval_stats: dict[str, float] = {"forwards": 0, "gmacs": 0.0}
        self._eval_density_sum: Tensor | None = None
        return self

    def _accumulate_eval_stats(self) -> None:
        densities = self._density_tensor()
        self._eval_stats["forwards"] += 1
        values = None if densities is None else densities.tolist()  # host sync: GMACs statistic
        pairs = None if values is None else [tuple(d) for d in values]
        self._eval_stats["gmacs"] += backbone_macs(self.depth, *self._input_size, pairs,
                                                   self.stage_with_dcn) / 1e9
        if densities is not None:
            self._eval_density_sum = densities if self._eval_density_sum is None else (
                self._eval_density_sum + densities)

    def _density_tensor(self) -> Tensor | None:
        blocks = self.blocks
        if blocks[0].density is None:
            return None
        return torch.stack([b.density for b in blocks])

    def aux_losses(self) -> dict[str, Tensor]:
        """{"loss_sparse": ...} from the last training forward ({} when off or not training)."""
        blocks = self.blocks
        if not self.training or self.loss_weight == 0 or blocks[0].loss_term is None:
            return {}
        total = torch.stack([b.loss_term for b in blocks]).sum()
        return {"loss_sparse": total * (self.loss_weight / len(blocks))}

    def log_stats(self) -> dict[str, float]:
        """Mask densities (mean over blocks) and backbone GMACs per image.

        Training: of the last forward (soft-mask means). Inference: averaged over every forward
        since the last `train()` / `eval()` call (fractions of computed positions).
        """
        forwards = self._eval_stats["forwards"]
        if not self.training and forwards > 0:
            stats = {"backbone_gmacs": self._eval_stats["gmacs"] / forwards}
            if self._eval_density_sum is not None:
                mean = (self._eval_density_sum / forwards).mean(0).tolist()
                stats.update(density_conv1=mean[0], density_conv2=mean[1])
            return stats
        if self._input_size is None:
            return {}
        densities = self._density_tensor()
        values = None if densities is None else densities.tolist()  # host sync: GMACs statistic
        pairs = None if values is None else [tuple(d) for d in values]
        stats = {"backbone_gmacs": backbone_macs(self.depth, *self._input_size, pairs,
                                                 self.stage_with_dcn) / 1e9}
        if densities is not None:
            mean = densities.mean(0).tolist()
            stats.update(density_conv1=mean[0], density_conv2=mean[1])
        return stats


def build_sparse_resnet_body(cfg: CfgNode) -> tuple[nn.Module, dict[str, int]]:
    """SparseResNet body from `MODEL.BACKBONE.*` and `MODEL.SPARSE.*`, and its c2..c5 channels."""
    bb, sp = cfg.MODEL.BACKBONE, cfg.MODEL.SPARSE
    if bb.GROUPS != 1 or bb.WIDTH_PER_GROUP != 64:
        raise ValueError("sparse_resnet supports plain ResNets only: set MODEL.BACKBONE.GROUPS 1 "
                         "and MODEL.BACKBONE.WIDTH_PER_GROUP 64")
    body = SparseResNetBody(bb.DEPTH, norm_layer(bb.NORM), SparseOptions.from_cfg(sp),
                            sp.LOSS_WEIGHT, sp.STAGE_WITH_DCN, bb.NORM_EVAL)
    body.execution = sp.EXECUTION
    if bb.PRETRAINED:
        body.reset_offsets()
    load_pretrained(body, bb.PRETRAINED, bb.DEPTH)
    freeze_stages(body.stages(), bb.FREEZE_AT, keep=NEW_MODULES)
    return body, body_channels(bb.DEPTH)
