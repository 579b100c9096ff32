"""The whole ASAG detector: detector API, fast path == full forward, inference levels and heads
with the same weights, optimiser groups, the DDP flag, the trainer's epoch, training on two
images, resume, and train_net / test_net on the tiny config."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, painted_scene, recall_at_k, train_steps

from fad.config import get_cfg_defaults, load_config
from fad.engine.checkpoint import Checkpointer
from fad.engine.solver import build_optimizer
from fad.errors import ConfigError
from fad.modeling import build_detector
from fad.modeling.asag import ASAG

TINY = ["MODEL.META_ARCHITECTURE", "ASAG", "MODEL.BACKBONE.DEPTH", 18,
        "MODEL.BACKBONE.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.ASAG.HIDDEN_DIM", 32, "MODEL.ASAG.NHEADS", 4, "MODEL.ASAG.DIM_FEEDFORWARD", 64,
        "MODEL.ASAG.ANCHOR_HIDDEN_DIM", 64, "MODEL.ASAG.IN_POINTS", 8,
        "MODEL.ASAG.OUT_POINTS", 16, "MODEL.ASAG.DYNAMIC_DIM", 8,
        "SOLVER.OPTIMIZER", "AdamW",
        "SOLVER.BASE_LR", 1e-3, "MODEL.ASAG.LR_BACKBONE", 1e-4]


def tiny_cfg(*overrides):
    cfg = get_cfg_defaults()
    cfg.merge_from_list(TINY + list(overrides))
    return cfg


def two_images():
    a = painted_scene([(8, 10, 40, 50), (56, 50, 90, 88)], [0, 1], 96, 96)
    b = painted_scene([(20, 6, 80, 40)], [1], 80, 112)
    return [a[0], b[0]], [a[1], b[1]]


def _detect(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def _same(a, b, atol=0.0):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["labels"], y["labels"])
        assert torch.allclose(x["boxes"], y["boxes"], atol=atol, rtol=0)
        assert torch.allclose(x["scores"], y["scores"], atol=atol, rtol=0)


@pytest.mark.parametrize("decoder", ["adamixer", "sparsercnn"])
def test_detector_api_in_training_and_eval(decoder):
    torch.manual_seed(0)
    model = build_detector(tiny_cfg("MODEL.ASAG.DECODER", decoder), 3)
    assert isinstance(model, ASAG) and not model.ddp_find_unused_parameters
    images, targets = two_images()
    losses = model(images, targets)
    names = {f"loss_{k}_{s}" for k in ("ce", "bbox", "giou")
             for s in ("anchor", "rpn", "h0", "h1", "h2", "h3")}
    assert set(losses) == names
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    out = _detect(model, images)
    for o in out:
        assert o["boxes"].shape[1] == 4 and 0 < len(o["scores"]) <= 100
        assert o["labels"].dtype == torch.int64 and 0 <= o["labels"].min() <= o["labels"].max() < 3
        assert (o["scores"][:-1] >= o["scores"][1:]).all()
    with pytest.raises(ValueError, match="needs targets"):
        model.train()(images)
    with pytest.raises(ValueError, match="labels outside 0..2"):
        model(images, [dict(t, labels=t["labels"] + 2) for t in targets])


def test_denoising_losses_and_the_trainer_epoch():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg("MODEL.ASAG.USE_DN", True, "MODEL.ASAG.NUM_DN", 12), 3)
    images, targets = two_images()
    model.set_progress(30, 2)
    assert model.epoch == 2
    losses = model(images, targets)
    assert {"dn_loss_ce_rpn", "dn_loss_bbox_h3", "dn_loss_giou_h0"} <= set(losses)
    sum(losses.values()).backward()


def test_config_errors_name_the_keys():
    with pytest.raises(ConfigError, match=r"^MODEL.ASAG.NUM_QUERIES: 50 is not one of 100, 300;"):
        load_config(None, [*TINY, "MODEL.ASAG.NUM_QUERIES", 50])
    with pytest.raises(ConfigError, match=r"^MODEL.ASAG.USED_HEAD 'aux_3' does not fit "):
        load_config(None, [*TINY, "MODEL.ASAG.USED_HEAD", "aux_3"])
    with pytest.raises(ConfigError, match=r"^MODEL.ASAG.HIDDEN_DIM=32 must be divisible by "
                                          r"MODEL.ASAG.NHEADS=3"):
        load_config(None, [*TINY, "MODEL.ASAG.NHEADS", 3])
    with pytest.raises(ConfigError, match="TEST.IMS_PER_BATCH"):
        model = build_detector(tiny_cfg("MODEL.ASAG.FAST_INFERENCE", True), 3)
        _detect(model, two_images()[0])


def _set_anchors(mlp: torch.nn.Sequential, logit: float, box_logit: float | None = None) -> None:
    """Every anchor of the MLP gets confidence logit `logit` (rows 4, 9, ... of the output)
    and, with `box_logit`, (cx, cy, w, h) near sigmoid(box_logit) of its patch."""
    rows = range(5) if box_logit is not None else [4]
    with torch.no_grad():
        for r in rows:
            mlp[-1].weight[r::5] *= 0.01
            mlp[-1].bias[r::5] = logit if r == 4 else box_logit


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", ["as_built", "nothing_selected", "probe_both", "stop_after_p4"])
def test_fast_path_gives_the_full_forward_detections(seed, case):
    torch.manual_seed(seed)
    model = build_detector(tiny_cfg(), 3)
    gen = model.anchor_generator
    if case == "nothing_selected":
        _set_anchors(gen.coarse_mlp, -8.0)
    elif case in ("probe_both", "stop_after_p4"):  # conf 0.4: every small anchor probes
        _set_anchors(gen.coarse_mlp, -0.4, -1.5)
        _set_anchors(gen.patch_mlp, -0.4 if case == "probe_both" else -8.0, -2.0)
    image = torch.rand(3, 100 + 20 * seed, 140, generator=torch.Generator().manual_seed(seed))
    probed = []
    hook = gen.register_forward_hook(
        lambda m, i, out: probed.append([len(r.preds) for r in out.records.patches]))
    full = _detect(model, [image])
    hook.remove()
    expected = {"nothing_selected": 0, "probe_both": 2, "stop_after_p4": 1}.get(case)
    assert expected is None or len(probed[0]) == expected, probed
    assert case != "probe_both" or len(full[0]["scores"]) > 5 * 3  # more than min anchors
    model.fast_inference = True
    _same(_detect(model, [image]), full)


def _one_head_state(state: dict, k: int) -> dict:
    """Head k of a four-head state dict as the state of a one-head model."""
    out = {n: v for n, v in state.items() if not n.startswith("decoder.")}
    prefix = f"decoder.heads.{k}."
    out.update({"decoder.heads.0." + n[len(prefix):]: v for n, v in state.items()
                if n.startswith(prefix)})
    out["decoder.stage_embedding.weight"] = state["decoder.stage_embedding.weight"][k:k + 1]
    return out


def test_used_head_and_inference_level_switch_with_the_same_weights():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(), 3)
    state = model.state_dict()
    images = two_images()[0]
    by_head = {}
    for used, k in (("main", 3), ("aux_0", 0), ("aux_2", 2)):
        four = build_detector(tiny_cfg("MODEL.ASAG.USED_HEAD", used), 3)
        four.load_state_dict(state)
        one = build_detector(tiny_cfg("MODEL.ASAG.NUM_DECODER_HEADS", 1), 3)
        one.load_state_dict(_one_head_state(state, k))
        by_head[used] = _detect(four, images)
        _same(_detect(one, images), by_head[used])
    assert not torch.equal(by_head["main"][0]["scores"], by_head["aux_0"][0]["scores"])
    for level, probes in (("P4P6", 1), ("P5P6", 0)):
        other = build_detector(tiny_cfg("MODEL.ASAG.USED_INFERENCE_LEVEL", level), 3)
        other.load_state_dict(state)
        assert other.anchor_generator.num_probes == probes and other.ddp_find_unused_parameters
        assert all(len(o["scores"]) > 0 for o in _detect(other, images))


@pytest.mark.parametrize("level", ["P3P6", "P4P6", "P5P6"])
def test_ddp_unused_parameter_flag_matches_a_training_step(level):
    torch.manual_seed(0)
    model = build_detector(tiny_cfg("MODEL.ASAG.USED_INFERENCE_LEVEL", level), 3)
    images, targets = two_images()
    sum(model(images, targets).values()).backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert model.ddp_find_unused_parameters == bool(unused), unused


def test_optimizer_groups_and_frozen_bn_statistics():
    cfg = tiny_cfg("MODEL.BACKBONE.NORM_EVAL", True, "MODEL.BACKBONE.FREEZE_AT", 2)
    model = build_detector(cfg, 3).train()
    groups = model.optimizer_param_groups(cfg)
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-4])
    names = {id(p): n for n, p in model.named_parameters()}
    body = {names[id(p)] for p in groups[1]["params"]}
    assert body and all(n.startswith("backbone.body.layer") for n in body)
    assert "backbone.body.layer2.0.bn1.weight" in body and "backbone.body.layer1.0.bn1.weight" \
        not in body
    assert any(names[id(p)].startswith("backbone.fpn.") for p in groups[0]["params"])
    bns = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.relation.training
    assert isinstance(build_optimizer(cfg, model), torch.optim.AdamW)


def _train(model, cfg, images, targets, steps) -> tuple[list[float], torch.optim.Optimizer]:
    """`steps` steps of build_optimizer(cfg) with the trainer's progress (epoch = step // 10):
    the loss of every step and the optimizer."""
    opt = build_optimizer(cfg, model)
    losses = train_steps(model, images, targets, opt, steps, max_norm=0.1,
                         before_step=lambda it: model.set_progress(it, it // 10))
    return losses, opt


def test_tiny_model_loss_falls_on_two_images():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_detector(cfg, 2).train()
    images, targets = two_images()
    losses, _ = _train(model, cfg, images, targets, 12)
    assert sum(losses[-3:]) < 0.6 * sum(losses[:3]), losses


# recall@10 reached 1.0 after 15 (seeds 1-3, 6), 20 (0) or 25 (4, 5, 7) steps over init seeds
# 0-7 and stayed there up to 35 (seeds 0-2: up to 120); 30 leaves a margin
OVERFIT_STEPS = 30


@pytest.mark.slow
def test_tiny_model_overfits_two_images():
    torch.manual_seed(0)
    cfg = tiny_cfg("SOLVER.BASE_LR", 2e-3)
    model = build_detector(cfg, 2).train()
    images, targets = two_images()
    before = recall_at_k(model, images, targets, 10)
    _train(model, cfg, images, targets, OVERFIT_STEPS)
    after = recall_at_k(model, images, targets, 10)
    assert before < 0.5 and after == 1.0, (before, after)


def test_checkpoint_resume_gives_the_same_outputs_and_steps(tmp_path):
    images, targets = two_images()
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_detector(cfg, 2).train()
    _, opt = _train(model, cfg, images, targets, 2)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save("model_0000002", {"model": model.state_dict(), "optimizer": opt.state_dict()})
    torch.manual_seed(1)
    restored = build_detector(cfg, 2)
    state = Checkpointer.load(ckpt.last())
    restored.load_state_dict(state["model"])
    opt2 = build_optimizer(cfg, restored)
    opt2.load_state_dict(state["optimizer"])
    _same(_detect(model, images), _detect(restored, images))
    for m, o in ((model, opt), (restored, opt2)):
        m.train().set_progress(2, 1)
        torch.manual_seed(7)
        o.zero_grad()
        sum(m(images, targets).values()).backward()
        o.step()
    for (name, p), q in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(p, q), name


def _tool(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args],
                          capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.mark.slow
def test_train_net_then_test_net_on_the_tiny_config(synthetic_root, tmp_path):
    cfg = os.path.join(REPO, "configs", "asag", "tiny_synthetic.yaml")
    common = ["DATASETS.ROOT", synthetic_root, "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
              "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
              "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
              "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2",
              "SOLVER.STEPS", "(3,)", "SOLVER.CHECKPOINT_PERIOD", "2", "TEST.IMS_PER_BATCH", "1",
              "MODEL.ASAG.FAST_INFERENCE", "True"]
    run = _tool("train_net.py", "--config-file", cfg, "--skip-test", *common)
    assert run.returncode == 0, run.stderr[-2000:]
    run = _tool("test_net.py", "--config-file", cfg, "MODEL.WEIGHT",
                str(tmp_path / "model_final.pth"), *common)
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "inference" / "synthetic_coco_val" / "metrics.json")
                         .read_text())
    assert {"AP", "AP50", "AP75"} <= metrics.keys()


@pytest.mark.parametrize("name", sorted(p for p in os.listdir(os.path.join(REPO, "configs", "asag"))
                                        if not p.startswith("Base-")))
def test_shipped_configs_build(name):
    cfg = load_config(os.path.join(REPO, "configs", "asag", name),
                      ["MODEL.BACKBONE.PRETRAINED", "", "MODEL.DEVICE", "cpu"])
    model = build_detector(cfg, 80)
    assert model.decoder.decoder == cfg.MODEL.ASAG.DECODER
    assert len(model.decoder.heads) == cfg.MODEL.ASAG.NUM_DECODER_HEADS
