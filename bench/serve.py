"""Load on the HTTP API: 'medclassify serve' on loopback, a fixed number of concurrent clients
posting one image each per request for a fixed time, with the micro-batcher on (--max-batch 64)
and off (--max-batch 1) in the same run.

    python bench/serve.py                          # 60 s per setting, 16 clients, a demo model
    python bench/serve.py --run runs/blood28 --image cell.png --seconds 60 --clients 32

Prints JSON per setting: requests/s, latency p50/p95/p99 in ms, errors (any non-200 answer or failed
connection; must be 0). Without --run, a one-epoch demo run is trained and exported to ONNX in a
temporary folder (the served model then runs with ONNX Runtime, as 'predict' would).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np
from PIL import Image

from medclassify import __version__


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_run(folder: Path) -> tuple[Path, Path]:
    env = {**os.environ, "MEDCLASSIFY_DATA": str(folder / "data")}
    command = [sys.executable, "-m", "medclassify"]
    subprocess.run(
        [*command, "demo", "--out", str(folder / "demo"), "--epochs", "1", "--quiet"],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run([*command, "export", str(folder / "demo")], check=True, env=env, capture_output=True)
    with np.load(folder / "data" / "synthcells.npz") as archive:
        Image.fromarray(archive["test_images"][0]).save(folder / "cell.png")
    return folder / "demo", folder / "cell.png"


async def load(url: str, image: bytes, clients: int, seconds: float, explain: bool) -> dict:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(session: httpx2.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                answer = await session.post(
                    f"{url}/v1/predict",
                    params={"explain": str(explain).lower()},
                    files=[("files", ("image.png", image, "image/png"))],
                )
                ok = answer.status_code == 200 and answer.json()["predictions"]
            except httpx2.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    started = time.perf_counter()
    limits = httpx2.Limits(max_connections=clients)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "latency_ms": {f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
        "errors": errors,
    }


def serve_and_load(run: Path, image: bytes, max_batch: int, args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medclassify",
            "serve",
            f"bench={run}",
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):
            try:
                httpx2.get(f"{url}/health", timeout=1)
                break
            except httpx2.HTTPError:
                time.sleep(0.25)
        result = asyncio.run(load(url, image, args.clients, args.seconds, args.explain))
        metrics = httpx2.get(f"{url}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("medclassify_predictions_total{")
    )
    return {"max_batch": max_batch, **result, "server_counted_predictions": int(served)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run folder, .pt or .onnx to serve (default: a one-epoch demo run, exported)")
    parser.add_argument("--image", help="image to post (default: a synthcells test image)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per setting (default: 60)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: 16)")
    parser.add_argument("--explain", action="store_true", help="ask for Grad-CAM overlays too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run, image = (Path(args.run), Path(args.image)) if args.run else demo_run(Path(tmp))
        data = image.read_bytes()
        settings = [serve_and_load(run, data, max_batch, args) for max_batch in (64, 1)]
    print(
        json.dumps(
            {
                "benchmark": "serve",
                "clients": args.clients,
                "explain": args.explain,
                "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
                "versions": {"medclassify": __version__, "python": platform.python_version()},
                "settings": settings,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
