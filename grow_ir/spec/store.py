"""save/load: a graph as a directory holding spec.yaml and weights.safetensors.

A save is all or nothing: everything is written into a fresh temporary directory beside
the target (:mod:`grow_ir.atomic`), which then takes the target's place in one rename that
exchanges the two. A reader sees the old complete directory or the new complete one, never
half of one and never none; what a killed save left is removed by the next save there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from grow_ir.atomic import clean_leftovers, swap_in, temp_dir
from grow_ir.errors import GrowError, SpecError
from grow_ir.ir.graph import Graph
from grow_ir.ir.verify import verify
from grow_ir.owned import MANIFEST, check_replaceable_dir, manifest_text
from grow_ir.spec.dump import dump_spec
from grow_ir.spec.errors import with_file
from grow_ir.spec.load import SPEC_FILE, load_spec
from grow_ir.spec.text import to_yaml
from grow_ir.spec.weights import write_weights

WEIGHTS_FILE = "weights.safetensors"
"""The parameters' file name inside a saved directory."""


def save(
    graph: Graph,
    directory: str | os.PathLike[str],
    *,
    extra_files: Mapping[str, str | bytes] | None = None,
    text: str | None = None,
) -> Path:
    """Write ``graph`` to ``directory`` as ``spec.yaml`` + ``weights.safetensors``.

    The spec is :func:`dump_spec` plus ``weights: weights.safetensors``; the weights file
    holds every parameter bitwise. ``extra_files`` (name -> text or bytes, e.g. a growth
    history) are written into the same directory in the same atomic step. ``text`` is
    :func:`spec_text` of ``graph`` when the caller holds it already (a trainer saving the
    same architecture every epoch with new weights); it is written as given. An existing
    directory written by grow-ir (see :mod:`grow_ir.owned`) is replaced as a whole, and a
    symlink to a folder keeps pointing to it; ``load`` of the result gives
    back equal nodes, outputs, blocks, stages, grow, growth and bitwise-equal parameters.

    Returns:
        The directory's path.

    Raises:
        SpecError: ``graph`` fails verification, or ``directory`` is a file or holds
            anything grow-ir did not write (it is never replaced).
    """
    try:
        verify(graph)
    except GrowError as exc:
        raise with_file(exc, None) from None
    target = check_replaceable_dir(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(target)
    names = [SPEC_FILE, WEIGHTS_FILE, *(extra_files or {})]
    with temp_dir(target, names, "save") as tmp:
        write_model_files(graph, tmp, text)
        for name, content in (extra_files or {}).items():
            _write_extra(tmp, name, content)
        manifest = tmp / f"{MANIFEST}.tmp"  # replaced in one step: always a whole manifest
        manifest.write_text(manifest_text(names, "save"), encoding="utf-8")
        os.replace(manifest, tmp / MANIFEST)
        tmp.chmod(0o755)
        swap_in(tmp, target)
    return target


def load(directory: str | os.PathLike[str]) -> Graph:
    """Read back a directory written by :func:`save` as a verified Graph.

    Raises:
        SpecError: no such directory, no spec.yaml in it, or a bad spec or weights file.
    """
    path = Path(directory)
    if not path.is_dir():
        raise SpecError(
            "no such model directory",
            file=str(path),
            expected=f"a directory holding {SPEC_FILE} and {WEIGHTS_FILE}",
            found="a file" if path.exists() else "nothing at that path",
        )
    return load_spec(path / SPEC_FILE)


def spec_text(graph: Graph) -> str:
    """The ``spec.yaml`` text :func:`save` writes for ``graph``: :func:`dump_spec` with
    ``weights: weights.safetensors``. It depends on everything but the parameters' values,
    so it stays the same while only the weights change."""
    dumped = dump_spec(graph)
    head = {"version": dumped.pop("version"), "name": dumped.pop("name")}
    return to_yaml({**head, "weights": WEIGHTS_FILE, **dumped})


def write_model_files(graph: Graph, directory: Path, text: str | None = None) -> tuple[Path, Path]:
    """Write ``spec.yaml`` (``text``, or :func:`spec_text` of ``graph``) and the weights
    file of ``graph`` into ``directory``; return their paths. Not atomic: write into a
    temporary directory (:func:`grow_ir.atomic.temp_dir`) and move the files from there."""
    text = spec_text(graph) if text is None else text
    (directory / SPEC_FILE).write_text(text, encoding="utf-8")
    write_weights(graph.params, directory / WEIGHTS_FILE)
    return directory / SPEC_FILE, directory / WEIGHTS_FILE


def _write_extra(tmp: Path, name: str, content: str | bytes) -> None:
    if Path(name).name != name or name in (SPEC_FILE, WEIGHTS_FILE, MANIFEST, "", ".", ".."):
        raise SpecError(
            "bad extra file name",
            field="extra_files",
            expected=f"a plain file name other than {SPEC_FILE}, {WEIGHTS_FILE} and {MANIFEST}",
            found=repr(name),
        )
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
