"""Writing result files: atomically (temp file + rename), with the mode a plain open() would give.

`tempfile.mkstemp` creates its file with mode 0600; renamed into place, a result written under
umask 022 would then be unreadable to the group and others, unlike files written by open().
Every atomic writer in specmoe goes through `atomic_write`, which gives the temp file
0o666 & ~umask before the rename.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # no /proc: read by setting, then restore at once
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(temp_path) on a temp file beside `path`, then rename it onto `path`.

    An interrupted write never leaves half a file, and the result gets mode 0o666 & ~umask.
    """
    path = Path(path)
    # The temp name ends with the real name: writers that look at the suffix (gzip, np.savez) agree.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"-{path.name}")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))
