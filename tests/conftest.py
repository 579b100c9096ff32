"""Shared fixtures and helpers: a small synthetic dataset made once per test session, tiny
configs, VOC folders written by hand, the real-VOC fixture, tools loaded as modules, and the few
optimizer steps of the "a tiny model learns" tests."""
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from fad.config import get_cfg_defaults
from fad.engine.hooks import collect_aux_losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# real VOC2012 images and annotations, kept beside the repository (not shipped with it)
VOC_FIXTURE = Path(os.environ.get(
    "FAD_VOC_FIXTURE", os.path.join(os.path.dirname(REPO), "shared", "fixtures", "voc_real_mini")))

torch.set_num_threads(1)  # tiny tests: threads cost more than they save


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory) -> str:
    """The image check's cache (fad.data.check) in a session folder, not in ~/.cache."""
    folder = str(tmp_path_factory.mktemp("fad_cache"))
    os.environ["FAD_CACHE_DIR"] = folder
    return folder


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request) -> int:
    """Run the test at 1 and at 2 intra-op threads (the kernels' serial and split paths)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(previous)


@pytest.fixture
def float64_default():
    """Models and images in float64 for the test (the default dtype restored after)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> str:
    """DATASETS.ROOT holding synthetic_voc/ and synthetic_coco/ (24 train, 8 val images)."""
    root = str(tmp_path_factory.mktemp("datasets"))
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "make_synthetic_data.py"),
                    "--out", root, "--num-train", "24", "--num-val", "8", "--seed", "0"],
                   check=True, capture_output=True)
    return root


def run_python(code: str, env: dict, timeout: float = 1800) -> subprocess.CompletedProcess:
    """`python -c code` in the repository with os.environ plus `env`; output captured as text."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def run_at_baseline_isa(code: str, env: dict | None = None, timeout: float = 1800) -> None:
    """Run `code` with ATEN_CPU_CAPABILITY=default (the non-AVX2 copies of the compiled CPU
    loops) and the repository on PYTHONPATH; it must exit 0 on that capability. Skips without a
    C++ compiler."""
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler on PATH")
    code += "\nimport torch; print(torch.backends.cpu.get_cpu_capability())"
    proc = run_python(code, {"ATEN_CPU_CAPABILITY": "default", "PYTHONPATH": REPO, **(env or {})},
                      timeout)
    assert proc.returncode == 0 and "DEFAULT" in proc.stdout, proc.stderr[-3000:]


def tiny_fcos_cfg(root: str, out: str):
    """A tiny CPU FCOS config on the synthetic COCO-format data under `root`."""
    cfg = get_cfg_defaults()
    cfg.merge_from_file(os.path.join(REPO, "configs", "fcos", "fcos_tiny_synthetic.yaml"))
    cfg.merge_from_list([
        "DATASETS.ROOT", root, "OUTPUT_DIR", out, "MODEL.DEVICE", "cpu",
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.FCOS.NUM_CONVS", 1,
        "INPUT.MIN_SIZE_TRAIN", (96,), "INPUT.MAX_SIZE_TRAIN", 128,
        "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 128,
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 6, "SOLVER.CHECKPOINT_PERIOD", 3,
        "SOLVER.WARMUP_ITERS", 2, "SOLVER.STEPS", (4,), "SOLVER.LOG_PERIOD", 1,
        "TEST.IMS_PER_BATCH", 4,
    ])
    return cfg


def head_grads(head: torch.nn.Module, features: list[torch.Tensor],
               weights: dict[str, torch.Tensor]) -> tuple[dict, list, dict]:
    """An FCOS head's outputs on copies of `features` and the gradients of
    sum(weights * outputs) w.r.t. those copies and the head's parameters."""
    head.zero_grad(set_to_none=True)
    feats = [f.clone().requires_grad_() for f in features]
    out = head(feats)
    sum((out[k] * weights[k]).sum() for k in out).backward()
    return ({k: v.detach() for k, v in out.items()}, [f.grad for f in feats],
            {n: p.grad.clone() for n, p in head.named_parameters()})


