"""Assemble the full default config and load yaml (with `_BASE_` inheritance) + overrides."""
from __future__ import annotations

import difflib
import os
from collections.abc import Sequence

import yaml
from yacs.config import CfgNode as CN

from fad.errors import ConfigError

from .defaults import _C
from .defaults_asag import add_asag_config
from .defaults_detr import add_detr_config
from .defaults_fad import add_fad_config
from .defaults_rcnn import add_rcnn_config
from .defaults_sparse import add_sparse_config
from .validate import typed_value, validate_config

BASE_KEY = "_BASE_"


def get_cfg_defaults() -> CN:
    """A fresh, mutable copy of every default key."""
    cfg = _C.clone()
    add_fad_config(cfg)
    add_sparse_config(cfg)
    add_rcnn_config(cfg)
    add_detr_config(cfg)
    add_asag_config(cfg)
    return cfg


def merge_config_file(cfg: CN, path: str, _chain: tuple[str, ...] = (),
                      sources: dict[str, str] | None = None) -> None:
    """Merge the yaml file `path` into `cfg`, its `_BASE_` file (relative to it) first.

    A file's keys override those of its base, recursively; a base that includes itself again is
    a ConfigError naming the chain, as are unreadable files, bad yaml and unknown keys.
    `sources` (if given) gets {key: the file that set it last}.
    """
    real = os.path.realpath(path)
    if real in _chain:
        chain = " -> ".join(os.path.relpath(p) for p in (*_chain, real))
        raise ConfigError(f"{path}: {BASE_KEY} files include each other ({chain}); "
                          "remove the cycle")
    try:
        with open(path, encoding="utf-8") as f:
            text = yaml.safe_load(f)  # never yacs' load_cfg(file): it runs a *.py file
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not a readable yaml config ({detail})") from None
    if not isinstance(text, dict | None):
        raise ConfigError(f"{path}: not a yaml config (its top level is a "
                          f"{type(text).__name__}, not KEY: VALUE lines)")
    data = CN(text)
    base = data.pop(BASE_KEY, None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: {BASE_KEY} must name one yaml file, got {base!r}")
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        merge_config_file(cfg, base, (*_chain, real), sources)
    for key in _leaf_keys(data):
        _check_key(cfg, key, f"{path}: ", "fix the key in this file")
        _assign(cfg, key, _lookup(data, key), f"{path}: ", "fix the value in this file")
        if sources is not None:
            sources[key] = path


def _leaf_keys(node: CN, prefix: str = "") -> list[str]:
    """Every full dotted key below `node` (the keys of nested nodes, not the nodes)."""
    keys = []
    for name, value in node.items():
        keys += _leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [
            prefix + name]
    return keys


def _check_key(cfg: CN, key: str, where: str, fix: str) -> None:
    """A ConfigError for a `key` that `cfg` does not have, with the closest known key."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            close = difflib.get_close_matches(key, _leaf_keys(cfg), n=1, cutoff=0.8)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{where}unknown config key {key}{hint}; {fix}")
        node = node[part]


def _lookup(node: CN, key: str):
    for part in key.split("."):
        node = node[part]
    return node


def _assign(cfg: CN, key: str, raw, where: str, fix: str) -> None:
    """Set the known leaf `key` of `cfg` to `raw` (yaml or command-line text, decoded as yacs
    does) in the type of its default; a ConfigError for a group of keys or a value of another
    type."""
    *parents, name = key.split(".")
    node = _lookup(cfg, ".".join(parents)) if parents else cfg
    if isinstance(node[name], CN):
        raise ConfigError(f"{where}{key} is a group of keys, not a key; {fix}")
    value, problem = typed_value(node[name], CN._decode_cfg_value(raw))
    if problem is not None:
        raise ConfigError(f"{where}{key}: {problem}; {fix}")
    node[name] = value


def load_config(config_file: str | None = None, opts: Sequence[str] = ()) -> CN:
    """Defaults <- yaml file (and its `_BASE_` chain) <- `KEY VALUE` pairs.

    Raises a one-line ConfigError for a missing or malformed file, for unknown keys (naming the
    closest known key: "did you mean ..."), for values of the wrong type and for values outside
    their key's choices or range or inconsistent with other keys (`validate_config`).
    """
    cfg = get_cfg_defaults()
    sources: dict[str, str] = {}
    if config_file:
        merge_config_file(cfg, config_file, sources=sources)
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"overrides must be KEY VALUE pairs, got {' '.join(opts)}; "
                              "give a value for every key")
        for key, raw in zip(opts[0::2], opts[1::2]):
            _check_key(cfg, str(key), "bad override: ", "fix that KEY VALUE pair")
            _assign(cfg, str(key), raw, "bad override: ", "fix that KEY VALUE pair")
        sources.update((str(key), "the KEY VALUE overrides") for key in opts[0::2])
    validate_config(cfg, sources)
    return cfg
