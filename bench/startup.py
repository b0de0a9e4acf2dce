"""How long the text-only commands take to start and answer: ``medclassify --help``, ``train --help``,
``datasets`` and ``recipes``, each run N times in a fresh interpreter, and which heavy packages
(torch, scikit-learn, medmnist) each one imported.

    python bench/startup.py                      # this checkout
    python bench/startup.py --baseline 4ad982b   # and, side by side, the same commands at that commit

The baseline runs from a temporary git worktree of the commit, with its ``src`` first on
PYTHONPATH and the same interpreter and packages. Prints JSON: per checkout and command, the
median and the slowest wall time in seconds, and the heavy packages imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["--help"], ["train", "--help"], ["datasets"], ["recipes"])
HEAVY = ("torch", "sklearn", "medmnist")
REPO = Path(__file__).resolve().parent.parent
# runs the CLI in-process and reports which heavy top-level packages it imported
PROBE = (
    "import sys, contextlib, io\nfrom medclassify.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n        main(sys.argv[1:])\n    except SystemExit:\n        pass\n"
    f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
)


def measure(src: Path, runs: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    results = {}
    for command in COMMANDS:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "medclassify", *command], env=env, capture_output=True, check=False)
            times.append(time.perf_counter() - started)
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, *command], env=env, capture_output=True, text=True, check=True
        )
        results[" ".join(command)] = {
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "heavy_imports": json.loads(probe.stdout.strip().splitlines()[-1].replace("'", '"')),
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--baseline", metavar="COMMIT", help="also measure this commit, from a temporary git worktree")
    args = parser.parse_args()
    report = {
        "python": sys.version.split()[0],
        "runs": args.runs,
        "checkouts": {"current": measure(REPO / "src", args.runs)},
    }
    if args.baseline:
        with tempfile.TemporaryDirectory() as scratch:
            tree = Path(scratch) / "baseline"
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
                capture_output=True,
                check=True,
            )
            try:
                report["checkouts"][args.baseline] = measure(tree / "src", args.runs)
            finally:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    capture_output=True,
                    check=False,
                )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
