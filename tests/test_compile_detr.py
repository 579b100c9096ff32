"""The Deformable DETR transformers (plain, box refinement, two-stage) and Sparse DETR's compile
whole: `torch._dynamo.explain` finds no graph break (no `spatial_shapes.tolist()`, no `.item()`
in the token selection) and `torch.compile(fullgraph=True)` gives the eager outputs and
gradients."""
from __future__ import annotations

import pytest
import torch

from fad.modeling.detr.heads import DetrHeads
from fad.modeling.detr.transformer import DeformableTransformer

KINDS = {  # name: (with_box_refine, two_stage, rho)
    "plain": (False, False, 0.0),
    "box_refine": (True, False, 0.0),
    "two_stage": (True, True, 0.0),
    "sparse": (True, True, 0.3),
}


def _transformer(kind: str) -> tuple[DeformableTransformer, DetrHeads, list, list]:
    """A tiny transformer, its heads and two padded images' features and position maps."""
    refine, two_stage, rho = KINDS[kind]
    torch.manual_seed(0)
    transformer = DeformableTransformer(
        d_model=16, n_heads=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32,
        dropout=0.0, num_feature_levels=2, num_queries=8, two_stage=two_stage, rho=rho)
    heads = DetrHeads(16, 3, 2, with_box_refine=refine, two_stage=two_stage)
    masks = [torch.zeros(2, 6, 6, dtype=torch.bool), torch.zeros(2, 3, 3, dtype=torch.bool)]
    masks[0][1, :, 4:] = True
    masks[1][1, :, 2:] = True
    features = [(torch.randn(2, 16, 6, 6), masks[0]), (torch.randn(2, 16, 3, 3), masks[1])]
    pos = [torch.randn(2, 16, 6, 6), torch.randn(2, 16, 3, 3)]
    return transformer, heads, features, pos


def _outputs(out) -> list[torch.Tensor]:
    """The tensors of a `TransformerOutputs` that a detector reads."""
    tensors = [out.hs, out.init_reference, out.references]
    if out.proposals is not None:
        tensors += [out.proposals.logits, out.proposals.boxes]
    if out.sparse is not None:
        tensors += [out.sparse.scores, out.sparse.index, *out.sparse.layer_outputs]
    if out.sampling is not None:
        tensors += list(out.sampling)
    return tensors


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_transformer_has_no_graph_break(kind):
    transformer, heads, features, pos = _transformer(kind)
    transformer.eval()
    explained = torch._dynamo.explain(transformer)(features, pos, heads)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fullgraph_compile_gives_the_eager_outputs_and_gradients(kind):
    transformer, heads, features, pos = _transformer(kind)
    transformer.train()  # dropout 0: deterministic; Sparse DETR also returns its sampling
    sampling = kind == "sparse"
    torch._dynamo.reset()
    compiled = torch.compile(transformer, backend="aot_eager", fullgraph=True)
    want = _outputs(transformer(features, pos, heads, return_sampling=sampling))
    got = _outputs(compiled(features, pos, heads, return_sampling=sampling))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    params = [p for p in transformer.parameters() if p.requires_grad]
    grads_want = torch.autograd.grad(want[0].square().sum(), params, allow_unused=True)
    grads_got = torch.autograd.grad(got[0].square().sum(), params, allow_unused=True)
    for p, g, w in zip(params, grads_got, grads_want):  # compiled: zeros where eager has None
        torch.testing.assert_close(torch.zeros_like(p) if g is None else g,
                                   torch.zeros_like(p) if w is None else w, rtol=1e-4, atol=1e-6)
    assert any(w is not None and w.abs().sum() > 0 for w in grads_want)
