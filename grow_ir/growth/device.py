"""Where a run computes: the device, and the determinism settings around a run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from grow_ir.errors import GrowError


def pick_device(name: str | None) -> torch.device:
    """``name`` as a torch device; None gives CUDA when there is one, else the CPU.

    Raises:
        GrowError: an unknown device, or CUDA asked for where there is none.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise GrowError(
            "unknown device", field="--device", expected="cpu, cuda or cuda:N", found=repr(name)
        ) from None
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GrowError(
            "CUDA is not available on this machine",
            field="--device",
            expected="cpu (or a machine with a CUDA GPU)",
            found=repr(name),
        )
    if device.type not in ("cpu", "cuda"):
        raise GrowError(
            "unsupported device", field="--device", expected="cpu or cuda", found=repr(name)
        )
    return device


@contextlib.contextmanager
def deterministic(threads: int) -> Iterator[None]:
    """Deterministic kernels and ``threads`` CPU threads for the duration of a run (the
    previous settings restored afterwards): CPU results depend on the thread count.

    Deterministic mode would also fill every new uninitialized tensor with NaN (a
    debugging aid against reading memory no kernel wrote; it changes no result of a
    correct kernel): that is a memset per allocation, a few percent of a small network's
    training step, so it is switched off for the run."""
    fill = torch.utils.deterministic
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = fill.fill_uninitialized_memory
    was_bench = torch.backends.cudnn.benchmark
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    fill.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        fill.fill_uninitialized_memory = was_fill  # type: ignore[attr-defined]
        torch.backends.cudnn.benchmark = was_bench
        torch.set_num_threads(was_threads)
