"""fad-demo (tools/demo.py): detections drawn on real VOC images and listed in detections.json;
the genotype (MODEL.FAD.GENOTYPE of the stored config, or an old checkpoint's `genotype`) and
class names come from the checkpoint."""
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from conftest import REPO, randomized_detector, tiny_fcos_cfg, voc_fixture

from fad.cli.trained_model import with_stored_genotype
from fad.config import get_cfg_defaults
from fad.config.catalog import VOC_CLASSES
from fad.data.image import read_image
from fad.data.transforms import build_transforms
from fad.engine.demo import class_name, draw_detections, list_images, predict, predict_by_size
from fad.errors import DataError
from fad.modeling import build_detector

CONFIG = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
         "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
         "MODEL.FCOS.DETECTIONS_PER_IMG", "5"]


def _confident_checkpoint(path: Path) -> None:
    """A tiny untrained FCOS with VOC class names whose every location scores ~0.95."""
    cfg = tiny_fcos_cfg(str(path.parent), str(path.parent))
    cfg.merge_from_list(SMALL)
    model = build_detector(cfg, len(VOC_CLASSES))
    state = model.state_dict()
    state["head.cls_logits.bias"].fill_(3.0)
    state["head.centerness.bias"].fill_(3.0)
    torch.save({"model": state, "classes": list(VOC_CLASSES)}, path)


def test_list_images(tmp_path):
    with pytest.raises(DataError, match="no such image or folder"):
        list_images(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no images"):
        list_images(str(tmp_path))
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.JPG").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(str(tmp_path))] == ["a.JPG", "b.png"]
    assert list_images(str(tmp_path / "b.png")) == [tmp_path / "b.png"]


def test_draw_detections_marks_the_boxes():
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    dets = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "scores": torch.tensor([0.9]),
            "labels": torch.tensor([1])}
    drawn = draw_detections(image, dets, ["cat", "dog"])
    assert drawn.shape == image.shape and drawn.dtype == torch.uint8
    assert drawn[:, 25, 10].sum() > 0 and drawn[:, 55, 75].sum() == 0  # box edge, background
    empty = {k: v[:0] for k, v in dets.items()}
    assert torch.equal(draw_detections(image, empty, ["cat"]), image)
    assert class_name(["cat"], 3) == "class 3"


def _with_genotype(text):
    cfg = get_cfg_defaults()
    cfg.MODEL.FAD.GENOTYPE = text
    cfg.freeze()
    return cfg


def test_stored_genotype_wins_and_a_disagreeing_one_is_reported(caplog):
    stored = Path(PAPER).read_text()
    other = stored.replace("('std_conv_3x3', 2)", "('std_conv_3x3_x2', 2)", 1)
    new = {"cfg": _with_genotype(stored).dump()}  # MODEL.FAD.GENOTYPE in the stored config
    old = {"cfg": get_cfg_defaults().dump(), "genotype": stored}  # written before that key
    for state in (new, old):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="fad"):
            for mine in ("", stored + "\n", other):
                cfg = with_stored_genotype(_with_genotype(mine), state, "w.pth")
                assert cfg.MODEL.FAD.GENOTYPE == stored and cfg.is_frozen()
        assert caplog.text.count("disagrees with the genotype stored in w.pth") == 1
    plain = {"cfg": get_cfg_defaults().dump()}
    mine = _with_genotype(other)
    assert with_stored_genotype(mine, plain, "w.pth") is mine  # foreign weights: this run's


def test_demo_on_real_voc_images(tmp_path):
    from fad.cli.demo import main

    images = voc_fixture("VOC2012", "JPEGImages")
    weights = tmp_path / "model.pth"
    _confident_checkpoint(weights)
    out = tmp_path / "out"
    records = main(["--config-file", CONFIG, "MODEL.WEIGHT", str(weights), *SMALL,
                    "--input", str(images), "--output", str(out), "--score-threshold", "0.5"])
    inputs = list_images(str(images))
    assert len(records) == len(inputs) > 0
    assert json.loads((out / "detections.json").read_text()) == records
    for source, record in zip(inputs, records):
        image, drawn = read_image(source), read_image(Path(record["output"]))
        assert drawn.shape == image.shape == (3, record["height"], record["width"])
        assert 0 < len(record["detections"]) <= 5
        for det in record["detections"]:
            assert det["label"] == VOC_CLASSES[det["label_id"]] and det["score"] >= 0.5
            x1, y1, x2, y2 = det["box"]
            assert 0 <= x1 <= x2 <= record["width"] and 0 <= y1 <= y2 <= record["height"]
        # boxes are drawn: the JPEG differs from the input far beyond compression noise
        assert (drawn.int() - image.int()).abs().amax() > 100
    assert "drew" in (out / "log.txt").read_text()


def test_images_of_one_canvas_detected_together_match_one_at_a_time(tmp_path):
    cfg = tiny_fcos_cfg(str(tmp_path), str(tmp_path))
    cfg.merge_from_list(SMALL)  # test images resized to short side 96 (long <= 128), padded to 32
    model = randomized_detector(cfg, 4)
    transforms = build_transforms(cfg, is_train=False)
    forwards = []
    model.register_forward_pre_hook(lambda _, args: forwards.append(len(args[0])))
    torch.manual_seed(0)
    # resized to 96x120, 128x96, 96x120, 96x128, 128x96, 96x103: canvases 96x128 (four images:
    # three sizes among them) and 128x96 (two)
    sizes = [(80, 100), (120, 90), (80, 100), (60, 80), (120, 90), (70, 75)]
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]
    together = predict_by_size(model, images, transforms, torch.device("cpu"),
                               cfg.INPUT.SIZE_DIVISIBILITY)
    assert sorted(forwards) == [2, 4]
    by_exact_size = predict_by_size(model, images, transforms, torch.device("cpu"))
    assert sorted(forwards[2:]) == [1, 1, 2, 2]  # divisibility 1: one canvas per resized size
    for image, got, exact in zip(images, together, by_exact_size):
        alone = predict(model, [image], transforms, torch.device("cpu"))[0]
        assert len(alone["scores"]) > 0
        for key in ("boxes", "scores"):
            torch.testing.assert_close(got[key], alone[key], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(exact[key], alone[key], rtol=1e-4, atol=1e-4)
        assert torch.equal(got["labels"], alone["labels"])


def test_padded_canvas_by_hand():
    from fad.modeling.image_batch import batch_images, padded_canvas

    assert padded_canvas((96, 103), 32) == (96, 128)
    assert padded_canvas((97, 128), 32) == (128, 128)
    assert padded_canvas((5, 7), 1) == (5, 7) == padded_canvas((5, 7), 0)
    batch, sizes, mask = batch_images([torch.rand(3, 40, 70), torch.rand(3, 65, 20)],
                                      torch.zeros(3), torch.ones(3), 32)
    assert batch.shape == (2, 3, 96, 96) and sizes == [(40, 70), (65, 20)]
    assert mask[0, :40, :70].logical_not().all() and mask[0, 40:].all() and mask[1, :, 20:].all()
