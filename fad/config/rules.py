"""Value rules written where a default is set: `_C.X.Y = choice("a", ("a", "b"))  # comment`.

`choice`, `pattern` and `in_range` (with the shorthands `positive`, `non_negative`, `at_least`,
`probability`, `fraction`) return a `Ruled` (default + rule); a `Node` (the CfgNode of the
defaults files) stores the default under the key and keeps the rule beside it. `collect_rules`
gathers them as {"X.Y": rule}; `fad.config.validate` checks a loaded config against them.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from yacs.config import CfgNode

_RULES = "__rules__"


class Rule:
    """A check of one key's value: `problem(value)` says what is wrong, or None."""

    def problem(self, value: Any) -> str | None:
        """None when `value` is allowed, else the reason ("... is not one of ...")."""
        raise NotImplementedError


@dataclass(frozen=True)
class OneOf(Rule):
    """The value is one of `choices`."""

    choices: tuple

    def problem(self, value: Any) -> str | None:
        if value in self.choices:
            return None
        return f"{value!r} is not one of {_join(self.choices)}{_did_you_mean(value, self.choices)}"


@dataclass(frozen=True)
class Matches(Rule):
    """The value is a string matching `regex` in full; `text` lists the forms for the user and
    `examples` are the literal forms offered as "did you mean"."""

    regex: str
    text: str
    examples: tuple[str, ...] = ()

    def problem(self, value: Any) -> str | None:
        if isinstance(value, str) and re.fullmatch(self.regex, value):
            return None
        return f"{value!r} is not one of {self.text}{_did_you_mean(value, self.examples)}"


@dataclass(frozen=True)
class Range(Rule):
    """A number (or, for a tuple value, every entry) within `low`..`high` (None = unbounded;
    `*_open`: the bound itself is excluded); `lengths`: the allowed entry counts of a tuple."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    lengths: tuple[int, ...] | None = None

    def bounds(self) -> str:
        """The allowed range in words: "> 0", "in [0, 1]", ">= 1"."""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_num(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                f"{')' if self.high_open else ']'}")

    def _inside(self, x: float) -> bool:
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def problem(self, value: Any) -> str | None:
        if isinstance(value, (tuple, list)):
            if not all(isinstance(x, (int, float)) for x in value):
                return f"{tuple(value)} is not a tuple of numbers"
            if self.lengths is not None and len(value) not in self.lengths:
                counts = " or ".join(str(n) for n in self.lengths)
                entries = "entry" if len(value) == 1 else "entries"
                return f"{tuple(value)} has {len(value)} {entries}; must have {counts}"
            if all(self._inside(x) for x in value):
                return None
            return f"{tuple(value)} is out of range; every entry must be {self.bounds()}"
        if self._inside(value):
            return None
        return f"{value} is out of range; must be {self.bounds()}"


@dataclass(frozen=True)
class Ruled:
    """A default with its rule, as the defaults files write it; `Node` unpacks it."""

    default: Any
    rule: Rule


class Node(CfgNode):
    """A CfgNode that accepts `Ruled` values: the key gets the default, the node keeps the rule."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__[_RULES] = {}

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, Ruled):
            self.__dict__[_RULES][name] = value.rule
            value = value.default
        super().__setattr__(name, value)


def collect_rules(cfg: CfgNode, prefix: str = "") -> dict[str, Rule]:
    """{full dotted key: rule} of every ruled key below `cfg`."""
    rules = {prefix + name: rule for name, rule in cfg.__dict__.get(_RULES, {}).items()}
    for name, value in cfg.items():
        if isinstance(value, CfgNode):
            rules.update(collect_rules(value, f"{prefix}{name}."))
    return rules


def choice(default: Any, choices: tuple) -> Ruled:
    """`default`, which must stay one of `choices`."""
    if default not in choices:
        raise ValueError(f"default {default!r} is not one of its choices {choices}")
    return Ruled(default, OneOf(tuple(choices)))


def pattern(default: str, regex: str, text: str, examples: tuple[str, ...] = ()) -> Ruled:
    """`default`, a string that must match `regex` (described to the user as `text`)."""
    return Ruled(default, Matches(regex, text, examples))


def in_range(default: Any, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False,
             lengths: tuple[int, ...] | None = None) -> Ruled:
    """`default`, a number (every entry of a tuple) within [low, high] (`*_open`: excluded)."""
    rule = Range(low, high, low_open, high_open, lengths)
    if rule.problem(default) is not None:
        raise ValueError(f"default {default!r}: {rule.problem(default)}")
    return Ruled(default, rule)


def positive(default: Any, lengths: tuple[int, ...] | None = None) -> Ruled:
    """`default`, which must stay > 0 (every entry of a tuple)."""
    return in_range(default, 0, low_open=True, lengths=lengths)


def non_negative(default: Any) -> Ruled:
    """`default`, which must stay >= 0."""
    return in_range(default, 0)


def at_least(default: Any, low: float) -> Ruled:
    """`default`, which must stay >= `low`."""
    return in_range(default, low)


def probability(default: float) -> Ruled:
    """`default`, which must stay in [0, 1]."""
    return in_range(default, 0, 1)


def fraction(default: float) -> Ruled:
    """`default`, which must stay in (0, 1)."""
    return in_range(default, 0, 1, low_open=True, high_open=True)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _join(choices: tuple) -> str:
    return ", ".join(str(c) for c in choices)


def _did_you_mean(value: Any, choices: tuple) -> str:
    """" (did you mean X?)" with the closest choice (ignoring case), or ""."""
    lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1, cutoff=0.6)
    return f" (did you mean {lower[close[0]]}?)" if close else ""
