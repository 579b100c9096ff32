"""Name -> object tables whose objects are imported only when asked for.

    DETECTORS = Registry("MODEL.META_ARCHITECTURE", ConfigError, {
        "FCOS": "fad.modeling.fcos:build_fcos",       # "module:attribute"
        ...})
    DETECTORS.get("FCOS")       # imports fad.modeling.fcos, returns build_fcos
    DETECTORS.names()           # ("FCOS", ...): no import

A target without ":attribute" is the module itself. An unknown name raises the registry's
`FadError` subclass with one line that names the known ones (and the closest, if any).
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping

from fad.errors import FadError


class Registry:
    """Names of one kind of component (`what`, as the user writes it: a config key, a tool
    argument) mapped to "module" or "module:attribute" targets, resolved lazily."""

    def __init__(self, what: str, error: type[FadError], targets: Mapping[str, str]):
        self.what, self.error, self._targets = what, error, dict(targets)

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted (imports nothing)."""
        return tuple(sorted(self._targets))

    def get(self, name: str) -> object:
        """Import and return the object registered as `name`; the registry's error, naming the
        known names, if there is none."""
        if name not in self._targets:
            raise self.error(self._unknown(name))
        module_name, _, attr = self._targets[name].partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module

    def _unknown(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), self._targets, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.what} {name!r}{hint}; choose one of {', '.join(self.names())}"
