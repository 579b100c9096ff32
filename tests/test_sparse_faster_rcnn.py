"""Faster R-CNN FPN on SparseResNet: detector API, label shift, and a tiny model that learns."""
import pytest
import torch
from conftest import train_steps

from fad.config import get_cfg_defaults
from fad.engine.hooks import collect_aux_losses, collect_log_stats
from fad.modeling.detector import build_detector


def _tiny_cfg():
    cfg = get_cfg_defaults()
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "FasterRCNN", "MODEL.BACKBONE.NAME", "sparse_resnet",
        "MODEL.BACKBONE.DEPTH", 18, "MODEL.BACKBONE.FREEZE_AT", 0, "MODEL.BACKBONE.NORM", "BN",
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.SPARSE.LOSS_WEIGHT", 0.05,
        "MODEL.SPARSE.EXECUTION", "sparse",
        "MODEL.FASTER_RCNN.RPN_PRE_NMS_TOP_N_TRAIN", 200,
        "MODEL.FASTER_RCNN.RPN_POST_NMS_TOP_N_TRAIN", 100,
        "MODEL.FASTER_RCNN.RPN_PRE_NMS_TOP_N_TEST", 100,
        "MODEL.FASTER_RCNN.RPN_POST_NMS_TOP_N_TEST", 50,
        "MODEL.FASTER_RCNN.ROI_BATCH_SIZE_PER_IMAGE", 64,
    ])
    return cfg


def _synthetic_batch():
    """Two 96x128 images with bright class-0 squares and dark class-1 bars on grey."""
    images, targets = [], []
    boxes = [[[10, 12, 46, 48], [60, 50, 120, 70]], [[70, 20, 110, 60], [8, 60, 60, 84]]]
    for img_boxes in boxes:
        img = torch.full((3, 96, 128), 0.5)
        labels = []
        for i, (x0, y0, x1, y1) in enumerate(img_boxes):
            img[:, y0:y1, x0:x1] = 1.0 if i == 0 else 0.0
            labels.append(i)
        images.append(img)
        targets.append({"boxes": torch.tensor(img_boxes, dtype=torch.float32),
                        "labels": torch.tensor(labels), "image_id": len(targets)})
    return images, targets


def test_api_and_label_shift():
    torch.manual_seed(0)
    model = build_detector(_tiny_cfg(), num_classes=2)
    images, targets = _synthetic_batch()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                           "loss_rpn_box_reg"}
    assert targets[0]["labels"].tolist() == [0, 1]  # the caller's targets are not modified
    model.model.roi_heads.score_thresh = 0.0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for det, img in zip(out, images):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["labels"].dtype == torch.int64
        if det["labels"].numel():
            assert det["labels"].min() >= 0 and det["labels"].max() <= 1
            assert det["boxes"][:, 2].max() <= img.shape[2] + 1e-3
            assert det["boxes"][:, 3].max() <= img.shape[1] + 1e-3
    stats = collect_log_stats(model)
    assert 0 < stats["density_conv1"] <= 1 and stats["backbone_gmacs"] > 0


def test_images_are_not_resized():
    model = build_detector(_tiny_cfg(), num_classes=2).eval()
    images = [torch.rand(3, 70, 100)]
    batched, _ = model.model.transform(images)
    assert batched.image_sizes == [(70, 100)]
    assert batched.tensors.shape[-2:] == (96, 128)  # padded to SIZE_DIVISIBILITY


@pytest.mark.slow
def test_tiny_sparse_faster_rcnn_loss_falls():
    torch.manual_seed(0)
    model = build_detector(_tiny_cfg(), num_classes=2).train()
    images, targets = _synthetic_batch()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                          momentum=0.9)
    history = train_steps(model, images, targets, opt, steps=30, max_norm=10.0, aux_losses=True)
    assert set(collect_aux_losses(model)) == {"loss_sparse"}
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.6 * first, history
