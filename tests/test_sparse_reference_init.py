"""SparseResNet init and BatchNorm modes as the reference code: DCN offset convs zero only when
training from scratch; `MODEL.BACKBONE.NORM_EVAL` freezes BN statistics, not the affine
parameters."""
import math

import pytest
import torch
from torchvision.models import resnet as tv_resnet

from fad.config import get_cfg_defaults
from fad.modeling.backbone import build_backbone_body

DCN = (False, True, True, True)


def _cfg(name="sparse_resnet", depth=50, **backbone):
    cfg = get_cfg_defaults()
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.DEPTH = name, depth
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.SPARSE.STAGE_WITH_DCN = DCN if depth >= 50 else (False,) * 4
    for k, v in backbone.items():
        setattr(cfg.MODEL.BACKBONE, k, v)
    return cfg


def _offsets(body):
    return [b.conv2_offset for b in body.blocks if b.conv2_offset is not None]


def test_dcn_offsets_zero_only_without_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    scratch, _ = build_backbone_body(_cfg())
    assert len(_offsets(scratch)) == 4 + 6 + 3
    assert all(torch.all(c.weight == 0) and torch.all(c.bias == 0) for c in _offsets(scratch))
    path = tmp_path / "tv.pth"
    torch.save(tv_resnet.resnet50().state_dict(), path)
    loaded, _ = build_backbone_body(_cfg(PRETRAINED=str(path)))
    for conv in _offsets(loaded):  # nn.Conv2d's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1 / math.sqrt(conv.weight[0].numel())
        assert 0 < conv.weight.abs().max() <= bound and 0 < conv.bias.abs().max() <= bound
        assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


def _step(body, x):
    body.zero_grad()
    sum(f.float().square().mean() for f in body(x).values()).backward()


def test_norm_eval_freezes_statistics_and_trains_the_affine_parameters():
    torch.manual_seed(0)
    for name in ("sparse_resnet", "resnet"):
        body, _ = build_backbone_body(_cfg(name, 18, NORM="BN", NORM_EVAL=True, FREEZE_AT=1))
        body.train()
        bns = [m for m in body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bns and not any(m.training for m in bns)
        before = [(m.running_mean.clone(), m.running_var.clone()) for m in bns]
        _step(body, torch.randn(2, 3, 64, 64) * 3 + 1)
        for m, (mean, var) in zip(bns, before):
            assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        trainable = [m for m in bns if m.weight.requires_grad]
        assert len(trainable) == len(bns) - 1  # the stem's BN is frozen (FREEZE_AT 1)
        assert all(m.weight.grad is not None and m.bias.grad.abs().sum() > 0 for m in trainable)
        assert body.training  # the rest of the body trains (sparse masks: relaxed sampling)
        body.eval()
        body.train()
        assert not any(m.training for m in bns)


def test_without_norm_eval_bn_updates_its_statistics():
    torch.manual_seed(0)
    body, _ = build_backbone_body(_cfg("sparse_resnet", 18, NORM="BN"))
    bn = body.layer1[0].bn1
    mean = bn.running_mean.clone()
    _step(body.train(), torch.randn(2, 3, 64, 64) * 3 + 1)
    assert bn.training and not torch.equal(bn.running_mean, mean)
