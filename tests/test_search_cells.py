"""The supernet cell's batched 1x1s and folded mixing equal the plain definition."""
import pytest
import torch

from fad.search.cells import MixedEdge, SearchCell


def _plain_cell(cell: SearchCell, s0, s1, weights):
    """node_i = sum_j edge_ij(state_j, w_i[j]), each edge computed on its own."""
    states = [cell.pre0(s0), cell.pre1(s1)]
    k = 0
    for w in weights:
        node = 0
        for j, h in enumerate(states):
            node = node + cell.edges[k](h, w[j])
            k += 1
        states.append(node)
    return torch.cat(states[2:], 1)


@pytest.mark.parametrize("shared,dil3,same_inputs,in_channels", [
    (True, False, True, (32, 32)), (True, False, False, (32, 48)), (False, False, False, (32, 32)),
    (True, True, True, (32, 32))])
def test_cell_equals_the_plain_sum_of_edges(shared, dil3, same_inputs, in_channels):
    torch.manual_seed(0)
    cell = SearchCell(3, in_channels, 32, 16, shared=shared, dil3=dil3)
    num_ops = 13 if dil3 else 11
    weights = [torch.randn(i + 2, num_ops).softmax(-1).requires_grad_() for i in range(3)]
    s1 = torch.randn(2, in_channels[1], 9, 7)
    s0 = s1 if same_inputs else torch.randn(2, in_channels[0], 9, 7)
    fast = cell(s0, s1, weights)
    plain = _plain_cell(cell, s0, s1, weights)
    assert fast.shape == (2, 96, 9, 7)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad(fast, [*weights, *cell.parameters()], g)
    grads_plain = torch.autograd.grad(plain, [*weights, *cell.parameters()], g)
    for a, b in zip(grads_fast, grads_plain):  # float32 sums in another order
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_mixed_edge_is_the_weighted_sum_of_candidates():
    torch.manual_seed(1)
    edge = MixedEdge(32, 16)
    x, w = torch.randn(1, 32, 6, 5), torch.randn(11).softmax(-1).requires_grad_()
    h = edge.squeeze(x)
    outs = [o for family in edge.families for o in family(h)]
    expected = edge.expand(sum(wk * o for wk, o in zip(w, outs)))
    got = edge(x, w)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # the weights folded into 1x1s and GroupNorm affines give the definition's gradients
    g = torch.randn_like(got)
    leaves = [w, *edge.parameters()]
    for a, b in zip(torch.autograd.grad(got, leaves, g), torch.autograd.grad(expected, leaves, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    one_hot_none = torch.zeros(11)
    one_hot_none[-1] = 1.0
    assert edge(x, one_hot_none).abs().max() == 0


def test_a_node_runs_its_edges_as_one_op_per_layer():
    """The std family's three chain units are the cell's only dense 3x3 convolutions: one
    grouped conv per unit and node (groups = the node's edges), not one per edge."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Convs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.groups = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.convolution.default and args[1].shape[-1] == 3:
                self.groups.append(args[8])
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    cell = SearchCell(3, (32, 32), 32, 16)
    weights = [torch.randn(i + 2, 11).softmax(-1) for i in range(3)]
    s = torch.randn(1, 32, 6, 5)
    with torch.no_grad(), Convs() as convs:
        cell(s, s, weights)
    assert sorted(convs.groups) == [2] * 3 + [3] * 3 + [4] * 3
