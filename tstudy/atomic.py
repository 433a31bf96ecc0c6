"""Atomic file writes: write a temporary file in the same folder, fsync, rename over the target.

A reader never sees half a file; a crash leaves the old file or the new one, plus at worst a
stray ``.tmp-*`` file that the next write ignores.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda p: p.write_bytes(data))


def json_bytes(obj: Any) -> bytes:
    """The bytes :func:`write_json` writes for ``obj``."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, json_bytes(obj))


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def write_parquet(path: str | os.PathLike, df: Any) -> None:
    atomic_write(path, lambda p: df.to_parquet(p, index=False))
