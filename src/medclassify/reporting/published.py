"""Published test results on the official MedMNIST splits (``published.json``), shown in a report
beside the measured rows and labelled as not measured here. Each row names its source; the file
says where each source was transcribed from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files


@dataclass(frozen=True)
class PublishedResult:
    """One published test result (not measured here) and the source it was transcribed from."""

    dataset: str
    size: int  # the MedMNIST image size the method was trained on
    method: str
    acc: float
    auc: float
    citation: str


@cache
def _published() -> tuple[PublishedResult, ...]:
    document = json.loads((files("medclassify.reporting") / "published.json").read_text(encoding="utf-8"))
    sources = document["sources"]
    return tuple(
        PublishedResult(r["dataset"], r["size"], r["method"], r["acc"], r["auc"], sources[r["source"]]["citation"])
        for r in document["results"]
    )


def published_results(dataset: str, size: int) -> list[PublishedResult]:
    """The published results for one MedMNIST dataset at one image size, in the source's order."""
    return [r for r in _published() if r.dataset == dataset and r.size == size]
