"""Published test results on the official MedMNIST splits, shown beside the measured rows (and by
``medclassify published``) and labelled as not measured here.

Two transcribed tables ship in ``published_data/``, unchanged, each row naming where it was read:

* ``medmnist_v2.csv``: MedMNIST v2's Table 3 (Yang et al., Scientific Data 2023) as the project page
  shows it, 2D part, fractions. ``size`` 224 means the 28 px images enlarged to 224 px. Older page
  versions are extra rows of their own ``source``; only the current page's rows are used.
* ``medmnist_plus.csv``: the MedMNIST+ benchmark (Doerrich et al., Scientific Reports 2025), 12
  datasets x 10 models x end-to-end / linear probing / kNN x 28-224 px, percent, mean of 3 seeds; its
  networks see 28 px images zero-padded to 224 px.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

V2 = "v2"
PLUS = "plus"
SOURCES = (V2, PLUS)
V2_CURRENT = "medmnist.com project page (MedMNIST v2 Table 3 as shown on site, current)"
CITATIONS = {
    V2: "J. Yang, R. Shi, D. Wei et al., MedMNIST v2, Scientific Data 10:41 (2023), Table 3 as shown on medmnist.com",
    PLUS: "S. Doerrich, F. Di Salvo, J. Brockmann, C. Ledig, Rethinking model prototyping through the MedMNIST+ "
    "dataset collection, Scientific Reports 15:7669 (2025)",
}
TRAINING_NAMES = {"endToEnd": "end-to-end", "linearProbing": "linear probing", "kNN": "kNN (k = 11)"}


@dataclass(frozen=True)
class PublishedResult:
    """One published test result (not measured here), as fractions."""

    source: str  # V2 or PLUS
    dataset: str  # the MedMNIST flag, e.g. bloodmnist
    title: str  # the dataset's name as its papers write it, e.g. BloodMNIST
    size: int  # the MedMNIST images the method was given (28, 64, 128, 224)
    trained_size: int  # the size of the images the network saw (v2's "(224)": 28 px enlarged; MedMNIST+: padded)
    model: str
    training: str  # end-to-end, linear probing, kNN (k = 11); v2: as published
    acc: float
    auc: float | None  # kNN has no AUC in MedMNIST+
    where_read: str

    @property
    def method(self) -> str:
        """The model, with its training scheme for MedMNIST+."""
        return self.model if self.source == V2 else f"{self.model}, {self.training}"

    @property
    def citation(self) -> str:
        return CITATIONS[self.source]


def _rows(name: str) -> list[dict]:
    text = (files("medclassify.reporting") / "published_data" / name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _flag(dataset: str) -> str:
    return dataset.lower()


@cache
def _published() -> tuple[PublishedResult, ...]:
    results = []
    for source, name, scale in ((V2, "medmnist_v2.csv", 1.0), (PLUS, "medmnist_plus.csv", 100.0)):
        cells: dict[tuple, dict] = {}
        for row in _rows(name):
            if source == V2 and row["source"] != V2_CURRENT:
                continue
            key = (row["dataset"], int(row["size"]), row["model"], row.get("training", ""))
            cells.setdefault(key, {"where_read": row["where_read"]})[row["metric"]] = round(
                float(row["value"]) / scale, 6
            )
        for (dataset, size, model, training), values in cells.items():
            if dataset.startswith("Average"):
                continue
            # v2's "224" rows are the 28 px images enlarged: the data are the 28 px files
            images = 28 if source == V2 else size
            results.append(
                PublishedResult(
                    source,
                    _flag(dataset),
                    dataset,
                    images,
                    size if source == V2 else 224 if size == 28 else size,
                    model,
                    TRAINING_NAMES.get(training, training) if source == PLUS else "as published",
                    values["ACC"],
                    values.get("AUC"),
                    values["where_read"],
                )
            )
    return tuple(results)


def published_results(
    dataset: str, size: int | None = None, sources: tuple[str, ...] = SOURCES
) -> list[PublishedResult]:
    """Every published result for one MedMNIST dataset (at the image ``size`` given), in the sources' order."""
    return [
        r
        for r in _published()
        if r.dataset == _flag(dataset) and (size is None or r.size == size) and r.source in sources
    ]


def report_rows(dataset: str, size: int) -> list[PublishedResult]:
    """What a report shows beside a study's rows at one dataset and size: MedMNIST v2's rows, and
    MedMNIST+'s best end-to-end row and best row of any training scheme (by accuracy)."""
    chosen = published_results(dataset, size, (V2,))
    plus = published_results(dataset, size, (PLUS,))
    end_to_end = [r for r in plus if r.training == TRAINING_NAMES["endToEnd"]]
    for pool in (end_to_end, plus):
        best = max(pool, key=lambda r: r.acc, default=None)
        if best is not None and best not in chosen:
            chosen.append(best)
    return chosen
