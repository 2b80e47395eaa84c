"""Atomic output: every file flareseg writes appears whole under its final name, or not at all.

One mechanism serves every writer (label maps, model weights, checkpoints, JSON, figures, caches):
:func:`atomic_output` yields a temporary path in the destination folder, named
``.<name>.<pid>-<random>.tmp<suffix>``; the writer fills it, an optional check reads it back, and a
rename publishes it. On any failure the temporary is removed and the error propagates.
:func:`remove_stale_temporaries` deletes the temporaries of processes that no longer run (an
interrupted write), never those of a live writer.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def _umask_mode() -> int:
    """The mode a plainly created file gets (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_name(path: Path) -> Path:
    """The temporary path a write of `path` uses: same folder, hidden, the writer's pid in the name."""
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> int:
    """Delete temporaries of `path` (or, for a folder, of every file in it) left by dead processes.

    Returns:
        The number of files removed. A live process's temporaries are kept.
    """
    path = Path(path)
    folder, name = (path, None) if path.is_dir() else (path.parent, path.name)
    if not folder.is_dir():
        return 0
    removed = 0
    for tmp in folder.iterdir():
        match = _TEMP_PATTERN.match(tmp.name)
        if match is None or (name is not None and match["name"] != name) or _pid_alive(int(match["pid"])):
            continue
        log.debug("removing a stale temporary file %s", tmp)
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def atomic_output(path: str | os.PathLike, *, verify: Callable[[Path], Any] | None = None) -> Iterator[Path]:
    """Write `path` atomically: yield a temporary path to write, then check and publish it.

    Args:
        path: the final file. Its folder is created.
        verify: called with the finished temporary before the rename; it raises to refuse the file
            (a short write on a full disk, say).

    Raises:
        OSError: the write, the check or the rename failed; nothing is left under either name. An error
            that names no file (matplotlib's, say) is raised naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(errno.EIO, "the writer produced no file", str(path))
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None or Path(exc.filename) == tmp:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (flushed and synced before the rename); returns `path`."""
    path = Path(path)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if tmp.stat().st_size != len(data):
            raise OSError(errno.ENOSPC, f"short write ({tmp.stat().st_size} of {len(data)} bytes)", str(path))
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` atomically; returns `path`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically; returns the path."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", **savefig_kwargs)
    return path
