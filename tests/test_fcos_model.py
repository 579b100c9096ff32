"""FCOS detector: head output layout, post-processing decode, and overfitting two images."""
import torch
from conftest import train_steps

from fad.config import get_cfg_defaults
from fad.modeling import build_detector
from fad.modeling.fcos.head import flatten_level_outputs


def tiny_cfg():
    cfg = get_cfg_defaults()
    cfg.merge_from_list(["MODEL.BACKBONE.DEPTH", 18, "MODEL.BACKBONE.FREEZE_AT", 0,
                         "MODEL.BACKBONE.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.FCOS.NUM_CONVS", 1])
    return cfg


def test_flatten_is_level_major_row_major():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float).reshape(2, 3, 2, 2)
    b = torch.arange(2 * 3 * 1 * 1, dtype=torch.float).reshape(2, 3, 1, 1) + 100
    out = flatten_level_outputs([a, b])
    assert out.shape == (2, 5, 3)
    assert out[0, 1].tolist() == a[0, :, 0, 1].tolist()  # row 0, column 1
    assert out[1, 4].tolist() == b[1, :, 0, 0].tolist()


def test_postprocess_decodes_one_confident_location():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(), 3).eval()
    shapes = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]
    total = sum(h * w for h, w in shapes)
    from fad.modeling.fcos.targets import make_locations

    points, strides, _ = make_locations(shapes, (8, 16, 32, 64, 128), torch.device("cpu"))
    outputs = {"cls_logits": torch.full((1, total, 3), -10.0),
               "bbox_regression": torch.ones(1, total, 4),
               "bbox_ctrness": torch.full((1, total, 1), 10.0)}
    idx = 64 + 5  # level 2 (stride 16), row 1, column 1 -> centre (24, 24)
    outputs["cls_logits"][0, idx, 2] = 10.0
    outputs["bbox_regression"][0, idx] = torch.tensor([0.5, 1.0, 1.5, 2.0])
    (det,) = model.postprocess(outputs, points, strides, shapes, [(64, 64)])
    assert det["labels"].tolist() == [2]
    assert torch.allclose(det["boxes"][0], torch.tensor([16.0, 8.0, 48.0, 56.0]))
    assert det["scores"][0] > 0.99


def test_tiny_fcos_overfits_two_images():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(), 2).train()
    images = [torch.rand(3, 128, 128) * 0.2 for _ in range(2)]
    images[0][:, 20:70, 30:90] = 0.9
    images[1][0, 60:120, 10:60] = 1.0
    targets = [{"boxes": torch.tensor([[30.0, 20.0, 90.0, 70.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[10.0, 60.0, 60.0, 120.0]]), "labels": torch.tensor([1])}]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = train_steps(model, images, targets, opt, steps=40, max_norm=10.0)
    assert losses[-1] < 0.5 * losses[0], losses
