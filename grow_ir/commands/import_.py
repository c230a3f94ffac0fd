"""``grow-ir import SOURCE -o DIR``: an ONNX file or a PyTorch module, as spec + weights."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

from grow_ir.commands import plural
from grow_ir.errors import GrowError
from grow_ir.ir.types import DTYPES


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``import``."""
    parser = subparsers.add_parser(
        "import",
        help="import an ONNX file or a PyTorch module into a spec directory",
        description="Import SOURCE (FILE.onnx, or MODULE:CALLABLE returning an nn.Module) "
        "and write DIR/spec.yaml + weights.safetensors. The import is checked: the graph "
        "must compute what the source computes (onnxruntime, or the module in eval mode).",
    )
    parser.add_argument("source", metavar="SOURCE", help="FILE.onnx or MODULE:CALLABLE")
    parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="D,D,...",
        help="shape of one example input of a module (repeat per input), e.g. 2,3,224,224",
    )
    parser.add_argument(
        "--input-dtype",
        action="append",
        default=[],
        choices=sorted(DTYPES),
        help="dtype of each example input (default float32; int64 for token ids)",
    )
    parser.add_argument(
        "--length-dim",
        action="store_true",
        help="a module's inputs of rank 2 or more take any length along their second axis "
        "(the symbolic seq of a language model's tokens; checked one shorter too)",
    )


def run(args: argparse.Namespace) -> int:
    """Import SOURCE, save it to DIR and print what was imported; GrowError for bad input."""
    from grow_ir.imports import from_onnx, from_torch
    from grow_ir.spec import save

    source: str = args.source
    if source.endswith(".onnx") or Path(source).is_file():
        for flag, given in (("--input-shape", args.input_shape), ("--length-dim", args.length_dim)):
            if given:
                raise GrowError(
                    f"{flag} is for modules: an ONNX file declares its inputs",
                    field=flag,
                    expected=f"no {flag} with an ONNX file",
                    found=" ".join(given) if isinstance(given, list) else flag,
                )
        graph = from_onnx(source)
    else:
        module = _module(source)
        examples = _examples(args.input_shape, args.input_dtype)
        try:
            graph = from_torch(module, examples, length_dim=args.length_dim)
        except GrowError as exc:
            if exc.field != "length_dim":
                raise
            raise exc.replace(field="--length-dim") from None  # the flag given
    save(graph, args.output)
    print(
        f"imported {source}: {plural(len(graph.nodes), 'node')}, "
        f"{plural(graph.num_params(), 'parameter')} -> {args.output}"
    )
    return 0


def _module(source: str) -> torch.nn.Module:
    name, sep, attr = source.partition(":")
    if not sep or not name or not attr:
        raise GrowError(
            "cannot tell what SOURCE is",
            field="SOURCE",
            expected="an existing FILE.onnx, or MODULE:CALLABLE (e.g. mypkg.models:resnet18)",
            found=repr(source),
        )
    sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(name)
    except ImportError as exc:
        raise GrowError(
            "cannot import the Python module",
            field="SOURCE",
            expected=f"an importable module '{name}'",
            found=f"{type(exc).__name__}: {exc}",
        ) from None
    finally:
        sys.path.pop(0)
    factory = getattr(mod, attr, None)
    if not callable(factory):
        raise GrowError(
            "no such callable",
            field="SOURCE",
            expected=f"a callable '{attr}' in module '{name}'",
            found="none" if factory is None else type(factory).__name__,
        )
    made = factory()
    if not isinstance(made, torch.nn.Module):
        raise GrowError(
            "the callable did not return an nn.Module",
            field="SOURCE",
            expected="a torch.nn.Module",
            found=type(made).__name__,
        )
    return made


def _examples(shapes: list[str], dtypes: list[str]) -> list[torch.Tensor]:
    if not shapes:
        raise GrowError(
            "a module needs example input shapes",
            field="--input-shape",
            expected="one --input-shape per input of forward, e.g. --input-shape 2,3,32,32",
            found="none",
        )
    if dtypes and len(dtypes) not in (1, len(shapes)):
        raise GrowError(
            "one --input-dtype, or one per --input-shape",
            field="--input-dtype",
            expected=f"1 or {len(shapes)}",
            found=str(len(dtypes)),
        )
    gen = torch.Generator().manual_seed(0)
    out = []
    for i, text in enumerate(shapes):
        try:
            shape = [int(d) for d in text.split(",")]
        except ValueError:
            shape = []
        if not shape or any(d < 1 for d in shape):
            raise GrowError(
                "bad input shape",
                field="--input-shape",
                expected="positive integers separated by commas, e.g. 2,3,32,32",
                found=repr(text),
            )
        dtype = dtypes[i if len(dtypes) > 1 else 0] if dtypes else "float32"
        if dtype == "int64":
            # token ids: 0 and 1 are valid for every embedding table
            out.append(torch.randint(0, 2, shape, generator=gen))
        else:
            out.append(torch.randn(shape, generator=gen).to(DTYPES[dtype]))
    return out
