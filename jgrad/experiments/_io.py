"""Writing results: atomic JSON and figures, with the provenance of every run.

A crash or Ctrl-C mid-write never leaves a half-written file where a good one was: each
file is written to a temporary name in the same folder and moved into place with
``os.replace``, which is atomic on POSIX and Windows. The file gets the mode a plain
``open(path, "w")`` would give it (``0o666`` less the process umask), not the owner-only
mode of the temporary file, so colleagues on a shared machine can read results as usual.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "save_json", "save_figure", "provenance", "to_jsonable"]


_PROC_STATUS = "/proc/self/status"
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux 4.7+
    lists it in /proc/self/status); elsewhere set and restored under a lock."""
    try:
        with open(_PROC_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_path)`` then moves ``tmp_path`` onto ``path`` atomically.

    Creates missing parent folders. The file's mode is ``0o666 & ~umask`` (what
    ``open(path, "w")`` gives a new file: ``0o644`` under the common umask ``0o022``).
    On any exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """Converts arrays and numpy scalars to lists/floats; non-finite floats to strings
    ("inf", "-inf", "nan") so the file stays strict JSON."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "__array__") and not isinstance(obj, (str, bytes)):
        arr = np.asarray(obj)
        return to_jsonable(arr.tolist()) if arr.ndim else to_jsonable(arr.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Writes ``obj`` as indented strict JSON, atomically."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def save_figure(fig, path: str | os.PathLike, **savefig_kw) -> Path:
    """Saves a matplotlib figure atomically (format from the suffix of ``path``)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kw))


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def provenance(seed: int | None = None) -> dict[str, Any]:
    """Versions, platform, device and git revision to store next to every result."""
    import jax

    import jgrad

    return {
        "jgrad": jgrad.__version__,
        "jax": jax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "git_revision": _git_revision(),
        "seed": seed,
    }