def two_image_batch() -> tuple[list[torch.Tensor], list[dict]]:
    """Two 96x128 images (Tensor[3, 96, 128] in 0..255) with one box each."""
    g = torch.Generator().manual_seed(1)
    return ([torch.rand(3, 96, 128, generator=g) * 255 for _ in range(2)],
            [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
             {"boxes": torch.tensor([[30.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0])}])


def write_voc(root: Path, images: dict[str, list[tuple]], split: str = "test",
              classes: list[str] | None = None, image_size: tuple[int, int] | None = None,
              image_suffix: str = ".png") -> Path:
    """A VOC folder at `root`: `images` maps file id -> [(name, xmin, ymin, xmax, ymax,
    difficult)] as the XML holds them (1-based inclusive pixels; `difficult` written as given,
    a bool as 0 / 1). `image_size` (H, W) also writes one flat image per id (a grey level of its
    own) and the XML's <size>; without it there are only annotations (enough to evaluate)."""
    for sub in ("Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    size = ""
    if image_size is not None:
        h, w = image_size
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        (root / "JPEGImages").mkdir(exist_ok=True)
    for k, (file_id, objects) in enumerate(images.items()):
        if image_size is not None:
            pixels = np.full((*image_size, 3), 10 * k, dtype=np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{file_id}{image_suffix}")
        objs = "".join(
            f"<object><name>{n}</name><difficult>{int(d) if isinstance(d, bool) else d}"
            f"</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
            f"<ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1, d in objects)
        (root / "Annotations" / f"{file_id}.xml").write_text(
            f"<annotation><filename>{file_id}{image_suffix}</filename>{size}{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in images))
    if classes is not None:
        (root / "classes.txt").write_text("".join(c + "\n" for c in classes))
    return root


def voc_fixture(*parts: str) -> Path:
    """A path inside the real-VOC fixture; a test that needs it skips, saying what is missing."""
    path = VOC_FIXTURE.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs the real VOC fixture (VOC2012 images and XML): {path} not found; it is "
                    "../shared/fixtures/voc_real_mini beside the repository (not shipped with it) "
                    "or the folder FAD_VOC_FIXTURE names")
    return path


def load_tool(name: str) -> ModuleType:
    """tools/<name>.py as a module (calling its main in-process is much faster than a run)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def painted_scene(boxes: list[tuple[int, int, int, int]], labels: list[int], height: int,
                  width: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Float image [3, H, W] of grey 0.5 with each integer xyxy box filled in its label's colour
    (0 red, 1 blue), and its target: `boxes` float32 [K, 4], `labels` int64 [K]."""
    image = torch.full((3, height, width), 0.5)
    colours = [torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.2, 0.9])]
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        image[:, y0:y1, x0:x1] = colours[label][:, None, None]
    return image, {"boxes": torch.tensor(boxes, dtype=torch.float32),
                   "labels": torch.tensor(labels)}


def recall_at_k(model: torch.nn.Module, images: list, targets: list, k: int) -> float:
    """Share of target boxes hit (IoU > 0.5, right label) by one of their image's top-k
    detections of `model` in eval mode; the model is back in training mode afterwards."""
    model.eval()
    with torch.no_grad():
        out = model(images)
    model.train()
    hits = total = 0
    for o, t in zip(out, targets):
        top = o["scores"].topk(min(k, len(o["scores"]))).indices
        ok = (box_iou(t["boxes"], o["boxes"][top]) > 0.5) & (
            t["labels"][:, None] == o["labels"][top][None])
        hits += int(ok.any(1).sum())
        total += len(t["labels"])
    return hits / total


def train_steps(model: torch.nn.Module, images: list, targets: list,
                optimizer: torch.optim.Optimizer, steps: int, max_norm: float,
                aux_losses: bool = False,
                before_step: Callable[[int], None] | None = None) -> list[float]:
    """`steps` optimizer steps on one fixed batch, gradient norm clipped to `max_norm`; returns
    the summed detector loss of every step. `aux_losses` adds the model's aux losses (ModelHooks)
    to what is minimised, not to what is returned; `before_step(i)` runs before step i (e.g. the
    trainer's `set_progress`)."""
    history = []
    for step in range(steps):
        if before_step is not None:
            before_step(step)
        losses = model(images, targets)
        loss = sum(losses.values())
        if aux_losses:
            aux = collect_aux_losses(model)
            assert aux, "the model reports no aux losses"
            loss = loss + sum(aux.values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        optimizer.step()
        history.append(sum(v.item() for v in losses.values()))
    return history


def randomized_detector(cfg, num_classes: int, std: float = 0.1, seed: int = 0):
    """build_detector(cfg, num_classes) in eval mode with every float tensor random, so that a
    converter that swaps or drops a tensor shows: variances and Gumbel temperatures in
    [0.5, 1.5), the other floats N(0, std^2)."""
    from fad.modeling import build_detector

    torch.manual_seed(seed)
    model = build_detector(cfg, num_classes)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("running_var", "temperature")):
                t.copy_(torch.rand_like(t) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * std)
    return model.eval()


def save_box_biased_fcos(cfg, classes: list[str], path, seed: int, iteration: int) -> None:
    """A `randomized_detector` FCOS stored as fad-train stores a checkpoint, its box regression
    biased to l = t = r = b = 1 stride (plus the random part) so that some boxes hit objects."""
    model = randomized_detector(cfg, len(classes), std=0.1, seed=seed)
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(1.0)
        for scale in model.head.scales:
            scale.scale.fill_(1.0)
    torch.save({"model": model.state_dict(), "cfg": cfg.dump(), "classes": classes,
                "iteration": iteration}, path)


def differ_only_at_ties(eager: list[tuple], other: list[tuple], box_atol: float = 1e-2) -> int:
    """`eager`, `other` (e.g. ONNX Runtime's): one image's (label, score, box) rows, best first.
    The same count and scores rank by rank (1e-4); a row whose label or box differs (`box_atol`
    px) must have the same score in both (1e-6): equal-score candidates, which the two runtimes
    order differently (a random detector's scores lie in a narrow band, where float32 values
    collide). Returns the number of such rows."""
    assert len(other) == len(eager)
    differ = 0
    for (la, sa, ba), (lb, sb, bb) in zip(eager, other):
        assert sb == pytest.approx(sa, abs=1e-4)
        if la != lb or ba != pytest.approx(bb, abs=box_atol):
            assert sb == pytest.approx(sa, abs=1e-6)
            differ += 1
    return differ
