"""ASAG: one-decoder-layer sparse detectors with adaptive sparse anchors (docs/asag.md)."""
from .anchor_generator import AdaptiveAnchorGenerator, AnchorRecords, PatchRecord, SparseAnchors
from .anchor_loss import AnchorLoss, flip_p6_targets, quality_focal_loss
from .blocks import IoFSelfAttention, padding_attention_mask
from .criterion import AsagCriterion, dual_weights, dw_focal_loss
from .denoising import DenoisingQueries, dn_noise_scale, prepare_denoising
from .detector import ASAG, AsagBackbone
from .heads import DecoderHeads, used_head_index
from .matcher import AreaWeightedMatcher
from .relation import RelationBlock

__all__ = ["ASAG", "AsagBackbone", "AdaptiveAnchorGenerator", "AnchorLoss", "AnchorRecords",
           "PatchRecord", "SparseAnchors", "flip_p6_targets", "quality_focal_loss",
           "AreaWeightedMatcher", "AsagCriterion", "DecoderHeads", "DenoisingQueries",
           "IoFSelfAttention", "RelationBlock", "dn_noise_scale", "dual_weights",
           "dw_focal_loss", "padding_attention_mask", "prepare_denoising", "used_head_index"]
