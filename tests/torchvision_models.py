"""torchvision's model classes for tests and benchmarks, without torchvision's C extension.

The torchvision 0.28.0 wheel available here is a CUDA build: its C extension does not load
beside the CPU torch, and ``import torchvision`` fails in ``torchvision/_meta_registrations``
(the operator ``torchvision::nms`` does not exist). Its model classes
(``torchvision.models``) are pure Python and need none of it. So:

- ``scripts/setup.sh`` installs the wheel OUT of site-packages, without dependencies,
  pinned by its sha256 (``requirements-models.txt``)::

      pip install --no-deps --require-hashes --target .venv/torchvision-models \\
          -r requirements-models.txt

  Outside site-packages, nothing finds it by accident: transformers probes for torchvision
  and would import it (and fail) if it were installed normally.
- :func:`models` registers a bare ``torchvision`` package module (a ``types.ModuleType``
  whose ``__path__`` is that folder, so torchvision's own ``__init__.py`` never runs) and
  imports ``torchvision.models`` through it. The models are built with random init:
  nothing is downloaded.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".venv" / "torchvision-models"
"""Where ``scripts/setup.sh`` installs the wheel (``pip install --target``)."""


def models() -> types.ModuleType:
    """``torchvision.models``, loaded from :data:`TARGET` without torchvision's C extension.

    Guarantees: the same module on every call; ``sys.modules["torchvision"]`` is a bare
    package pointing at the installed folder (its ``__init__`` not run).

    Raises:
        RuntimeError: the wheel is not installed (run ``bash scripts/setup.sh``).
    """
    package = TARGET / "torchvision"
    if not (package / "models" / "__init__.py").is_file():
        raise RuntimeError(
            f"torchvision's model classes are not installed at {TARGET}: run "
            "`bash scripts/setup.sh` (it installs requirements-models.txt there)"
        )
    bare = sys.modules.get("torchvision")
    if bare is None:
        bare = types.ModuleType("torchvision")
        bare.__path__ = [str(package)]
        # a spec, so that importlib.util.find_spec("torchvision") (torch.onnx asks) answers
        bare.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
        bare.__spec__.submodule_search_locations = [str(package)]
        sys.modules["torchvision"] = bare
    elif list(getattr(bare, "__path__", [])) != [str(package)]:
        raise RuntimeError(f"another torchvision is already imported: {bare!r}")
    return importlib.import_module("torchvision.models")
