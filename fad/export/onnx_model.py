"""An exported `.onnx` file run by ONNX Runtime behind the detector API of `fad.modeling`.

`OnnxDetector(path)([img [3, H, W] in [0, 1], ...])` returns one dict per image with `boxes`
[K, 4] (xyxy, pixels of that image), `scores` [K] and `labels` [K] (0-based), like an eval-mode
detector, so `fad-test` and `fad-demo` run the exported graph through their usual code:

- a dynamic graph gets each image alone at its own size (it pads inside), which matches the
  eager model at TEST.IMS_PER_BATCH 1;
- a fixed-size graph gets the images resized to its input size, in calls of its batch size, and
  the boxes are scaled back to each image.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ExportError
from .writer import require_onnx

REQUIRED_METADATA = ("classes", "input_size", "dynamic", "batch")


def open_session(path: str, threads: int = 0):
    """An ONNX Runtime CPU session of `path` (`threads` intra-op threads, 0 = its default);
    a one-line ExportError when the file is not a readable ONNX model."""
    require_onnx()
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / NoSuchFile
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"{path}: not a readable ONNX model ({first})") from None


def read_metadata(session, path: str) -> dict[str, str]:
    """The fad-export metadata of `session`; an ExportError when the file lacks it."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ExportError(f"{path}: no {', '.join(missing)} in its metadata; export the model "
                          "with fad-export")
    return meta


class OnnxDetector(nn.Module):
    """The detector of an exported `.onnx` file, evaluation only (module docstring)."""

    def __init__(self, path: str, threads: int = 0):
        super().__init__()
        self.path = path
        self.session = open_session(path, threads)
        meta = read_metadata(self.session, path)
        self.metadata = meta
        self.classes: list[str] = json.loads(meta["classes"])
        self.input_size = tuple(json.loads(meta["input_size"]))
        self.dynamic: bool = json.loads(meta["dynamic"])
        self.batch: int = json.loads(meta["batch"]) or 1

    def train(self, mode: bool = True) -> OnnxDetector:
        if mode:
            raise ExportError(f"{self.path}: an exported ONNX model cannot be trained; train "
                              "from the .pth checkpoint")
        return super().train(False)

    def run(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The graph on `images` [N, 3, H, W] 0-255 -> boxes, scores, labels, num_detections."""
        outputs = self.session.run(None, {"images": np.ascontiguousarray(
            images.detach().cpu().float().numpy())})
        return tuple(torch.from_numpy(o) for o in outputs)

    def forward(self, images: list[Tensor], targets: list[dict] | None = None) -> list[dict]:
        """`images`: list of [3, H_i, W_i] in [0, 1] -> list of detection dicts (on the CPU)."""
        if targets is not None:
            raise ExportError(f"{self.path}: an exported ONNX model only detects (no targets)")
        if self.dynamic:
            return [self._detect_alone(img) for img in images]
        results: list[dict] = []
        for start in range(0, len(images), self.batch):
            results += self._detect_resized(images[start: start + self.batch])
        return results

    def _detect_alone(self, image: Tensor) -> dict:
        boxes, scores, labels, num = self.run(image[None] * 255)
        h, w = image.shape[-2:]
        return unpad(boxes[0], scores[0], labels[0], int(num[0]), 1.0, 1.0, h, w)

    def _detect_resized(self, images: list[Tensor]) -> list[dict]:
        h, w = self.input_size
        batch = torch.stack([F.interpolate(img[None] * 255, size=(h, w), mode="bilinear",
                                           align_corners=False)[0] for img in images])
        if len(images) < self.batch:
            batch = torch.cat([batch, batch[-1:].expand(self.batch - len(images), -1, -1, -1)])
        boxes, scores, labels, num = self.run(batch)
        return [unpad(boxes[i], scores[i], labels[i], int(num[i]), img.shape[-1] / w,
                      img.shape[-2] / h, img.shape[-2], img.shape[-1])
                for i, img in enumerate(images)]


def unpad(boxes: Tensor, scores: Tensor, labels: Tensor, num: int, scale_x: float,
          scale_y: float, height: int, width: int) -> dict:
    """The first `num` detections of one image, boxes scaled by (`scale_x`, `scale_y`) and
    clipped to `height` x `width` -> {boxes [num, 4], scores [num], labels [num]}."""
    b = boxes[:num] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    b = torch.stack([b[:, 0].clamp(0, width), b[:, 1].clamp(0, height),
                     b[:, 2].clamp(0, width), b[:, 3].clamp(0, height)], 1)
    return {"boxes": b, "scores": scores[:num], "labels": labels[:num]}
