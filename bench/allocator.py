"""The training step with glibc's default malloc thresholds against the ones training sets
(``runtime.environment.configure_allocator``: blocks up to 32 MiB from the heap), each in fresh
processes, alternating, so that a drifting machine favours neither.

    python bench/allocator.py [--models paper-cnn bn-cnn] [--rounds 5]

Prints JSON: training images/s (batch 32, 28 px, random images, Adam) per setting, the median over
rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time


def worker(model_name: str, configured: bool) -> None:
    import torch

    from medclassify.models import create_model
    from medclassify.runtime.environment import configure_allocator

    if configured:
        configure_allocator()
    torch.manual_seed(0)
    model = create_model(model_name, 3, 8, 28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()
    images, labels = torch.randn(32, 3, 28, 28), torch.randint(0, 8, (32,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        criterion(model(images), labels).backward()
        optimizer.step()

    for _ in range(20):
        step()
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(50):
            step()
        best = min(best, time.perf_counter() - started)
    print(50 * 32 / best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["paper-cnn", "bn-cnn"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker[0], args.worker[1] == "configured")
    results = []
    for name in args.models:
        rates = {"glibc_default": [], "configured": []}
        for _ in range(args.rounds):
            for setting in rates:
                out = subprocess.run(
                    [sys.executable, __file__, "--worker", name, setting], capture_output=True, text=True, check=True
                )
                rates[setting].append(float(out.stdout.split()[-1]))
        medians = {k: round(statistics.median(v), 1) for k, v in rates.items()}
        results.append(
            {
                "model": name,
                **medians,
                "ratio": round(medians["configured"] / medians["glibc_default"], 3),
                "rounds": rates,
            }
        )
    print(
        json.dumps(
            {"benchmark": "allocator", "unit": "training images/s", "machine": platform.machine(), "results": results},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
