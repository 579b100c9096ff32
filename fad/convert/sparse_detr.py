"""Sparse DETR release (kakaobrain/sparse-detr) -> our DeformableDETR with `rho` > 0.

Same file format and names as Deformable DETR (`deformable_detr.py`), plus:

- the scoring network `transformer.enc_mask_predictor.{layer1,layer2}` -> `transformer.scoring`;
- with the encoder auxiliary loss, the head list continues after the decoder's (and the proposal
  head) with one head per encoder layer but the last -> `heads.enc_aux_class.j` /
  `heads.enc_aux_bbox.j`; the encoder sees them again as `transformer.encoder.{class,bbox}_embed.j`
  (aliases);
- with two-stage the decoder always refines boxes with the head list (the release sets the
  decoder's `bbox_embed` whenever two-stage is on), so the config needs WITH_BOX_REFINE True.

The weights do not depend on rho (the keep ratio only sets how many tokens are selected), so a
checkpoint loads into a config of any MODEL.DETR.RHO > 0; the converter reports the rho it was
trained with, the one at which the published AP holds.
"""
from __future__ import annotations

from torch import Tensor
from yacs.config import CfgNode

from .common import Conversion, Options, stored_args
from .deformable_detr import convert_detr

STATE_KEY = "model"  # where the release file keeps its state dict
SCORING_RULES = [(r"transformer\.enc_mask_predictor\.", "transformer.scoring.")]


def convert(state: dict[str, Tensor], extra: dict, cfg: CfgNode, options: Options,
            source: str) -> Conversion:
    """Sparse DETR (any rho, scoring network, encoder aux heads, eff_query_init /
    eff_specific_head) -> ours."""
    result = convert_detr(state, extra, cfg, options, source, SCORING_RULES)
    rho = stored_args(extra).get("rho")
    if rho is None:
        result.notes.append(f"trained rho: not stored in the checkpoint (no args); the config "
                            f"uses MODEL.DETR.RHO {cfg.MODEL.DETR.RHO}")
    elif abs(float(rho) - cfg.MODEL.DETR.RHO) > 1e-9:
        result.notes.append(f"trained with rho {rho} but the config uses MODEL.DETR.RHO "
                            f"{cfg.MODEL.DETR.RHO}: the weights fit any rho; the published AP "
                            f"holds at rho {rho}")
    return result
