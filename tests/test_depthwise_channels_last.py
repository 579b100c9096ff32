"""Channels-last training of the searched FCOS (SOLVER.CHANNELS_LAST): its depthwise units run
the kernel on NHWC maps (its NHWC path), as the NCHW step runs it on NCHW maps, and one step
equals the NCHW step to float32 rounding."""
import os

import torch
from conftest import REPO, tiny_fcos_cfg
from torch.profiler import ProfilerActivity, profile

from fad.engine import trainer
from fad.modeling import build_detector
from fad.modeling.fcos import resolve_genotype
from fad.ops.depthwise import kernel_runs

PAPER = os.path.join(REPO, "configs", "fad", "genotypes", "fad_paper.log")


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    """Two 96x128 images (Tensor[3, 96, 128] in 0..255) with one box each."""
    g = torch.Generator().manual_seed(1)
    return ([torch.rand(3, 96, 128, generator=g) * 255 for _ in range(2)],
            [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 50.0]]), "labels": torch.tensor([1])},
             {"boxes": torch.tensor([[30.0, 20.0, 120.0, 90.0]]), "labels": torch.tensor([0])}])


def test_searched_fcos_channels_last_step_runs_the_kernel_with_equal_values(synthetic_root,
                                                                             tmp_path, monkeypatch):
    monkeypatch.setenv("FAD_DEPTHWISE_BACKEND", "cpp")  # a build failure fails the test
    assert kernel_runs(torch.zeros(1, 1, 1, 1))
    losses, states, kernel_calls = {}, {}, {}
    for channels_last in (True, False):
        cfg = tiny_fcos_cfg(synthetic_root, str(tmp_path / str(channels_last)))
        cfg.defrost()
        cfg.MODEL.FAD.TOWER_CHANNELS, cfg.MODEL.FAD.EDGE_CHANNELS = 32, 16
        resolve_genotype(cfg, PAPER)
        cfg.SOLVER.CHANNELS_LAST = channels_last
        torch.manual_seed(0)
        model = build_detector(cfg, 3)
        step = trainer.DetectorStep(cfg, model, torch.device("cpu"))
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            losses[channels_last] = step.run(_batch()).losses
        kernel_calls[channels_last] = sum(  # on maps larger than 1x1 (x: [N, C, H, W])
            e.count for e in prof.key_averages(group_by_input_shape=True)
            if e.key.startswith("fad_dw::") and e.input_shapes[0][2] * e.input_shapes[0][3] > 1)
        states[channels_last] = model.state_dict()
    assert kernel_calls[True] == kernel_calls[False] > 0
    for key, value in losses[False].items():
        torch.testing.assert_close(losses[True][key], value, rtol=1e-4, atol=1e-5)
    for key, value in states[False].items():
        torch.testing.assert_close(states[True][key], value, rtol=1e-4, atol=1e-5, msg=key)
