"""Config keys of SparseResNet (merged into the defaults by fad.config.build)."""
from yacs.config import CfgNode as CN


def add_sparse_config(cfg: CN) -> None:
    """Add the SparseResNet keys to `cfg` in place."""
