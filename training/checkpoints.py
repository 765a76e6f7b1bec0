"""Checkpoint files written atomically: a crash mid-save leaves the previous file, never a truncated one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from service.storage import atomic_write_bytes


def save_atomic(obj: Any, path: Path) -> Path:
    """torch.save `obj` to `path` through a temporary file + fsync + rename; returns `path`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
