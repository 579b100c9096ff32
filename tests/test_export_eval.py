"""`fad-test` on an exported fixed-size `.onnx`: the AP (and per-class AP, and the detections)
of the `.pth`; how a fixed-size graph gets images of other sizes (on a pixel-mean canvas, shrunk
only when larger, boxes mapped back)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, save_box_biased_fcos

from fad.config import load_config
from fad.data.synthetic import generate
from fad.export.onnx_model import OnnxDetector, fit_size

TINY = os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml")
CLASSES = ["red_circle", "green_square", "blue_triangle", "yellow_star"]  # the synthetic set's
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.FCOS.NUM_CONVS", "1",
         "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128", "TEST.IMS_PER_BATCH", "4",
         "MODEL.FCOS.DETECTIONS_PER_IMG", "30", "MODEL.FCOS.SCORE_THRESH", "0.0",
         "DATASETS.TEST", "('synthetic_voc_val',)"]
MEAN = [0.485, 0.456, 0.406]


def test_fit_size_keeps_a_fitting_image_and_shrinks_a_larger_one():
    assert fit_size((96, 110), (96, 128)) == (96, 110)
    assert fit_size((128, 96), (96, 128)) == (96, 72)  # tall: scale 0.75
    assert fit_size((100, 300), (96, 128)) == (43, 128)  # wide: scale 128 / 300
    assert fit_size((96, 128), (96, 128)) == (96, 128)


class _BoundingGraph:
    """Stands in for an ONNX Runtime session of a fixed-size graph (batch 2, 96 x 128): its one
    detection per image is the box of the pixels that are not the pixel mean, in canvas pixels
    (label 1, score 0.5), and a second one past the image's right border."""

    def __init__(self):
        self.inputs: list[np.ndarray] = []

    def get_modelmeta(self):
        meta = {"classes": json.dumps(["a", "b"]), "input_size": "[96, 128]", "dynamic": "false",
                "batch": "2", "pixel_mean": json.dumps(MEAN)}
        return type("Meta", (), {"custom_metadata_map": meta})()

    def run(self, _, feeds):
        images = torch.from_numpy(feeds["images"])
        self.inputs.append(feeds["images"])
        background = torch.tensor(MEAN)[:, None, None] * 255
        boxes = torch.zeros((len(images), 3, 4))
        for i, img in enumerate(images):
            ys, xs = torch.nonzero((img - background).abs().amax(0) > 1e-3, as_tuple=True)
            if len(xs):  # not an unused slot of the batch
                boxes[i, 0] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            boxes[i, 1] = torch.tensor([100.0, 10.0, 128.0, 20.0])
        scores = torch.tensor([[0.5, 0.4, 0.0]]).repeat(len(images), 1)
        labels = torch.tensor([[1, 0, 0]]).repeat(len(images), 1)
        num = torch.full((len(images),), 2)
        return [boxes.numpy(), scores.numpy(), labels.numpy(), num.numpy()]


def test_a_fixed_size_graph_gets_images_on_a_mean_canvas_and_its_boxes_mapped_back(monkeypatch):
    graph = _BoundingGraph()
    monkeypatch.setattr("fad.export.onnx_model.open_session", lambda path, threads=0: graph)
    detector = OnnxDetector("fake.onnx")
    gen = torch.Generator().manual_seed(0)
    images = [0.1 + 0.8 * torch.rand((3, h, w), generator=gen)
              for h, w in [(96, 110), (128, 96), (60, 90)]]
    out = detector(images)
    assert len(graph.inputs) == 2 and all(x.shape == (2, 3, 96, 128) for x in graph.inputs)
    first = torch.from_numpy(graph.inputs[0][0])
    torch.testing.assert_close(first[:, :, :110], images[0] * 255)  # a fitting image: unscaled
    torch.testing.assert_close(first[:, :, 110:], torch.tensor(MEAN)[:, None, None].expand(
        3, 96, 18) * 255)  # the rest of the canvas is the pixel mean
    assert np.allclose(graph.inputs[1][1], np.array(MEAN)[:, None, None] * 255)  # unused slot
    # the canvas box [100, 10, 128, 20] in each image's pixels, clipped to it: the tall image was
    # shrunk to 96 x 72 (x 4/3 back), the others are unscaled
    second = [[100, 10, 110, 20], [96, 40 / 3, 96, 80 / 3], [90, 10, 90, 20]]
    for img, det, box in zip(images, out, second):
        h, w = img.shape[-2:]
        # the first box covers the image (the tall one shrunk and scaled back)
        torch.testing.assert_close(det["boxes"][0], torch.tensor([0.0, 0.0, w, h]))
        assert det["boxes"][1].tolist() == pytest.approx(box)
        assert det["labels"].tolist() == [1, 0]
        assert det["scores"].tolist() == pytest.approx([0.5, 0.4])


def _checkpoint(path: Path) -> None:
    """A random tiny FCOS with biased boxes (`save_box_biased_fcos`)."""
    save_box_biased_fcos(load_config(TINY, SMALL), CLASSES, path, seed=3, iteration=5)


@pytest.mark.slow  # one ONNX export (~15 s on a loaded CPU) and two evaluations
@pytest.mark.timeout(600)
def test_fad_test_on_a_fixed_size_onnx_gives_the_ap_of_the_pth(tmp_path):
    """Square val images (all resized to 96 x 96 by the test transforms), a graph exported at
    96 x 96 for batches of 2: the same metrics, per-class AP and detections as the `.pth`."""
    pytest.importorskip("onnxruntime")
    from fad.cli.export import main as export
    from fad.cli.test import main as test

    generate(tmp_path / "data", num_train=1, num_val=6, seed=5, min_size=120, max_size=120)
    weight = tmp_path / "model.pth"
    _checkpoint(weight)
    onnx_file = export(["--config-file", TINY, *SMALL, "MODEL.WEIGHT", str(weight), "--format",
                        "onnx", "--input-size", "96", "96", "--batch", "2", "--output",
                        str(tmp_path / "model.onnx")])
    metrics, detections = {}, {}
    for file in (str(weight), onnx_file):
        out = tmp_path / Path(file).suffix[1:]
        test(["--config-file", TINY, *SMALL, "MODEL.WEIGHT", file, "DATASETS.ROOT",
              str(tmp_path / "data"), "OUTPUT_DIR", str(out)])
        folder = out / "inference" / "synthetic_voc_val"
        metrics[Path(file).suffix] = json.loads((folder / "metrics.json").read_text())
        detections[Path(file).suffix] = json.loads((folder / "coco_results.json").read_text())
    eager, exported = metrics[".pth"], metrics[".onnx"]
    assert eager["AP"] > 0 and eager["VOC_mAP"] > 0  # the random detector finds something
    assert exported["VOC_per_class"] == pytest.approx(eager["VOC_per_class"], abs=1e-6)
    assert any(ap > 0 for ap in eager["VOC_per_class"].values())
    for key, value in eager.items():
        if isinstance(value, float):
            assert exported[key] == pytest.approx(value, abs=1e-6), key
    assert len(detections[".onnx"]) == len(detections[".pth"]) > 0
    for a, b in zip(detections[".pth"], detections[".onnx"]):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert b["score"] == pytest.approx(a["score"], abs=1e-4)
        assert b["bbox"] == pytest.approx(a["bbox"], abs=1e-2)
