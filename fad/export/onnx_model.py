"""An exported `.onnx` file run by ONNX Runtime behind the detector API of `fad.modeling`.

`OnnxDetector(path)([img [3, H, W] in [0, 1], ...])` returns one dict per image with `boxes`
[K, 4] (xyxy, pixels of that image), `scores` [K] and `labels` [K] (0-based), like an eval-mode
detector, so `fad-test` and `fad-demo` run the exported graph through their usual code:

- a dynamic graph gets each image alone at its own size (it pads inside), which matches the
  eager model at TEST.IMS_PER_BATCH 1;
- a fixed-size graph (input H x W) gets the images in calls of its batch size, each at the top
  left of an H x W canvas filled with the pixel mean (zero after the graph's normalisation, as
  the eager model pads): an image that fits is not resized; a larger one is shrunk, keeping its
  aspect ratio, until it fits (`fit_size`). The boxes are scaled back to the image and clipped
  to it. The detections equal the eager model's when the images have the graph's input size;
  images smaller than it see more padding than in eager mode (and larger ones are shrunk), so
  export at INPUT.MAX_SIZE_TEST x INPUT.MAX_SIZE_TEST for every test image to fit unscaled.
"""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fad.ops.msda.onnx import TRT_DOMAIN

from .base import ExportError
from .writer import require_onnx

REQUIRED_METADATA = ("classes", "input_size", "dynamic", "batch", "pixel_mean")


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
        if TRT_DOMAIN in first:
            raise ExportError(f"{path} holds TensorRT plugin nodes (fad-export --msda tensorrt), "
                              "which ONNX Runtime cannot run; run it in TensorRT, or export "
                              "with --msda standard") from None
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
        self.pixel_mean = torch.tensor(json.loads(meta["pixel_mean"]), dtype=torch.float32)

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
            results += self._detect_fitted(images[start: start + self.batch])
        return results

    def _detect_alone(self, image: Tensor) -> dict:
        boxes, scores, labels, num = self.run(image[None] * 255)
        h, w = image.shape[-2:]
        return unpad(boxes[0], scores[0], labels[0], int(num[0]), 1.0, 1.0, h, w)

    def _detect_fitted(self, images: list[Tensor]) -> list[dict]:
        """Up to `batch` images [3, H_i, W_i] in [0, 1] on pixel-mean canvases of the input size
        (shrunk to fit where larger), one call of the graph; boxes mapped back to each image."""
        batch = (self.pixel_mean * 255)[None, :, None, None].repeat(self.batch, 1,
                                                                     *self.input_size)
        sizes = []
        for i, img in enumerate(images):
            h, w = fit_size(img.shape[-2:], self.input_size)
            x = img.detach().cpu().float()[None] * 255
            if (h, w) != tuple(img.shape[-2:]):
                x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=True)
            batch[i, :, :h, :w] = x[0]
            sizes.append((h, w))
        boxes, scores, labels, num = self.run(batch)
        return [unpad(boxes[i], scores[i], labels[i], int(num[i]), img.shape[-1] / w,
                      img.shape[-2] / h, img.shape[-2], img.shape[-1])
                for i, (img, (h, w)) in enumerate(zip(images, sizes))]


def fit_size(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """The size (h, w) an image of `size` (H, W) takes on a `canvas` (H_c, W_c): its own when it
    fits, else scaled by min(H_c / H, W_c / W) (aspect kept, rounded, at least 1 pixel)."""
    height, width = int(size[0]), int(size[1])
    scale = min(1.0, canvas[0] / height, canvas[1] / width)
    if scale == 1.0:
        return height, width
    return (min(canvas[0], max(1, round(height * scale))),
            min(canvas[1], max(1, round(width * scale))))


def unpad(boxes: Tensor, scores: Tensor, labels: Tensor, num: int, scale_x: float,
          scale_y: float, height: int, width: int) -> dict:
    """The first `num` detections of one image, boxes scaled by (`scale_x`, `scale_y`) and
    clipped to `height` x `width` -> {boxes [num, 4], scores [num], labels [num]}."""
    b = boxes[:num] * torch.tensor([scale_x, scale_y, scale_x, scale_y])
    b = torch.stack([b[:, 0].clamp(0, width), b[:, 1].clamp(0, height),
                     b[:, 2].clamp(0, width), b[:, 3].clamp(0, height)], 1)
    return {"boxes": b, "scores": scores[:num], "labels": labels[:num]}
