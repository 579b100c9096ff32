"""Fixed-width text tables of metrics (markdown-compatible, so they paste into docs)."""
from __future__ import annotations

from collections.abc import Mapping

_COLUMNS = (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75"), ("APs", "APs"), ("APm", "APm"),
            ("APl", "APl"))


def _cell(value) -> str:
    """A percentage with 2 decimals; '-' for a missing or undefined (negative) value."""
    if value is None or float(value) < 0:
        return "-"
    return f"{float(value):.2f}"


def _render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def format_table(metrics: Mapping) -> str:
    """AP | AP50 | AP75 | APs | APm | APl, plus a VOC mAP column when `VOC_mAP` is present."""
    columns = list(_COLUMNS) + ([("VOC mAP", "VOC_mAP")] if "VOC_mAP" in metrics else [])
    return _render([title for title, _ in columns], [[_cell(metrics.get(k)) for _, k in columns]])


def format_per_class(per_class: Mapping[str, float | None]) -> str:
    """One row per class with its AP ('-' for a class without ground truth)."""
    return _render(["class", "AP"], [[name, _cell(ap)] for name, ap in per_class.items()])
