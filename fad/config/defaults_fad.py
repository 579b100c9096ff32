"""Config keys of FAD search and augment (merged into the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_fad_config(cfg: CN) -> None:
    """Add the FAD search and augment keys to `cfg` in place."""
