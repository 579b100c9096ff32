"""FAD augment stage (installed as fad.augment): FCOS with towers rebuilt from a genotype."""
from fad.nas.cells import AugmentCell, AugmentTower

from .build import build_fad_fcos, build_fad_head, build_model

__all__ = ["AugmentCell", "AugmentTower", "build_fad_fcos", "build_fad_head", "build_model"]
