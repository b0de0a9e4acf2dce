"""Disk space of a medclassify install and of what each extra adds, measured in this environment.

    python bench/install_size.py

Walks medclassify's requirements (and each extra's) through the distributions installed here,
adds up the size of every file each distribution installed, and prints JSON: the base install, the
PyTorch part of it (torch, torchvision, and the CUDA libraries and Triton that the default Linux
wheels pull in), and the size each extra adds beyond the base. The figures are this environment's:
other platforms, Python versions and wheel variants (PyTorch's CPU-only build) differ.
"""

from __future__ import annotations

import json
import platform
import re
import sys
from importlib import metadata

from packaging.requirements import Requirement

PYTORCH_PARTS = re.compile(r"^(torch|torchvision|triton|nvidia-.*)$")


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """The distribution and every distribution it requires (with ``extras``), as installed here."""
    seen: set[str] = set()
    pending = [(name, extras)]
    while pending:
        current, wanted = pending.pop()
        try:
            dist = metadata.distribution(current)
        except metadata.PackageNotFoundError:
            continue  # a requirement whose marker does not apply here, or not installed
        key = normalised(dist.metadata["Name"])
        if key in seen and not wanted:
            continue
        seen.add(key)
        for line in dist.requires or []:
            requirement = Requirement(line)
            environments = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environments):
                pending.append((requirement.name, tuple(requirement.extras)))
    return seen


def installed_bytes(name: str) -> int:
    dist = metadata.distribution(name)
    total = 0
    for file in dist.files or []:
        path = file.locate()
        if path.is_file():
            total += path.stat().st_size
    return total


def megabytes(names: set[str]) -> float:
    return round(sum(installed_bytes(n) for n in names) / 1e6, 1)


def main() -> None:
    base = closure("medclassify")
    pytorch = {n for n in base if PYTORCH_PARTS.match(n)}
    extras = metadata.distribution("medclassify").metadata.get_all("Provides-Extra") or []
    added = {extra: closure("medclassify", (extra,)) - base for extra in extras}
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {platform.system()}, Python {sys.version.split()[0]}",
                "torch": metadata.version("torch"),
                "base_mb": megabytes(base),
                "base_distributions": len(base),
                "pytorch_mb": megabytes(pytorch),
                "pytorch_parts": sorted(pytorch),
                "extras_add_mb": {extra: megabytes(names) for extra, names in added.items()},
                "extras_add": {extra: sorted(names) for extra, names in added.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
