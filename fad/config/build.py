"""Assemble the full default config and load yaml + command-line overrides."""
from __future__ import annotations

from typing import Sequence

from yacs.config import CfgNode as CN

from .defaults import _C
from .defaults_detr import add_detr_config
from .defaults_fad import add_fad_config
from .defaults_sparse import add_sparse_config


def get_cfg_defaults() -> CN:
    """A fresh, mutable copy of every default key."""
    cfg = _C.clone()
    add_fad_config(cfg)
    add_sparse_config(cfg)
    add_detr_config(cfg)
    return cfg


def load_config(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Defaults <- yaml file <- `KEY VALUE` pairs; raise a one-line error on unknown keys."""
    cfg = get_cfg_defaults()
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except FileNotFoundError:
            raise SystemExit(f"error: config file {config_file} not found") from None
        except (KeyError, ValueError, AssertionError) as exc:
            raise SystemExit(f"error: {config_file}: {exc}") from None
    if opts:
        if len(opts) % 2:
            raise SystemExit(f"error: overrides must be KEY VALUE pairs, got {list(opts)}")
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, ValueError, AssertionError) as exc:
            raise SystemExit(f"error: bad override: {exc}") from None
    return cfg
