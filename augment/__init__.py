"""FAD augment stage (installed as fad.augment): FCOS with towers rebuilt from a genotype."""
from .build import build_fad_fcos, build_fad_head, build_model
from .cells import AugmentCell, AugmentTower

__all__ = ["AugmentCell", "AugmentTower", "build_fad_fcos", "build_fad_head", "build_model"]
