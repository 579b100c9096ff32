"""FCOS-imprv: build.py (reads the config) -> model.py (detector, post-processing) <- head.py
(plain head) or tower_head.py (the frame of the FAD heads, towers from `fad.nas.cells` or the
supernet); targets.py (STRIDES, locations, assignment) -> loss.py (losses)."""
from .build import build_fad_head, build_fcos, fad_genotypes, resolve_genotype
from .head import FCOSHead
from .model import FCOS
from .targets import STRIDES
from .tower_head import TowerHead

__all__ = ["FCOS", "FCOSHead", "STRIDES", "TowerHead", "build_fad_head", "build_fcos",
           "fad_genotypes", "resolve_genotype"]
