"""Parameters in safetensors files, checked against the graph's parameter specs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError

from grow_ir.errors import SpecError
from grow_ir.ir.graph import Graph
from grow_ir.ir.types import DTYPES


def write_weights(params: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write ``params`` to a safetensors file (contiguous CPU copies, bitwise exact).

    Guarantees: the file gets the permissions of any other file the process creates
    (0666 less the umask), and nothing but ``path`` is created (``save_file`` would stage
    the data in a randomly named file beside it, which a kill would leave behind).
    """
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    storages = Counter(t.untyped_storage().data_ptr() for t in tensors.values())
    for k, t in tensors.items():  # safetensors refuses tensors that share memory
        if storages[t.untyped_storage().data_ptr()] > 1:
            tensors[k] = t.clone()
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    del tensors
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o666)  # less the umask
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def read_weights(graph: Graph, path: Path, *, file: str | None) -> dict[str, torch.Tensor]:
    """The parameters of ``graph`` from a safetensors file, exactly as stored.

    Raises:
        SpecError: the file is missing or not a safetensors file, or a parameter is missing,
            extra, or of the wrong shape or dtype (naming the node and the key).
    """
    shown = str(path)
    if not path.is_file():
        raise SpecError(
            "the weights file does not exist",
            file=file,
            field="weights",
            expected="an existing .safetensors file",
            found=f"nothing at {shown}",
        )
    try:
        tensors = safetensors.torch.load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SpecError(
            "cannot read the weights file",
            file=file,
            field="weights",
            expected=f"a valid safetensors file at {shown}",
            found=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        ) from None
    specs = graph.param_specs
    owner = {p: n.name for n in graph.nodes if n.share is None for p in graph.node_params(n)}
    for key, spec in specs.items():
        t = tensors.get(key)
        want = f"{spec.dtype}{list(spec.shape)}"
        if t is None:
            raise SpecError(
                "the weights file lacks a parameter",
                file=file,
                node=owner[key],
                field=key,
                expected=f"a tensor {want} in {shown}",
                found="none",
            )
        if tuple(t.shape) != spec.shape or t.dtype != DTYPES[spec.dtype]:
            raise SpecError(
                "a tensor in the weights file has the wrong shape or dtype",
                file=file,
                node=owner[key],
                field=key,
                expected=want,
                found=f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}",
            )
    extra = sorted(set(tensors) - set(specs))
    if extra:
        raise SpecError(
            "the weights file has a tensor that no node uses",
            file=file,
            field=extra[0],
            expected="only the graph's parameters",
            found=f"{len(extra)} extra tensor(s), e.g. {extra[0]!r}",
        )
    return tensors


def check_finite(graph: Graph, *, file: str | None) -> None:
    """Refuse a graph whose parameters or buffers hold NaN or Inf (a diverged run, a
    damaged file): nothing computed from them, exported or measured, means anything.

    Raises:
        SpecError: naming the first such parameter and how many of its values are bad.
    """
    for name, tensor in graph.params.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            node = name.rsplit(".", 1)[0]
            raise SpecError(
                "a parameter holds values that are not finite",
                file=file,
                node=node if node in graph.node_map else None,
                field=name,
                expected="finite values (no NaN or Inf)",
                found=f"{bad:,} NaN or Inf of {tensor.numel():,}",
            )
