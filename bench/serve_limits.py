"""What one hostile request costs the server: 'medclassify serve' on loopback, a fresh server per
attack, its peak resident memory (VmHWM) and the bytes it spooled to its temporary folder.

    python bench/serve_limits.py                   # a demo model, the three attacks below
    python bench/serve_limits.py --run runs/blood28 --dicom-mb 1500 --png-side 7000

Attacks: a Deflate-compressed DICOM holding a large zero-filled private element; 32 PNGs of
side x side pixels (each under the 50 MP per-image limit) in one request; one 300 MB upload part;
and, for the cost of what is allowed, 2 such PNGs with Grad-CAM overlays (explain=true).
Prints JSON per attack: HTTP status, seconds, the server's peak RSS and its idle RSS before the
request (MB), and the peak growth of the disk space in use where the server spools uploads (MB;
the machine's other writers count too, so read small figures as noise).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from serve import demo_run, free_port  # noqa: E402  (bench/serve.py, beside this file)

BOUNDARY = "medclassify-bench-boundary"


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def used_mb(folder: Path) -> float:
    """Bytes in use on the folder's file system: spooled uploads are unlinked temporary files,
    invisible in a listing but not on the disk."""
    stat = os.statvfs(folder)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize / 2**20


def deflated_dicom(megabytes: int) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.add_new(0x00091010, "OB", bytes(megabytes << 20))  # private element: zeros, inflated whole by a naive reader
    ds.PixelData = bytes(64)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[tuple[str, bytes]]) -> bytes:
    body = io.BytesIO()
    for name, data in parts:
        body.write(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        body.write(data)
        body.write(b"\r\n")
    body.write(f"--{BOUNDARY}--\r\n".encode())
    return body.getvalue()


def post_streamed(port: int, header: bytes, part_bytes: int, footer: bytes, query: str = "") -> tuple[int, str]:
    """POST a body of header + part_bytes zeros + footer in 1 MB chunks; stops sending when the
    server answers or closes."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.putrequest("POST", "/v1/predict" + query)
    connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
    connection.putheader("Content-Length", str(len(header) + part_bytes + len(footer)))
    connection.endheaders()
    try:
        connection.send(header)
        chunk = bytes(1 << 20)
        for _ in range(part_bytes >> 20):
            connection.send(chunk)
        connection.send(footer)
    except OSError:
        pass  # the server answered early and closed the connection
    try:
        answer = connection.getresponse()
        return answer.status, answer.read().decode(errors="replace")[:200]
    except OSError as exc:
        return 0, f"connection closed: {exc}"


def attack(run: Path, name: str, send) -> dict:
    port = free_port()
    spool = Path(tempfile.mkdtemp(prefix="serve-spool-"))
    server = subprocess.Popen(
        [sys.executable, "-m", "medclassify", "serve", str(run), "--port", str(port)],
        env={**os.environ, "TMPDIR": str(spool)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.25)
        idle = rss_mb(server.pid, "VmRSS")
        peak_spool, done, before = 0.0, threading.Event(), used_mb(spool)

        def watch() -> None:
            nonlocal peak_spool
            while not done.is_set():
                peak_spool = max(peak_spool, used_mb(spool) - before)
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.perf_counter()
        status, detail = send(port)
        seconds = time.perf_counter() - started
        done.set()
        watcher.join()
        return {
            "attack": name,
            "status": status,
            "detail": detail,
            "seconds": round(seconds, 2),
            "idle_rss_mb": round(idle),
            "peak_rss_mb": round(rss_mb(server.pid, "VmHWM")),
            "peak_spool_mb": round(peak_spool, 1),
        }
    finally:
        server.terminate()
        server.wait(timeout=30)
        subprocess.run(["rm", "-rf", str(spool)], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="run folder or model to serve (default: a one-epoch demo run)")
    parser.add_argument(
        "--dicom-mb", type=int, default=1024, help="size of the zero-filled element inside the deflated DICOM"
    )
    parser.add_argument("--png-side", type=int, default=7000, help="side of each of the 32 PNGs")
    parser.add_argument("--part-mb", type=int, default=300, help="size of the single oversized part")
    parser.add_argument(
        "--only",
        type=int,
        nargs="+",
        choices=(1, 2, 3, 4),
        help="run only these attacks (1: DICOM, 2: PNGs, 3: part, 4: allowed PNGs with Grad-CAM)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or demo_run(Path(scratch))[0]
        dicom = deflated_dicom(args.dicom_mb)
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((args.png_side, args.png_side), dtype=np.uint8)).save(buffer, format="PNG")
        png = buffer.getvalue()

        def send_body(body: bytes):
            return lambda port: post_streamed(port, body, 0, b"")

        header = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode() + b"\x89PNG\r\n\x1a\n"
        attacks = [
            (
                f"deflated DICOM, {len(dicom) / 2**20:.1f} MB holding {args.dicom_mb} MB of zeros",
                send_body(multipart([("bomb.dcm", dicom)])),
            ),
            (
                f"32 PNGs of {args.png_side}x{args.png_side} ({len(png) / 1e3:.0f} kB each) in one request",
                send_body(multipart([(f"{i}.png", png) for i in range(32)])),
            ),
            (
                f"one {args.part_mb} MB upload part",
                lambda port: post_streamed(port, header, args.part_mb << 20, f"\r\n--{BOUNDARY}--\r\n".encode()),
            ),
            (
                f"2 PNGs of {args.png_side}x{args.png_side} with explain=true (within the default limits)",
                lambda port: post_streamed(
                    port, multipart([(f"{i}.png", png) for i in range(2)]), 0, b"", "?explain=true"
                ),
            ),
        ]
        for number, (name, send) in enumerate(attacks, start=1):
            if args.only and number not in args.only:
                continue
            print(
                json.dumps({**attack(run, name, send), "machine": platform.machine(), "cpus": os.cpu_count()}),
                flush=True,
            )


if __name__ == "__main__":
    main()
