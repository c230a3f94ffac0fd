"""Which files a grow-ir command may replace: only those it wrote itself.

Every output directory grow-ir writes (``save``, ``grow``, ``train``, ``continual``) holds a
manifest, :data:`MANIFEST`, listing the names grow-ir wrote there. A directory may be
replaced, or written into, only when it is new, empty, or holds nothing but names its
manifest lists; anything else (a user's notes, a spec copied in by hand, a directory from
another tool) is refused with a message naming what is there, and left untouched. An
ONNX file is replaced only when grow-ir produced it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from grow_ir.errors import SpecError

MANIFEST = ".grow-ir.json"
"""The manifest's file name inside an output directory grow-ir wrote."""

_LISTED = 5  # names shown in a refusal before "and N more"


def manifest_text(names: Iterable[str], command: str) -> str:
    """The manifest's JSON text for an output of ``command`` holding ``names``."""
    files = sorted({*names, MANIFEST, f"{MANIFEST}.tmp"})
    return json.dumps({"written_by": "grow-ir", "command": command, "files": files}, indent=1)


def owned_names(directory: Path) -> set[str] | None:
    """The names the manifest in ``directory`` lists, or None when it has no readable one."""
    path = directory / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("written_by") != "grow-ir" or not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str)}


def check_replaceable_dir(directory: str | os.PathLike[str], *, field: str | None = None) -> Path:
    """Refuse an output directory grow-ir may not write over; return its real path.

    Guarantees: on return, ``directory`` (symlinks resolved, so that writing replaces the
    folder a link points to and keeps the link) does not exist, is empty, or holds only
    names its manifest lists. Nothing is read but the listing and the manifest.

    Raises:
        SpecError: the path is a file, or a directory holding something grow-ir did not
            write (the message names it).
    """
    target = Path(directory)
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise SpecError(
            "cannot write a model directory over a file",
            file=str(directory),
            field=field,
            expected="a new, empty or grow-ir output directory",
            found="a file",
        )
    if not target.is_dir():
        return target
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return target
    owned = owned_names(target)
    foreign = entries if owned is None else [e for e in entries if e not in owned]
    if foreign:
        shown = ", ".join(foreign[:_LISTED])
        if len(foreign) > _LISTED:
            shown += f" and {len(foreign) - _LISTED} more"
        why = (
            f"it has no {MANIFEST}, so grow-ir did not write it"
            if owned is None
            else "grow-ir did not write them"
        )
        raise SpecError(
            "refusing to write over a directory that holds files grow-ir did not write",
            file=str(directory),
            field=field,
            expected="a new or empty directory, or one that grow-ir wrote (nothing else in it)",
            found=f"{shown} ({why}); choose another directory, or move them away",
        )
    return target


def claim(directory: str | os.PathLike[str], names: Iterable[str], command: str) -> None:
    """Create ``directory`` if needed and list ``names`` in its manifest (kept with those
    already listed), written atomically. Call only on a directory that
    :func:`check_replaceable_dir` accepted."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    names = {*names, *(owned_names(target) or ())}
    tmp = target / f"{MANIFEST}.tmp"
    tmp.write_text(manifest_text(names, command), encoding="utf-8")
    os.replace(tmp, target / MANIFEST)


def new_file_mode() -> int:
    """The permissions a plain new file gets in this process: 0666 less the umask (for files
    written through a temporary name that another library created 0600)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def check_replaceable_file(path: str | os.PathLike[str], *, ours: bool, what: str) -> None:
    """Refuse to replace an existing file at ``path`` unless grow-ir wrote it (``ours``).

    Raises:
        SpecError: ``path`` is a directory, or a file grow-ir did not write.
    """
    target = Path(path)
    if target.is_dir():
        raise SpecError(
            f"cannot write {what} over a directory",
            file=str(path),
            expected=f"a new file, or {what} that grow-ir wrote",
            found="a directory",
        )
    if target.exists() and not ours:
        raise SpecError(
            "refusing to replace a file that grow-ir did not write",
            file=str(path),
            expected=f"a new file, or {what} that grow-ir wrote",
            found="another file; choose another name, or move it away",
        )
