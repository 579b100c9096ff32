"""Building SparseResNet from the config: torchvision weights, freezing, keys, FCOS by config."""
import pytest
import torch
from torchvision.models import resnet as tv_resnet

from fad.config import get_cfg_defaults
from fad.engine.hooks import collect_aux_losses, collect_log_stats
from fad.modeling.backbone import build_backbone_body
from fad.modeling.backbone.sparse_resnet import SparseResNetBody


def _cfg(depth=18, **sparse):
    cfg = get_cfg_defaults()
    cfg.MODEL.BACKBONE.NAME = "sparse_resnet"
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    for k, v in sparse.items():
        setattr(cfg.MODEL.SPARSE, k, v)
    return cfg


@pytest.mark.parametrize("depth, dcn", [(18, (False,) * 4), (50, (False, True, True, True))])
def test_loads_torchvision_state_dict(tmp_path, depth, dcn):
    torch.manual_seed(0)
    net = tv_resnet.resnet18() if depth == 18 else tv_resnet.resnet50()
    path = tmp_path / "tv.pth"
    torch.save(net.state_dict(), path)
    cfg = _cfg(depth, STAGE_WITH_DCN=dcn)
    cfg.MODEL.BACKBONE.PRETRAINED = str(path)
    body, channels = build_backbone_body(cfg)
    assert isinstance(body, SparseResNetBody)
    assert channels == ({"c2": 64, "c3": 128, "c4": 256, "c5": 512} if depth == 18 else
                        {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048})
    ours = body.state_dict()
    for key, value in net.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(ours[key], value)
    block = body.layer2[0]
    assert torch.all(block.conv1_mask.weight == 0) and torch.all(block.conv1_mask.bias == 3.0)
    assert block.interp1.scale.item() == 3.0
    if any(dcn):  # the reference keeps PyTorch's default offset init under ImageNet weights
        assert block.conv2_offset.weight.abs().max() > 0


def test_freeze_keeps_new_parameters_trainable():
    cfg = _cfg(18)
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    body, _ = build_backbone_body(cfg)
    assert not body.conv1.weight.requires_grad
    assert not body.layer1[0].conv1.weight.requires_grad
    assert body.layer1[0].conv1_mask.weight.requires_grad
    assert body.layer1[0].interp2.scale.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad


def _stage(name: str) -> int:
    """0 for the stem, i for a parameter of layer i (torchvision names)."""
    return 0 if name.startswith(("conv1.", "bn1.")) else int(name[len("layer")])


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 5])
def test_freeze_at_freezes_the_same_stages_in_both_backbones(freeze_at):
    """One `freeze_stages`: ResNet and SparseResNet freeze the same torchvision parameters."""
    def names(backbone: str) -> tuple[set[str], set[str]]:
        cfg = _cfg(18)
        cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.FREEZE_AT = backbone, freeze_at
        cfg.MODEL.BACKBONE.NORM = "BN"
        body, _ = build_backbone_body(cfg)
        params = {n.replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): p
                  for n, p in body.named_parameters()}
        return {n for n, p in params.items() if not p.requires_grad}, set(params)

    plain_frozen, plain_all = names("resnet")
    sparse_frozen, sparse_all = names("sparse_resnet")
    assert plain_frozen == {n for n in plain_all if _stage(n) < freeze_at}
    assert sparse_frozen == plain_frozen and plain_all < sparse_all


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="GROUPS"):
        cfg = _cfg(50)
        cfg.MODEL.BACKBONE.GROUPS = 32
        build_backbone_body(cfg)
    with pytest.raises(ValueError, match=r"needs Bottleneck blocks \(depth >= 50\)"):
        build_backbone_body(_cfg(18, STAGE_WITH_DCN=(False, True, True, True)))
    with pytest.raises(ValueError, match="execution must be one of dense_masked, sparse"):
        build_backbone_body(_cfg(18, EXECUTION="fastest"))


def test_unmasked_body_is_a_plain_resnet():
    torch.manual_seed(0)
    body, _ = build_backbone_body(_cfg(18, MASKED=False))
    net = tv_resnet.resnet18()
    net.load_state_dict({**body.state_dict(), "fc.weight": net.fc.weight,
                         "fc.bias": net.fc.bias}, strict=False)
    body.eval(), net.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = body(x)["c5"]
        ref = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(
            net.conv1(x))))))))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert collect_aux_losses(body) == {}


def test_fcos_with_sparse_backbone_adds_sparse_loss():
    from fad.modeling.detector import build_detector

    cfg = _cfg(18, LOSS_WEIGHT=0.05)
    cfg.MODEL.META_ARCHITECTURE = "FCOS"
    cfg.MODEL.BACKBONE.NORM = "BN"
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.FCOS.NUM_CONVS = 1
    model = build_detector(cfg, num_classes=3).train()
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 80)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
               for _ in images]
    losses = model(images, targets)
    aux = collect_aux_losses(model)
    assert aux["loss_sparse"].item() == pytest.approx(0.05 * 0.9526, abs=1e-4)
    sum(losses.values()).add(aux["loss_sparse"]).backward()
    assert "density_conv1" in collect_log_stats(model)
