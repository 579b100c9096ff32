"""`DeformableDETR`: images in, losses (training) or detections (eval) out; also Sparse DETR."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from fad.modeling.hooks import ModelHooks
from fad.modeling.image_batch import batch_images
from fad.modeling.set_prediction import normalized_targets

from .backbone import MultiLevelBackbone
from .box_ops import refine_boxes
from .criterion import SetCriterion
from .dam import attention_to_token_map, dam_loss, dam_target, token_coverage
from .heads import DetrHeads
from .outputs import TransformerOutputs
from .position_encoding import PositionEmbeddingSine
from .postprocess import postprocess
from .transformer import DeformableTransformer


class DeformableDETR(nn.Module, ModelHooks):
    """Deformable DETR (optionally box refinement, two-stage) and Sparse DETR (`rho` > 0).

    `forward(images: list[Tensor[3, H, W] in [0, 1]], targets: list[dict] | None)`: targets hold
    `boxes` [K, 4] xyxy pixels and `labels` [K] int64 0-based. Training returns weighted losses
    (their sum is the objective); eval returns per image `boxes` [100, 4] xyxy in input pixels,
    `scores` [100], `labels` [100]. Images are normalised and padded here, and the padding mask
    built. `log_stats()` reports Sparse DETR's DAM coverage `corr` of the last forward (training
only; empty otherwise).
    """

    def __init__(self, backbone: MultiLevelBackbone, transformer: DeformableTransformer,
                 heads: DetrHeads, criterion: SetCriterion, pixel_mean: tuple, pixel_std: tuple,
                 size_divisibility: int = 32, aux_loss: bool = True, num_detections: int = 100,
                 use_enc_aux_loss: bool = False, mask_prediction_coef: float = 1.0,
                 dam_half_pixel: bool = True):
        super().__init__()
        self.backbone = backbone
        self.position_encoding = PositionEmbeddingSine(transformer.d_model // 2)
        self.transformer = transformer
        self.heads = heads
        self.criterion = criterion
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std), persistent=False)
        self.size_divisibility = size_divisibility
        self.aux_loss = aux_loss
        self.num_detections = num_detections
        self.use_enc_aux_loss = use_enc_aux_loss
        self.mask_prediction_coef = mask_prediction_coef
        self.dam_half_pixel = dam_half_pixel
        # per-layer class heads of box refinement get no gradient without the auxiliary
        # losses; DDP (fad.engine.trainer.wrap_ddp) must then look for unused parameters
        self.ddp_find_unused_parameters = (heads.with_box_refine and not aux_loss
                                           and len(heads.class_embed) > 1)
        self._stats: dict[str, Tensor] = {}

    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("DeformableDETR: training mode needs targets; call model.eval() "
                             "for inference")
        self._stats = {}
        batch, sizes, mask = batch_images(images, self.pixel_mean, self.pixel_std,
                                          self.size_divisibility)
        features = self.backbone(batch, mask)
        pos = [self.position_encoding(m).to(src.dtype) for src, m in features]
        with_dam = self.training and self.transformer.rho > 0
        t = self.transformer(features, pos, self.heads, return_sampling=with_dam)
        if not self.training:
            last = len(t.hs) - 1
            logits = self.heads.cls(last)(t.hs[last])
            boxes = refine_boxes(self.heads.box(last)(t.hs[last]), t.layer_reference(last))
            return postprocess(logits, boxes, sizes, self.num_detections)

        norm_targets = normalized_targets(targets, sizes, self.criterion.num_classes,
                                          "DETR targets")
        losses = self.criterion(self._training_outputs(t), norm_targets)
        if with_dam:
            losses["loss_mask_prediction"] = self.mask_prediction_coef * self._dam_loss(t)
        return losses

    def _training_outputs(self, t: TransformerOutputs) -> dict:
        """Prediction sets for the criterion: last decoder layer, aux layers, encoder sets."""
        preds = [{"pred_logits": self.heads.cls(i)(hs), "pred_boxes":
                  refine_boxes(self.heads.box(i)(hs), t.layer_reference(i))}
                 for i, hs in enumerate(t.hs)]
        out = dict(preds[-1])
        if self.aux_loss:
            out["aux_outputs"] = preds[:-1]
        if t.proposals is not None:
            out["enc_outputs"] = {"pred_logits": t.proposals.logits,
                                  "pred_boxes": t.proposals.boxes,
                                  "query_mask": t.proposals.valid,
                                  "binary": not self.transformer.eff_specific_head}
        if self.use_enc_aux_loss and t.sparse is not None:
            h, s = self.heads, t.sparse
            out["enc_aux_outputs"] = [
                {"pred_logits": h.enc_aux_class[i](x),
                 "pred_boxes": (h.enc_aux_bbox[i](x) + s.proposals).sigmoid(),
                 "query_mask": s.valid}
                for i, x in enumerate(s.layer_outputs[:len(h.enc_aux_class)])]
        return out

    def _dam_loss(self, t: TransformerOutputs) -> Tensor:
        """Scoring-network loss against the decoder attention map; records `corr`. Needs
        `t.sampling` and `t.sparse` (training Sparse DETR)."""
        locations, weights = t.sampling  # [D, N, Q, M, L, P, 2], [D, N, Q, M, L, P]
        dam = attention_to_token_map(locations.transpose(0, 1), weights.transpose(0, 1),
                                     t.level_shapes, self.dam_half_pixel)
        target = dam_target(dam, t.padding_mask, t.sparse.counts, t.sparse.index.shape[1])
        self._stats = {"corr": token_coverage(dam, t.sparse.index, t.sparse.counts)}
        return dam_loss(t.sparse.scores, target, t.padding_mask)

    def log_stats(self) -> dict[str, float]:
        """Values to log, not to optimise (Sparse DETR: `corr`), read from the device here."""
        return {name: float(value) for name, value in self._stats.items()}

    def optimizer_param_groups(self, cfg: CfgNode) -> list[dict]:
        """AdamW groups: backbone body at MODEL.DETR.LR_BACKBONE; parameters whose name contains
        one of MODEL.DETR.LR_LINEAR_PROJ_NAMES at SOLVER.BASE_LR * LR_LINEAR_PROJ_MULT; the
        rest at SOLVER.BASE_LR; all with SOLVER.WEIGHT_DECAY. Frozen parameters are left out."""
        d, s = cfg.MODEL.DETR, cfg.SOLVER
        main, body, linear_proj = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("backbone.body."):
                body.append(p)
            elif any(key in name for key in d.LR_LINEAR_PROJ_NAMES):
                linear_proj.append(p)
            else:
                main.append(p)
        groups = [(main, s.BASE_LR), (body, d.LR_BACKBONE),
                  (linear_proj, s.BASE_LR * d.LR_LINEAR_PROJ_MULT)]
        return [{"params": ps, "lr": lr, "weight_decay": s.WEIGHT_DECAY} for ps, lr in groups if ps]
