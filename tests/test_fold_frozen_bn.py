"""`fold_frozen_batch_norms`: a FrozenBatchNorm2d folded into the convolution before it gives the
unfolded outputs and gradients (float64, ResNet-50 body with random norms, frozen and trainable
stages), keeps the state dict and the parameter objects, folds only conv -> FrozenBN pairs, and
composes with the GEMM weight gradient; `DetectorStep` folds a FrozenBN FCOS."""
import copy

import pytest
import torch
from conftest import tiny_fcos_cfg, two_image_batch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.ops import FrozenBatchNorm2d

from fad.engine import trainer
from fad.modeling import build_detector
from fad.modeling.backbone.fold_frozen_bn import (
    FoldedFrozenBatchNorm2d,
    FrozenBNFoldedConv2d,
    fold_frozen_batch_norms,
    norm_affine,
)
from fad.modeling.backbone.resnet import ResNetBody
from fad.ops.backends import using
from fad.ops.conv_wgrad import layer


def _randomize_norms(model: nn.Module) -> None:
    """Random FrozenBN statistics and affine terms (a fresh FrozenBN is the identity)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _body_pair(depth: int = 50) -> tuple[nn.Module, nn.Module]:
    """A float64 ResNet body with FrozenBN (random norms, stem + layer1 frozen) and a folded
    deep copy of it."""
    torch.manual_seed(0)
    net = tv_resnet.resnet50 if depth == 50 else tv_resnet.resnet18
    body = ResNetBody(net(norm_layer=FrozenBatchNorm2d)).double()
    _randomize_norms(body)
    for stage in (body.stem, body.layer1):
        stage.requires_grad_(False)
    folded = copy.deepcopy(body)
    assert fold_frozen_batch_norms(folded) == (53 if depth == 50 else 20)
    return body, folded


@pytest.mark.parametrize("depth", [18, 50])
def test_folded_body_gives_the_unfolded_outputs_and_gradients(depth, float64_default):
    body, folded = _body_pair(depth)
    x = torch.randn(2, 3, 64, 48)
    outs = []
    for net in (body, folded):
        xi = x.clone().requires_grad_()
        feats = net(xi)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum()
            for f in feats.values()).backward()
        outs.append((feats, xi.grad, {n: p.grad for n, p in net.named_parameters()}))
    (feats, _, grads), (feats_f, _, grads_f) = outs
    for key in feats:
        torch.testing.assert_close(feats_f[key], feats[key], rtol=1e-10, atol=1e-10)
    assert list(grads_f) == list(grads)
    for name, grad in grads.items():
        if grad is None:  # frozen stages
            assert grads_f[name] is None, name
        else:
            torch.testing.assert_close(grads_f[name], grad, rtol=1e-9, atol=1e-10, msg=name)
    assert grads["layer2.0.conv1.weight"] is not None and grads["stem.0.weight"] is None


def test_folding_keeps_the_state_dict_and_the_parameter_objects():
    torch.manual_seed(0)
    body = ResNetBody(tv_resnet.resnet18(norm_layer=FrozenBatchNorm2d))
    before = {k: v.clone() for k, v in body.state_dict().items()}
    params = list(body.parameters())
    fold_frozen_batch_norms(body)
    after = body.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert list(body.parameters()) == params
    conv, norm = body.layer1[0].conv1, body.layer1[0].bn1
    assert type(conv) is FrozenBNFoldedConv2d and type(norm) is FoldedFrozenBatchNorm2d
    assert conv.folded_norm is norm and "folded_norm" not in dict(conv.named_modules())
    copied = copy.deepcopy(body)  # the link follows the copy
    assert copied.layer1[0].conv1.folded_norm is copied.layer1[0].bn1
    assert fold_frozen_batch_norms(body) == 0  # nothing left to fold


def test_only_conv_then_frozen_bn_pairs_fold(float64_default):
    class MyBlock(tv_resnet.BasicBlock):  # e.g. a sparse block: not folded
        pass

    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=True), FrozenBatchNorm2d(4),  # 0, 1: folded (bias)
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4),  # 2, 3: a trained BN stays
        FrozenBatchNorm2d(4), nn.Conv2d(4, 4, 1),  # 4, 5: a norm before a conv stays
        nn.Conv2d(4, 4, 3, padding=1, groups=2), FrozenBatchNorm2d(4),  # 6, 7: folded (groups)
        MyBlock(4, 4, norm_layer=FrozenBatchNorm2d))
    _randomize_norms(net)
    net.eval()
    ref = copy.deepcopy(net)
    assert fold_frozen_batch_norms(net) == 2
    assert [type(m).__name__ for m in net[:8]] == [
        "FrozenBNFoldedConv2d", "FoldedFrozenBatchNorm2d", "Conv2d", "BatchNorm2d",
        "FrozenBatchNorm2d", "Conv2d", "FrozenBNFoldedConv2d", "FoldedFrozenBatchNorm2d"]
    assert type(net[8].conv1) is nn.Conv2d and type(net[8].bn1) is FrozenBatchNorm2d
    x = torch.randn(2, 3, 6, 5)
    torch.testing.assert_close(net(x), ref(x), rtol=1e-10, atol=1e-10)


def test_norm_affine_is_the_norm(float64_default):
    frozen, bn = FrozenBatchNorm2d(5), nn.BatchNorm2d(5).eval()
    _randomize_norms(frozen)
    bn.load_state_dict(frozen.state_dict(), strict=False)
    x = torch.randn(2, 5, 3, 4)
    for norm in (frozen, bn):
        scale, shift = norm_affine(norm)
        torch.testing.assert_close(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1),
                                   norm(x))


def test_folded_conv_takes_the_gemm_weight_gradient(monkeypatch, float64_default):
    calls = []
    real = layer.weight_grad_gemm
    monkeypatch.setattr(layer, "weight_grad_gemm", lambda *a: calls.append(a) or real(*a))
    net = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), FrozenBatchNorm2d(6))
    _randomize_norms(net)
    ref = copy.deepcopy(net)
    fold_frozen_batch_norms(net)
    x = torch.randn(2, 4, 7, 9)
    with using("conv_wgrad", "gemm"):
        for m in (ref, net):
            (m(x) * torch.arange(6.0).view(1, -1, 1, 1)).sum().backward()
    assert len(calls) == 1
    torch.testing.assert_close(net[0].weight.grad, ref[0].weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(net[0].bias.grad, ref[0].bias.grad, rtol=1e-10, atol=1e-10)


def test_detector_step_folds_a_frozen_bn_backbone(synthetic_root, tmp_path, float64_default):
    """DetectorStep on a FrozenBN FCOS: the backbone's pairs folded, the first step's losses
    those of the same model unfolded."""
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["MODEL.BACKBONE.NORM", "FrozenBN"])
    torch.manual_seed(0)
    model = build_detector(cfg, 3).train()
    _randomize_norms(model)
    images, targets = two_image_batch()
    with torch.no_grad():
        want = copy.deepcopy(model)(images, targets)
    step = trainer.DetectorStep(cfg, model, torch.device("cpu"))
    assert sum(type(m) is FoldedFrozenBatchNorm2d for m in model.modules()) == 20
    got = step.run((images, targets)).losses
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-8, atol=1e-10, msg=key)
