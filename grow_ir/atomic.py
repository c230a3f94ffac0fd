"""Writes that survive a kill: grow-ir's own temporary directories, and swapping them in.

Every output is first written into a temporary directory beside its target, named
``.TARGET.grow-ir-XXXXXXXX.tmp`` and holding a manifest (:data:`grow_ir.owned.MANIFEST`)
that lists the names it may hold. While the writing process lives it holds an ``flock`` on
the directory, so the kernel itself says when the writer is gone (a SIGKILL releases it).

:func:`clean_leftovers` removes what a killed run left beside a target: only directories
with that name pattern, whose manifest is grow-ir's and lists every entry, and whose writer
is gone (and empty directories of that pattern); it logs each removal. Anything else, a
user's file above all, is never touched. Removal deletes the manifest last, so that a kill
during it leaves a directory that is still recognised.

:func:`swap_in` replaces a directory by another in one step with Linux ``renameat2(...,
RENAME_EXCHANGE)``, so that a reader of the target always finds the old or the new
complete directory, never none; the old one then sits at the temporary name and is removed.
Where the system has no such call (not Linux, or a file system without it), two renames
are the fallback and the target is missing between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from grow_ir.owned import MANIFEST, owned_names

try:
    import fcntl
except ImportError:  # not POSIX: no lock, so no leftover can be told from a live write
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("grow_ir")

TEMP_TAG = ".grow-ir-"
"""The part of a temporary directory's name that says grow-ir wrote it."""


def temp_name_pattern(target: Path) -> str:
    """The glob of the temporary directories written for ``target``, beside it."""
    return f".{target.name}{TEMP_TAG}*.tmp"


@contextlib.contextmanager
def temp_dir(target: Path, files: Iterable[str], command: str) -> Iterator[Path]:
    """A fresh temporary directory beside ``target`` for writing ``files`` into.

    ``target``'s folder must exist. Guarantees: the directory is new, named by
    :func:`temp_name_pattern`, holds a manifest listing ``files`` and is locked until the
    block ends, so that a later :func:`clean_leftovers` recognises it if this process is
    killed. On leaving the block whatever is still at its path (nothing after a rename,
    the old output after :func:`swap_in`) is removed, its manifest last.
    """
    prefix = f".{target.name}{TEMP_TAG}"
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    lock = os.open(path, os.O_RDONLY)  # the lock is on the directory: it survives renames
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = {
            "written_by": "grow-ir",
            "command": command,
            "temporary_for": target.name,
            "files": sorted({*files, MANIFEST, f"{MANIFEST}.tmp"}),
        }
        fd = os.open(path / MANIFEST, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, json.dumps(manifest, indent=1).encode())  # one small write
        finally:
            os.close(fd)
        yield path
    finally:
        remove_output(path)
        os.close(lock)


def remove_output(path: Path) -> None:
    """Remove the directory ``path`` that grow-ir wrote, its manifest last, so that a kill
    halfway leaves a directory :func:`clean_leftovers` still recognises."""
    if not path.is_dir() or path.is_symlink():
        return
    for entry in path.iterdir():
        if entry.name == MANIFEST:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    (path / MANIFEST).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()


def clean_leftovers(target: Path) -> list[Path]:
    """Remove the temporary directories that killed grow-ir runs left beside ``target``.

    Guarantees: a directory is removed only when its name matches
    :func:`temp_name_pattern`, it is a real directory (not a link), no live process holds
    its lock, and it is empty, holds only a (possibly half-written) manifest, or its
    manifest is grow-ir's and lists every entry in it;
    each removal is logged as a warning. Returns the paths removed.
    """
    if fcntl is None or not target.parent.is_dir():
        return []
    removed = []
    for path in sorted(target.parent.glob(temp_name_pattern(target))):
        if path.is_symlink() or not path.is_dir() or not _abandoned(path):
            continue
        remove_output(path)
        removed.append(path)
        log.warning("grow-ir: removed %s, left by an interrupted grow-ir run", path)
    return removed


def _abandoned(path: Path) -> bool:
    """Whether ``path`` is grow-ir's (empty, or every entry listed) and its writer is gone."""
    entries = [entry.name for entry in path.iterdir()]
    owned = owned_names(path)
    # a manifest alone is ours even when unreadable: a kill while it was being written
    only_manifest = entries == [MANIFEST]
    if entries and not only_manifest and (owned is None or any(n not in owned for n in entries)):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live writer holds it
    finally:
        os.close(fd)
    return True


def swap_in(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target`` (an existing directory then sits at ``new``).

    With ``renameat2(RENAME_EXCHANGE)`` the two names swap in one step; otherwise the old
    target is moved to ``new``'s name first (the target is briefly missing).
    """
    if not target.exists():
        os.replace(new, target)
        return
    if _exchange(new, target):
        return
    aside = new.with_name(new.name + ".old.tmp")
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        raise
    os.replace(aside, new)  # where the caller removes it


def _renameat2() -> ctypes._CFuncPtr | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` atomically; False where the system cannot."""
    if _RENAMEAT2 is None:
        return False
    if _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(b))
