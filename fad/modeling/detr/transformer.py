"""The Deformable / Sparse DETR transformer: flatten levels, (select tokens), encode, (propose),
decode. Prediction heads are passed in (`heads.py`) because two-stage selection and iterative
box refinement use them inside the transformer."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from fad.ops import MSDeformAttn
from fad.ops.msda import level_tensors

from .decoder import DecoderLayer, DeformableDecoder
from .encoder import DeformableEncoder, EncoderLayer, valid_ratios
from .heads import DetrHeads
from .outputs import SparseTokens, TransformerOutputs, TwoStageProposals
from .position_encoding import box_sine_embedding
from .proposals import encoder_proposals
from .sparse_encoder import (
    ScoringNetwork,
    SparseEncoder,
    gather_tokens,
    select_tokens,
    sparse_token_counts,
    token_budget,
)


class DeformableTransformer(nn.Module):
    """Encoder-decoder over multi-level maps.

    Single-stage: `num_queries` learned (query_pos, tgt) pairs and 2-d reference points
    sigmoid(Linear(query_pos)). Two-stage: every encoder token proposes a box, the top
    `num_queries` by objectness become the decoder's 4-d references (detached) and their sine
    embedding gives query_pos/tgt (or, with `eff_query_init`, tgt = the memory at those tokens).
    Sparse DETR (`rho` > 0, needs two-stage): a scoring network picks k_i tokens per image as the
    only encoder queries.
    """

    def __init__(self, d_model: int = 256, n_heads: int = 8, num_encoder_layers: int = 6,
                 num_decoder_layers: int = 6, dim_feedforward: int = 1024, dropout: float = 0.1,
                 num_feature_levels: int = 4, enc_n_points: int = 4, dec_n_points: int = 4,
                 num_queries: int = 300, two_stage: bool = False, rho: float = 0.0,
                 eff_query_init: bool = False, eff_specific_head: bool = False):
        super().__init__()
        if rho > 0 and not two_stage:
            raise ValueError(f"DeformableTransformer: rho {rho} > 0 (Sparse DETR) needs "
                             "two_stage=True")
        self.d_model = d_model
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.rho = rho
        self.eff_query_init = eff_query_init
        self.eff_specific_head = eff_specific_head
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        enc_layer = EncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, n_heads,
                                 enc_n_points)
        encoder_cls = SparseEncoder if rho > 0 else DeformableEncoder
        self.encoder = encoder_cls(enc_layer, num_encoder_layers)
        dec_layer = DecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, n_heads,
                                 dec_n_points)
        self.decoder = DeformableDecoder(dec_layer, num_decoder_layers)
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            pos_dim = d_model if eff_query_init else 2 * d_model
            self.pos_trans = nn.Linear(2 * d_model, pos_dim)
            self.pos_trans_norm = nn.LayerNorm(pos_dim)
        else:
            self.query_embed = nn.Embedding(num_queries, 2 * d_model)
            self.reference_points = nn.Linear(d_model, 2)
        if rho > 0:
            self.scoring = ScoringNetwork(d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """As the reference: xavier on every matrix (encoder, decoder, enc_output, pos_trans,
        reference_points, the scoring network), the biases of enc_output, pos_trans and the
        scoring network at PyTorch's default, reference_points' bias 0, MSDeformAttn's own init,
        level_embed N(0, 1); query_embed (the reference keeps it outside its transformer) keeps
        nn.Embedding's N(0, 1)."""
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith("query_embed."):
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if hasattr(self, "reference_points"):
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def forward(self, features: list[tuple[Tensor, Tensor]], pos_embeds: list[Tensor],
                heads: DetrHeads, return_sampling: bool = False) -> TransformerOutputs:
        """Run the transformer.

        Args:
            features: per level (src [N, C, H_l, W_l], padding mask [N, H_l, W_l]).
            pos_embeds: per level [N, C, H_l, W_l].
            heads: the detector's heads (box refinement, two-stage scoring).
            return_sampling: also return the decoder's cross-attention sampling (for the DAM).

        Returns `TransformerOutputs` (`outputs.py`, shapes there): the decoder's outputs and
        references, the token layout, the sampling (when asked), the two-stage proposals and
        Sparse DETR's selected tokens.
        """
        src, mask, pos = [], [], []
        for level, ((src_l, mask_l), pos_l) in enumerate(zip(features, pos_embeds)):
            src.append(src_l.flatten(2).transpose(1, 2))
            mask.append(mask_l.flatten(1))
            pos.append(pos_l.flatten(2).transpose(1, 2) + self.level_embed[level])
        shapes_list = [(f.shape[-2], f.shape[-1]) for f, _ in features]  # host ints, no sync
        src, mask, pos = torch.cat(src, 1), torch.cat(mask, 1), torch.cat(pos, 1)
        shapes, level_start = level_tensors(shapes_list, src.device)
        ratios = torch.stack([valid_ratios(m) for _, m in features], 1).to(src.dtype)
        sparse = None
        if self.rho > 0:
            tokens, proposals, valid = encoder_proposals(src + pos, mask, shapes_list)
            scores = self.scoring(self.enc_output_norm(self.enc_output(tokens)), mask)
            counts = sparse_token_counts(mask, self.rho)
            token_idx = select_tokens(scores, mask, token_budget(mask.shape[1], self.rho))
            memory, inter = self.encoder(src, pos, shapes, level_start, ratios, mask, token_idx,
                                         counts, level_shapes=shapes_list)
            keep = torch.arange(token_idx.shape[1], device=src.device)[None] < counts[:, None]
            sparse = SparseTokens(scores, token_idx, counts, inter,
                                  gather_tokens(proposals, token_idx),
                                  keep & gather_tokens(valid, token_idx))
        else:
            memory, _ = self.encoder(src, pos, shapes, level_start, ratios, mask,
                                     level_shapes=shapes_list)

        two_stage = None
        if self.two_stage:
            tgt, query_pos, reference_points, two_stage = self._two_stage_queries(
                memory, mask, shapes_list, heads)
        else:
            query_pos, tgt = self.query_embed.weight.split(self.d_model, 1)
            query_pos = query_pos[None].expand(src.shape[0], -1, -1)
            tgt = tgt[None].expand(src.shape[0], -1, -1)
            reference_points = self.reference_points(query_pos).sigmoid()

        box_head = heads.box if heads.with_box_refine else None
        hs, refs, sampling = self.decoder(tgt, reference_points, memory, shapes, level_start,
                                          ratios, query_pos, mask, box_head, return_sampling,
                                          level_shapes=shapes_list)
        return TransformerOutputs(hs, reference_points, refs, mask, shapes, level_start,
                                  shapes_list, sampling, two_stage, sparse)

    def _two_stage_queries(self, memory: Tensor, mask: Tensor, shapes_list: list, heads: DetrHeads
                           ) -> tuple[Tensor, Tensor, Tensor, TwoStageProposals]:
        """Score every token's proposal, keep the top `num_queries` valid ones as queries.

        Returns tgt [N, Q, C], query_pos [N, Q, C], reference boxes [N, Q, 4] (detached) and
        the encoder's proposals.
        """
        tokens, proposals, valid = encoder_proposals(memory, mask, shapes_list)
        tokens = self.enc_output_norm(self.enc_output(tokens))
        logits = heads.enc_class(tokens)
        boxes_unact = heads.enc_bbox(tokens) + proposals
        objectness = logits.max(-1).values if self.eff_specific_head else logits[..., 0]
        objectness = objectness.detach().masked_fill(~valid, float("-inf"))
        num_queries = min(self.num_queries, objectness.shape[1])
        top = objectness.topk(num_queries, dim=1).indices
        top_boxes = gather_tokens(boxes_unact, top).detach()
        pos_feats = self.pos_trans_norm(self.pos_trans(box_sine_embedding(top_boxes,
                                                                          self.d_model // 2)))
        if self.eff_query_init:
            tgt, query_pos = gather_tokens(memory, top), pos_feats
        else:
            query_pos, tgt = pos_feats.split(self.d_model, -1)
        scored = TwoStageProposals(logits, boxes_unact.sigmoid(), valid)
        return tgt, query_pos, top_boxes.sigmoid(), scored
