"""Training engine: exact resume after a kill, DDP with two gloo processes, NaN guard."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_fcos_cfg

from fad.data import build_dataset
from fad.engine import trainer
from fad.engine.checkpoint import Checkpointer
from fad.modeling import build_detector


def _run(cfg, resume=False):
    torch.manual_seed(0)
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    model = build_detector(cfg, dataset.num_classes)
    trainer.train(cfg, model, dataset, torch.device("cpu"), resume=resume)
    return model


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(synthetic_root, tmp_path, monkeypatch):
    straight = _run(tiny_fcos_cfg(synthetic_root, str(tmp_path / "a")))

    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path / "b"))
    real_loader = trainer.make_train_loader

    def dying_loader(*args, **kwargs):
        for i, batch in enumerate(real_loader(*args, **kwargs)):
            if i == 4:  # killed during iteration 5, after the checkpoint at 3
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(trainer, "make_train_loader", dying_loader)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg)
    assert Checkpointer(cfg.OUTPUT_DIR).last().endswith("model_0000003.pth")
    monkeypatch.setattr(trainer, "make_train_loader", real_loader)
    resumed = _run(cfg, resume=True)

    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    final = Checkpointer.load(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
    assert final["iteration"] == 6


def _ddp_worker(rank: int, world: int, root: str, out: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from fad.engine.distributed import get_world_size, init_distributed

    torch.set_num_threads(1)
    assert init_distributed() and get_world_size() == world
    cfg = tiny_fcos_cfg(root, out)
    cfg.merge_from_list(["SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 3,
                         "MODEL.BACKBONE.NORM", "FrozenBN"])
    model = _run(cfg)
    torch.save({k: v.clone() for k, v in model.state_dict().items()},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_stay_in_sync(synthetic_root, tmp_path):
    out = str(tmp_path)
    port = 29500 + os.getpid() % 1000
    mp.spawn(_ddp_worker, args=(2, synthetic_root, out, port), nprocs=2, join=True)
    w0 = torch.load(os.path.join(out, "rank0.pt"))
    w1 = torch.load(os.path.join(out, "rank1.pt"))
    for k in w0:
        assert torch.allclose(w0[k], w1[k]), k
    assert os.path.isfile(os.path.join(out, "model_final.pth"))
    assert Checkpointer.load(os.path.join(out, "model_final.pth"))["iteration"] == 3


def test_nan_loss_stops_with_a_clear_error(synthetic_root, tmp_path):
    cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path))
    cfg.merge_from_list(["SOLVER.BASE_LR", 1e30])
    with pytest.raises(FloatingPointError, match="lower SOLVER.BASE_LR"):
        _run(cfg)


def test_step_scalars_reach_the_host_in_one_named_sync():
    """The trainer reads a step's losses and scalars back once per iteration (one stacked
    `.tolist()`, named for the device audit), not one `.item()` per key."""
    from types import SimpleNamespace

    from fad.engine.device_audit import DeviceAudit

    audit = DeviceAudit()
    with audit.fake("cuda") as make:
        out = make(lambda: trainer.StepOutput(
            losses={"loss_cls": torch.ones(()), "loss_box": torch.ones(()),
                    "loss_ctr": torch.ones((), dtype=torch.bfloat16)},
            scalars={"val_loss": torch.ones((), dtype=torch.float64)}))
        with audit.phase("reduce"):
            reduced = trainer.Trainer._reduce(SimpleNamespace(iter=0, max_iter=1), out)
    assert sorted(reduced) == ["loss", "loss_box", "loss_cls", "loss_ctr", "val_loss"]
    syncs = [f for f in audit.findings if f.kind == "host-sync"]
    assert len(syncs) == 1 and syncs[0].allowed and "trainer.py" in syncs[0].where, audit.lines()
    assert audit.failures == [], audit.lines()


def test_reduce_keeps_float64_scalars_and_sums_the_losses():
    from types import SimpleNamespace

    out = trainer.StepOutput(losses={"a": torch.tensor(0.1, dtype=torch.float64),
                                     "b": torch.tensor(0.25)},
                             scalars={"c": torch.tensor(1 / 3, dtype=torch.float64)})
    reduced = trainer.Trainer._reduce(SimpleNamespace(iter=0, max_iter=1), out)
    assert reduced == {"a": 0.1, "b": 0.25, "c": 1 / 3, "loss": 0.1 + 0.25}


def test_channels_last_step_equals_the_nchw_step(synthetic_root, tmp_path):
    """SOLVER.CHANNELS_LAST (the default) trains in NHWC memory: the conv weights are
    channels-last, and a step gives the losses and weights of the NCHW step (same math, other
    kernels: float32 rounding)."""
    losses, states = {}, {}
    for channels_last in (True, False):
        cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path / str(channels_last)))
        cfg.defrost()
        cfg.SOLVER.CHANNELS_LAST = channels_last
        torch.manual_seed(0)
        model = build_detector(cfg, 3)
        step = trainer.DetectorStep(cfg, model, torch.device("cpu"))
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        g = torch.Generator().manual_seed(1)
        batch = ([torch.rand(3, 96, 128, generator=g) * 255 for _ in range(2)],
                 [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
                  {"boxes": torch.tensor([[30.0, 20.0, 120.0, 90.0]]),
                   "labels": torch.tensor([0])}])
        losses[channels_last] = step.run(batch).losses
        states[channels_last] = model.state_dict()
    for key, value in losses[False].items():
        torch.testing.assert_close(losses[True][key], value, rtol=1e-4, atol=1e-5)
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=1e-4, atol=1e-5, msg=key)
