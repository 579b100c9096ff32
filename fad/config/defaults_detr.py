"""Config keys of Deformable DETR and Sparse DETR (merged into the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_detr_config(cfg: CN) -> None:
    """Add the Deformable DETR and Sparse DETR keys to `cfg` in place."""
