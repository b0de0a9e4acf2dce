"""``medclassify published``: the published MedMNIST results for a dataset."""

from __future__ import annotations

import argparse

from ..errors import MedclassifyError
from .common import Command


def add_options(parser: argparse.ArgumentParser) -> None:
    from ..data import MEDMNIST_SIZES

    parser.add_argument("dataset", help="a MedMNIST 2D dataset, e.g. bloodmnist")
    parser.add_argument(
        "--size", type=int, choices=MEDMNIST_SIZES, help="only results on the images of this size (default: all)"
    )
    parser.add_argument(
        "--source",
        nargs="+",
        choices=("v2", "plus"),
        default=["v2", "plus"],
        help="v2: MedMNIST v2's Table 3; plus: the MedMNIST+ benchmark (default: both)",
    )


def run(args: argparse.Namespace) -> int:
    from ..data import dataset_catalog
    from ..reporting.published import CITATIONS, published_results

    catalog = dataset_catalog()
    name = args.dataset.lower()
    if name not in catalog or catalog[name].synthetic:
        known = ", ".join(n for n, info in catalog.items() if not info.synthetic)
        raise MedclassifyError(f"{args.dataset}: not a MedMNIST 2D dataset; choose one of {known}")
    rows = published_results(name, args.size, tuple(args.source))
    if not rows:
        raise MedclassifyError(f"no published result for {name} at {args.size} px in {', '.join(args.source)}")
    rows.sort(key=lambda r: (r.source, r.size, -r.acc))
    print(f"{rows[0].title}: published test results, not measured here (fractions)")
    print(f"{'source':<7}{'images':>7}{'network':>9}  {'model':<26}{'training':<17}{'ACC':>7}{'AUC':>7}")
    for r in rows:
        auc = "-" if r.auc is None else f"{r.auc:.4f}"
        training = r.training if r.source == "plus" else "-"
        print(f"{r.source:<7}{r.size:>7}{r.trained_size:>9}  {r.model:<26}{training:<17}{r.acc:>7.4f}{auc:>7}")
    print("\nimages: the MedMNIST files' size; network: the size the network saw (v2: 28 px enlarged to 224;")
    print("MedMNIST+: 28 px zero-padded to 224). Sources:")
    for source in dict.fromkeys(r.source for r in rows):
        print(f"  {source}: {CITATIONS[source]}")
    return 0


COMMAND = Command(
    "print the published MedMNIST v2 and MedMNIST+ test results for a dataset, to compare with yours",
    "examples:\n  medclassify published bloodmnist --size 64\n  medclassify published pneumoniamnist --source v2\n",
    add_options,
    run,
)
