"""The whole Deformable / Sparse DETR detector: config checks, detector API in both modes,
optimizer groups, overfitting two synthetic images, and resuming from a checkpoint."""
import os

import pytest
import torch
from conftest import REPO, painted_scene, recall_at_k, train_steps

from fad.config import get_cfg_defaults, load_config
from fad.engine.checkpoint import Checkpointer
from fad.engine.solver import build_optimizer
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.detr.build import build_deformable_detr

VARIANTS = {
    "single_stage": [],
    "refine": ["MODEL.DETR.WITH_BOX_REFINE", True],
    "two_stage": ["MODEL.DETR.WITH_BOX_REFINE", True, "MODEL.DETR.TWO_STAGE", True],
    "sparse": ["MODEL.META_ARCHITECTURE", "SparseDETR", "MODEL.DETR.WITH_BOX_REFINE", True,
               "MODEL.DETR.TWO_STAGE", True, "MODEL.DETR.RHO", 0.3,
               "MODEL.DETR.USE_ENC_AUX_LOSS", True, "MODEL.DETR.EFF_QUERY_INIT", True,
               "MODEL.DETR.EFF_SPECIFIC_HEAD", True],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tiny models run faster without thread hand-offs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_opts(variant: str = "single_stage", **overrides) -> list:
    """KEY VALUE pairs of a tiny Deformable DETR of `variant`, then `overrides`."""
    return [
        "MODEL.META_ARCHITECTURE", "DeformableDETR",
        "MODEL.BACKBONE.DEPTH", 18, "MODEL.BACKBONE.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.DETR.D_MODEL", 32, "MODEL.DETR.NHEADS", 4, "MODEL.DETR.ENC_LAYERS", 1,
        "MODEL.DETR.DEC_LAYERS", 2, "MODEL.DETR.DIM_FEEDFORWARD", 64, "MODEL.DETR.DROPOUT", 0.0,
        "MODEL.DETR.NUM_QUERIES", 10, "MODEL.DETR.GN_GROUPS", 8, "MODEL.DETR.NUM_FEATURE_LEVELS", 3,
        "SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", 2e-3, "MODEL.DETR.LR_BACKBONE", 2e-4,
    ] + VARIANTS[variant] + [x for kv in overrides.items() for x in kv]


def tiny_cfg(variant: str = "single_stage", **overrides):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(tiny_opts(variant, **overrides))
    return cfg


def two_images():
    a = painted_scene([(8, 10, 30, 40), (40, 36, 60, 58)], [0, 1], 64, 64)
    b = painted_scene([(20, 4, 56, 28)], [1], 64, 80)
    return [a[0], b[0]], [a[1], b[1]]


def test_config_errors_name_the_keys():
    """Checked when the config loads (fad/config/validate.py), before any model is built."""
    with pytest.raises(ConfigError, match=r"^MODEL.DETR.RHO > 0 \(Sparse DETR\) needs "
                                          r"MODEL.DETR.TWO_STAGE True"):
        load_config(None, tiny_opts(**{"MODEL.DETR.RHO": 0.2}))
    with pytest.raises(ConfigError, match=r"^MODEL.META_ARCHITECTURE SparseDETR needs "
                                          r"MODEL.DETR.RHO > 0"):
        load_config(None, tiny_opts(**{"MODEL.META_ARCHITECTURE": "SparseDETR"}))
    with pytest.raises(ConfigError, match=r"^MODEL.DETR.USE_ENC_AUX_LOSS needs MODEL.DETR.RHO > 0"):
        load_config(None, tiny_opts("two_stage", **{"MODEL.DETR.USE_ENC_AUX_LOSS": True}))
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        build_deformable_detr(tiny_cfg(), 0)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_detector_api_in_training_and_eval(variant):
    torch.manual_seed(0)
    cfg = tiny_cfg(variant)
    model = build_detector(cfg, 3)
    images, targets = two_images()
    losses = model(images, targets)
    names = {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_0", "loss_bbox_0", "loss_giou_0"}
    if variant in ("two_stage", "sparse"):
        names |= {"loss_ce_enc", "loss_bbox_enc", "loss_giou_enc"}
    if variant == "sparse":
        names |= {"loss_mask_prediction"}  # 1 encoder layer: no encoder aux layers
        assert 0.0 <= model.log_stats()["corr"] <= 1.0
    assert set(losses) == names
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    for o, img in zip(out, images):
        assert o["boxes"].shape == (30, 4) and o["scores"].shape == (30,)
        assert o["labels"].dtype == torch.int64
        assert (o["scores"][:-1] >= o["scores"][1:]).all()
        assert o["labels"].min() >= 0 and o["labels"].max() < 3
        h, w = img.shape[-2:]
        centres = (o["boxes"][:, :2] + o["boxes"][:, 2:]) / 2
        assert (centres >= 0).all() and (centres[:, 0] <= w).all() and (centres[:, 1] <= h).all()
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(images)
    bad = [dict(t, labels=t["labels"] + 2) for t in targets]
    with pytest.raises(ValueError, match="labels outside 0..2"):
        model(images, bad)


def test_sparse_detr_encoder_aux_losses_per_layer():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg("sparse", **{"MODEL.DETR.ENC_LAYERS": 3}), 3)
    images, targets = two_images()
    losses = model(images, targets)
    assert {"loss_ce_enc_0", "loss_giou_enc_1"} <= set(losses) and "loss_ce_enc_2" not in losses


@pytest.mark.parametrize("variant", ["single_stage", "refine", "two_stage", "sparse"])
@pytest.mark.parametrize("aux_loss", [True, False])
def test_ddp_unused_parameter_flag_matches_a_training_step(variant, aux_loss, monkeypatch):
    """The flag that wrap_ddp passes to DDP is True exactly when a step leaves parameters
    without a gradient (DDP would fail on them otherwise)."""
    import fad.engine.trainer as trainer

    torch.manual_seed(0)
    cfg = tiny_cfg(variant, **{"MODEL.DETR.AUX_LOSS": aux_loss})
    model = build_deformable_detr(cfg, 2).train()
    images, targets = two_images()
    sum(model(images, targets).values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert model.ddp_find_unused_parameters == bool(unused), unused
    seen = {}
    monkeypatch.setattr(trainer, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda m, **kw: seen.update(kw) or m)
    trainer.wrap_ddp(model, torch.device("cpu"))
    assert seen["find_unused_parameters"] == bool(unused)


def test_optimizer_groups():
    cfg = tiny_cfg("single_stage")
    model = build_detector(cfg, 3)
    groups = model.optimizer_param_groups(cfg)
    assert [g["lr"] for g in groups] == pytest.approx([2e-3, 2e-4, 2e-4])
    names = {id(p): n for n, p in model.named_parameters()}
    backbone = {names[id(p)] for p in groups[1]["params"]}
    linear_proj = {names[id(p)] for p in groups[2]["params"]}
    assert all(n.startswith("backbone.body.") for n in backbone)
    assert all("sampling_offsets" in n or "reference_points" in n for n in linear_proj)
    assert "transformer.reference_points.weight" in linear_proj
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 3


def test_tiny_model_loss_falls_on_two_images():
    torch.manual_seed(0)
    cfg = tiny_cfg("single_stage")
    model = build_detector(cfg, 2)
    images, targets = two_images()
    losses = train_steps(model, images, targets, build_optimizer(cfg, model), 15, max_norm=0.1)
    assert sum(losses[-3:]) / 3 < 0.75 * sum(losses[:3]) / 3, losses


@pytest.mark.slow
def test_tiny_sparse_detr_overfits_two_images():
    torch.manual_seed(0)
    cfg = tiny_cfg("sparse")
    model = build_detector(cfg, 2)
    images, targets = two_images()
    before = recall_at_k(model, images, targets, 5)
    losses = train_steps(model, images, targets, build_optimizer(cfg, model), 80, max_norm=0.1)
    assert sum(losses[-5:]) / 5 < 0.15 * sum(losses[:5]) / 5, losses
    assert before < 0.4 and recall_at_k(model, images, targets, 5) >= before + 0.6


def test_checkpoint_resume_gives_the_same_outputs_and_steps(tmp_path):
    images, targets = two_images()
    cfg = tiny_cfg("sparse")
    torch.manual_seed(0)
    model = build_detector(cfg, 2)
    opt = build_optimizer(cfg, model)
    for _ in range(2):
        opt.zero_grad()
        sum(model(images, targets).values()).backward()
        opt.step()
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save("model_0000002", {"model": model.state_dict(), "optimizer": opt.state_dict()})

    torch.manual_seed(1)
    restored = build_detector(cfg, 2)
    state = Checkpointer.load(ckpt.last())
    restored.load_state_dict(state["model"])
    opt2 = build_optimizer(cfg, restored)
    opt2.load_state_dict(state["optimizer"])
    model.eval(), restored.eval()
    with torch.no_grad():
        a, b = model(images), restored(images)
    for x, y in zip(a, b):
        assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["scores"], y["scores"])
    model.train(), restored.train()
    for m, o in ((model, opt), (restored, opt2)):
        o.zero_grad()
        sum(m(images, targets).values()).backward()
        o.step()
    for (name, p), q in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("name", ["deformable_detr/tiny_synthetic.yaml",
                                  "sparse_detr/tiny_synthetic.yaml",
                                  "sparse_detr/r50_sparse_detr_rho_0.1.yaml",
                                  "deformable_detr/r50_deformable_detr.yaml"])
def test_shipped_configs_build(name):
    cfg = load_config(os.path.join(REPO, "configs", name))
    cfg.merge_from_list(["MODEL.BACKBONE.PRETRAINED", ""])
    model = build_detector(cfg, 4)
    assert model.transformer.rho == cfg.MODEL.DETR.RHO
    assert len(model.transformer.decoder.layers) == cfg.MODEL.DETR.DEC_LAYERS
