"""Cost per image from MEASURED seconds and a price list; hardware that was not measured stays unpriced.

    cost per image  = seconds per image x (USD per hour / 3600)
    images per $1   = 1 / cost per image

No speed-up factors, no "GPU X is about 2x GPU Y": a price row whose hardware did not run in this
benchmark is printed as "not measured".
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PRICES = Path(__file__).with_name("prices.toml")
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Price:
    name: str
    match: tuple[str, ...]  # words that must all appear in the measured hardware's description
    usd_per_hour: float
    source: str
    date: str
    billing: str = ""

    def matches(self, hardware: str) -> bool:
        return all(_has_word(hardware, word) for word in self.match)


@dataclass(frozen=True)
class Workload:
    """One measured thing to price, e.g. 'pipeline 546x729' taking 92.1 s on 'cpu: AMD EPYC, 2 cores'."""

    label: str
    hardware: str
    seconds: float


@dataclass(frozen=True)
class CostRow:
    price: Price
    workload_label: str
    seconds: float | None  # None: this price's hardware was not measured
    usd_per_image: float | None
    images_per_usd: float | None

    def cells(self) -> list[str]:
        if self.seconds is None or self.usd_per_image is None or self.images_per_usd is None:
            return [
                self.price.name,
                f"{self.price.usd_per_hour:.4f}",
                self.workload_label,
                *[NOT_MEASURED] * 3,
            ]
        return [
            self.price.name,
            f"{self.price.usd_per_hour:.4f}",
            self.workload_label,
            f"{self.seconds:.2f}",
            f"{self.usd_per_image:.6f}",
            f"{self.images_per_usd:,.0f}",
        ]


class PriceListError(ValueError):
    """The price list file is missing, unreadable or lacks a required field (message says which)."""


def load_prices(path: Path | None = None) -> list[Price]:
    path = path or DEFAULT_PRICES
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PriceListError(f"cannot read price list {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise PriceListError(f"price list {path} is not valid TOML: {error}") from None
    rows = data.get("price", [])
    if not rows:
        raise PriceListError(f"price list {path} has no [[price]] entries")
    return [_parse_price(row, path, index) for index, row in enumerate(rows, start=1)]


def _parse_price(row: dict[str, Any], path: Path, index: int) -> Price:
    missing = [key for key in ("name", "match", "usd_per_hour", "source", "date") if key not in row]
    if missing:
        raise PriceListError(f"{path}: price #{index} lacks {', '.join(missing)}")
    usd_per_hour = float(row["usd_per_hour"])
    if not math.isfinite(usd_per_hour) or usd_per_hour <= 0:
        raise PriceListError(f"{path}: price #{index} ({row['name']}) has a non-positive usd_per_hour")
    return Price(
        name=str(row["name"]),
        match=tuple(str(word) for word in row["match"]),
        usd_per_hour=usd_per_hour,
        source=str(row["source"]),
        date=str(row["date"]),
        billing=str(row.get("billing", "")),
    )


def cost_per_image(seconds: float, usd_per_hour: float) -> float:
    return seconds * usd_per_hour / 3600.0


def images_per_dollar(seconds: float, usd_per_hour: float) -> float:
    return 1.0 / cost_per_image(seconds, usd_per_hour)


def cost_table(prices: list[Price], workloads: list[Workload]) -> list[CostRow]:
    """One row per (price, measured workload on that price's hardware); one "not measured" row per price
    whose hardware ran nothing."""
    rows: list[CostRow] = []
    for price in prices:
        measured = [work for work in workloads if price.matches(work.hardware)]
        if not measured:
            rows.append(CostRow(price, "-", None, None, None))
            continue
        for work in measured:
            rows.append(
                CostRow(
                    price=price,
                    workload_label=work.label,
                    seconds=work.seconds,
                    usd_per_image=cost_per_image(work.seconds, price.usd_per_hour),
                    images_per_usd=images_per_dollar(work.seconds, price.usd_per_hour),
                )
            )
    return rows


COST_HEADER = ["machine", "USD/hour", "workload", "s/image", "USD/image", "images per $1"]


def cost_markdown(rows: list[CostRow]) -> str:
    lines = ["| " + " | ".join(COST_HEADER) + " |", "|" + "---|" * len(COST_HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    sources = {(row.price.name, row.price.source, row.price.date) for row in rows}
    lines.append("")
    lines.append("Price sources:")
    lines += [f"- {name}: {source} ({date})" for name, source, date in sorted(sources)]
    return "\n".join(lines)


def _has_word(text: str, word: str) -> bool:
    # Whole-word match, so "A10" does not claim an "A10G" measurement.
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text) is not None
