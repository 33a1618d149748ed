"""Output helpers shared by the commands: plain-text tables and percentiles."""

from __future__ import annotations

from typing import List, Optional, Sequence


def format_table(headers: List[str], rows: List[List[str]], left: Sequence[int] = (0,)) -> List[str]:
    """Columns padded to their widest cell: those in ``left`` left-aligned, numbers right-aligned."""
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: List[str]) -> str:
        padded = [str(cell).ljust(width) if i in left else str(cell).rjust(width)
                  for i, (cell, width) in enumerate(zip(cells, widths))]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in rows)]


def percentile(values: Sequence[float], percent: float) -> Optional[float]:
    """The nearest-rank ``percent`` percentile of ``values``, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * percent / 100))]
