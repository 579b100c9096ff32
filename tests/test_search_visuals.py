"""Search pictures: alpha heatmaps, the winning op of every edge over time, the genotype and
alpha histories (one entry per checkpoint, a resume replaces later ones), tensorboard images."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image

from fad.engine.logger import TensorboardWriter
from fad.nas.draw import op_label
from fad.nas.genotype import read_genotype_file
from fad.nas.plots import alpha_heatmaps, edge_names, png_bytes, png_rgb, winning_ops_figure
from fad.nas.primitives import PRIMITIVES
from fad.search.derive import derive_genotype
from fad.search.visuals import (
    ALPHA_HISTORY,
    ALPHAS_PNG,
    GENOTYPE_HISTORY,
    WINNING_OPS_PNG,
    read_genotype_history,
    write_search_visuals,
)

PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")


def _alphas(seed: int, nodes: int = 3, ops: int = len(PRIMITIVES)) -> dict[str, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {t: [torch.randn(i + 2, ops, generator=g) for i in range(nodes)] for t in ("box", "cls")}


def test_edge_names_and_op_labels():
    assert edge_names(2) == ["node 0 ← $c_{k-2}$", "node 0 ← $c_{k-1}$", "node 1 ← $c_{k-2}$",
                             "node 1 ← $c_{k-1}$", "node 1 ← node 0"]
    assert op_label("sinSep_conv_3x3_x2+dil_conv_3x3") == "3×3 sep conv ×2 + dil-2 sep 3×3"
    assert op_label("none") == "none"


def test_figures_render():
    weights = {t: [a.softmax(-1).numpy() for a in v] for t, v in _alphas(0).items()}
    image = png_rgb(png_bytes(alpha_heatmaps(weights, "iteration 5")))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.std() > 10  # not a blank canvas
    figure = winning_ops_figure([5, 10], {t: [w, w] for t, w in weights.items()})
    timeline = png_rgb(png_bytes(figure))
    assert timeline.shape[2] == 3 and timeline.std() > 10


def test_histories_and_pictures_per_checkpoint(tmp_path):
    out = str(tmp_path)
    box, cls = read_genotype_file(PAPER)
    tb = TensorboardWriter(out)
    for iteration in (10, 20, 30):
        alphas = _alphas(iteration)
        genotypes = tuple(derive_genotype(alphas[t]) for t in ("box", "cls"))
        written = write_search_visuals(alphas, genotypes, out, iteration, tb)
        assert all(os.path.isfile(p) for p in written)
    # a run resumed from iteration 20 writes 30 again: one entry per checkpoint
    write_search_visuals(_alphas(31), (box, cls), out, 30, None)
    tb.close()
    history = read_genotype_history(os.path.join(out, GENOTYPE_HISTORY))
    assert [it for it, _, _ in history] == [10, 20, 30] and history[-1][1:] == (box, cls)
    assert history[0][1] == derive_genotype(_alphas(10)["box"])
    alpha_history = json.loads((tmp_path / ALPHA_HISTORY).read_text())
    assert [e["iteration"] for e in alpha_history] == [10, 20, 30]
    last = alpha_history[-1]["cls"]
    assert [np.asarray(w).shape for w in last] == [(2, 11), (3, 11), (4, 11)]
    expected = _alphas(31)["cls"][2].softmax(-1).numpy()
    assert np.allclose(last[2], expected, atol=1e-4)
    for name in (ALPHAS_PNG, WINNING_OPS_PNG):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200


def test_tensorboard_images(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tb = TensorboardWriter(str(tmp_path))
    write_search_visuals(_alphas(0), read_genotype_file(PAPER), str(tmp_path), 7, tb)
    tb.close()
    events = accumulator.EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"search/alphas", "search/winning_ops"}
    assert events.Images("search/alphas")[0].step == 7


def test_dil3_alphas(tmp_path):
    alphas = _alphas(1, ops=13)
    genotypes = tuple(derive_genotype(alphas[t]) for t in ("box", "cls"))
    write_search_visuals(alphas, genotypes, str(tmp_path), 1, None)
    assert (tmp_path / ALPHAS_PNG).is_file()
