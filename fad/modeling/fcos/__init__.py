"""FCOS-imprv: model.py (detector, post-processing) <- head.py (plain head) or tower_head.py (the
frame of the FAD searched heads); targets.py (locations, assignment) -> loss.py (losses)."""
from .head import FCOSHead
from .model import FCOS, build_fcos
from .tower_head import TowerHead, check_fad_config

__all__ = ["FCOS", "FCOSHead", "TowerHead", "build_fcos", "check_fad_config"]
