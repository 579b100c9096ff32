"""Two gloo ranks with different data keep identical alphas and weights (grads averaged)."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from fad.engine.distributed import broadcast_tensors
from fad.search.architect import Architect
from fad.search.engine import mean_over_ranks


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.ops = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4, bias=False)])
        self.alpha = nn.Parameter(torch.randn(2))

    def forward(self, x):
        w = self.alpha.softmax(-1)
        return sum(wk * torch.tanh(op(x)) for wk, op in zip(w, self.ops))


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)


def _loss(model, batch):
    x, y = batch
    return (model(x) - y).square().mean()


def _steps(model, batches, reduce):
    """3 iterations: alpha step on a val batch, SGD step on a train batch."""
    weights = [p for n, p in model.named_parameters() if n != "alpha"]
    opt = torch.optim.SGD(weights, lr=0.1, momentum=0.9)
    arch = Architect(lambda b: _loss(model, b), weights, [model.alpha], lr=0.05, reduce=reduce)
    for val, train in batches:
        arch.step(val)
        opt.zero_grad()
        _loss(model, train).backward(inputs=weights)
        reduce([p.grad for p in weights])
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different init per rank, as under torchrun
    model = Tiny()
    broadcast_tensors([p.data for p in model.parameters()])
    batches = [(_batch(100 * it + rank), _batch(100 * it + 50 + rank)) for it in range(3)]
    torch.save(_steps(model, batches, mean_over_ranks), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()



@pytest.mark.slow
def test_two_ranks_stay_identical_and_match_pooled_gradients(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0, r1)
    # same run in one process where each loss is the mean over both ranks' batches
    torch.manual_seed(0)
    model = Tiny()
    pooled = [tuple(tuple(torch.cat([_batch(100 * it + off + r)[k] for r in range(2)])
                          for k in range(2)) for off in (0, 50)) for it in range(3)]
    reference = _steps(model, pooled, lambda tensors: None)
    torch.testing.assert_close(r0, reference, rtol=1e-5, atol=1e-6)
