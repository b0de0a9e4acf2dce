"""Atomic file writes: a reader never sees a half-written file, an interrupted write loses nothing."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import OutputError, first_line

LOCK_NAME = ".medclassify.lock"
# Probabilities in CSV records: 9 significant digits read back to the same float32, so that a metric
# computed from a record equals the one the run computed.
PROBABILITY_FORMAT = ".9g"


def probability_columns(class_names: list[str]) -> list[str]:
    """The one naming of per-class probability columns in every CSV medclassify writes."""
    return [f"prob_{name}" for name in class_names]


def cannot_write(path: str | os.PathLike, exc: OSError) -> OutputError:
    """One line naming the path and the operating system's reason (e.g. 'No space left on device')."""
    if isinstance(exc, FileExistsError):  # mkdir met a file where a folder belongs
        reason = os.strerror(errno.ENOTDIR)
    else:
        reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(f"{path}: cannot write ({reason})")


def make_folder(folder: str | os.PathLike, for_path: str | os.PathLike | None = None) -> Path:
    """``folder`` and its parents; an error names ``for_path`` (what was to be written) if given."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cannot_write(for_path or folder, exc) from None
    return folder


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds. An
    operating-system error while writing becomes one :class:`OutputError` line naming ``path``."""
    path = Path(path)
    make_folder(path.parent, for_path=path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise cannot_write(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold ``folder`` for one medclassify process: a lock file with PID, host and command, created
    exclusively. A lock left by a process of this host that no longer runs is taken over with a
    warning; any other is an :class:`OutputError` naming its holder. A folder made here and still
    empty at the end (the command failed before writing) is removed again."""
    folder = Path(folder)
    created = not folder.exists()
    make_folder(folder)
    path = folder / LOCK_NAME
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _holder(path)
            if (
                holder.get("host") == record["host"]
                and isinstance(holder.get("pid"), int)
                and not _alive(holder["pid"])
            ):
                warnings.warn(
                    f"{path}: removing the lock of PID {holder['pid']} ({holder.get('command')}), which no longer runs",
                    stacklevel=3,
                )
                path.unlink(missing_ok=True)
                continue
            who = f"{holder.get('command', 'medclassify')} PID {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')}"
            raise OutputError(
                f"{folder} is in use by another medclassify process ({who}); wait for it to finish, "
                f"or delete {path} if that process is gone"
            ) from None
        except OSError as exc:
            raise cannot_write(path, exc) from None
    else:
        raise OutputError(f"{path}: could not take the lock")
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    try:
        yield
    finally:
        if _holder(path).get("pid") == record["pid"]:
            path.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON; store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically; NaN and infinity become null."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a header and rows as CSV atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def file_md5(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """The hex MD5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


CONNECT_SECONDS = 5.0  # how long a service is given to accept a connection before a command gives up


def connection_refused(host: str, port: int, seconds: float = CONNECT_SECONDS) -> str | None:
    """Why ``host:port`` does not accept a TCP connection within ``seconds``, or None when it does:
    services whose own clients retry for minutes are checked this way first."""
    try:
        with socket.create_connection((host, port), timeout=seconds):
            return None
    except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
        return first_line(exc)
