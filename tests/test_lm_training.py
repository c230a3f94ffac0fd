"""Language-model training: token data (the embedded pydoc corpus, text files, token .npz),
next-token cross-entropy with validation loss and perplexity, the schedule growth policy,
bitwise resume and the verified ONNX export, through ``grow-ir train``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from grow_ir.cli import main
from grow_ir.errors import GrowError
from grow_ir.growth import Trainer
from grow_ir.growth.config import growth_config
from grow_ir.growth.data import check_fits, load_data
from grow_ir.growth.lm_data import pydoc_text
from grow_ir.spec import load, load_spec

TEXT = "".join(
    f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n" for i in range(120)
)

BLOCK = {
    "nodes": [
        {"name": "ln1", "op": "layernorm", "inputs": ["input"]},
        {"name": "attn", "op": "attention", "num_heads": 2, "causal": True},
        {"name": "res1", "op": "add", "inputs": ["input", "attn"]},
        {"name": "ln2", "op": "layernorm"},
        {"name": "fc", "op": "linear", "out_features": "$hidden"},
        {"name": "act", "op": "gelu"},
        {"name": "proj", "op": "linear", "out_features": "$width"},
        {"name": "res2", "op": "add", "inputs": ["res1", "proj"]},
    ]
}


def lm_spec(data: str, **growth: object) -> dict:
    """A 1-block, 8-wide GPT over bytes, grown by a schedule (wider, then deeper)."""
    return {
        "version": 1,
        "name": "tiny_lm",
        "seed": 0,
        "inputs": {"tokens": {"shape": ["batch", "seq"], "dtype": "int64"}},
        "blocks": {"gpt": BLOCK},
        "nodes": [
            {"name": "wte", "op": "embedding", "num_embeddings": 256, "embedding_dim": 8},
            {"name": "h", "stage": "gpt", "depth": 1, "with": {"width": 8, "hidden": 16}},
            {"name": "ln_f", "op": "layernorm"},
            {"name": "lm_head", "op": "linear", "out_features": 256},
        ],
        "outputs": {"logits": "lm_head"},
        "growth": {
            "data": data,
            "seq_len": 16,
            "policy": "schedule",
            "schedule": [
                {"epoch": 1, "pass": "widen", "node": "wte", "width": 12, "init": "lemon"},
                {"epoch": 2, "pass": "stack_blocks", "stage": "h", "mode": "interpolate"},
            ],
            "epochs": 4,
            "tail_epochs": 1,
            "batch_size": 16,
            "optimizer": {"name": "adam", "lr": 0.01},
            **growth,
        },
    }


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ---- data ------------------------------------------------------------------------------


def test_the_embedded_corpus_is_pythons_documentation() -> None:
    text = pydoc_text()
    assert len(text) > 100_000 and "assert" in text
    data = load_data("pydoc", seq_len=32, val_fraction=0.05)
    assert data.is_sequence and data.num_classes == 256
    assert data.x_train.dtype == torch.int64 and data.x_train.shape[1] == 32
    assert torch.equal(data.x_train[:, 1:], data.y_train[:, :-1])  # targets: the next token
    total = len(text.encode("utf-8"))
    assert data.x_train.numel() > 0.85 * total


def test_text_and_token_files(tmp_path: Path, text_file: Path) -> None:
    data = load_data(str(text_file), seq_len=16, val_fraction=0.1)
    stream = np.frombuffer(TEXT.encode(), dtype=np.uint8)
    assert data.x_train[0].tolist() == stream[:16].tolist()
    assert data.y_train[0].tolist() == stream[1:17].tolist()
    npz = tmp_path / "tokens.npz"
    np.savez(npz, tokens=np.arange(2000) % 50, vocab_size=np.array(64))
    tokens = load_data(str(npz), seq_len=10)
    assert tokens.num_classes == 64 and tokens.x_train[0].tolist() == list(range(10))


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"tokens": np.zeros((4, 4), dtype=np.int64)}, "tokens must be a 1-D array"),
        ({"tokens": np.arange(100), "vocab_size": np.array(10)}, "not below vocab_size"),
        ({"tokens": np.array([-1] * 200)}, "non-negative"),
        ({"tokens": np.arange(30)}, "too few tokens"),
    ],
)
def test_bad_token_files_are_refused(tmp_path: Path, content: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(GrowError, match=match):
        load_data(str(path), seq_len=16)


def test_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 " * 400)
    with pytest.raises(GrowError, match="not UTF-8"):
        load_data(str(path), seq_len=16)


def test_a_classifier_or_float_input_does_not_fit_token_data(text_file: Path) -> None:
    data = load_data(str(text_file), seq_len=16)
    float_in = load_spec(
        {
            "version": 1,
            "inputs": {"x": {"shape": ["batch", 16]}},
            "nodes": [{"name": "fc", "op": "linear", "out_features": 256}],
            "outputs": {"y": "fc"},
        }
    )
    with pytest.raises(GrowError, match="the input needs dtype int64"):
        check_fits(data, float_in)
    classifier = load_spec(
        {
            "version": 1,
            "inputs": {"tokens": {"shape": ["batch", 16], "dtype": "int64"}},
            "nodes": [
                {"name": "wte", "op": "embedding", "num_embeddings": 256, "embedding_dim": 4},
                {"name": "flat", "op": "flatten"},
                {"name": "head", "op": "linear", "out_features": 256},
            ],
            "outputs": {"y": "head"},
        }
    )
    with pytest.raises(GrowError, match="label out of range"):
        check_fits(data, classifier)


# ---- training --------------------------------------------------------------------------


def test_train_a_language_model_while_a_schedule_grows_it(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    spec = write_spec(tmp_path, lm_spec(str(text_file)))
    assert main(["train", str(spec), "-o", str(out), "--threads", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1: widened wte (widen, init=lemon, preserved)" in printed
    assert "epoch 2: grew h (stack_blocks" in printed
    history = json.loads((out / "history.json").read_text())
    epochs = history["epochs"]
    assert all({"val_loss", "val_perplexity"} <= set(e) for e in epochs)
    for e in epochs:
        assert math.isclose(e["val_perplexity"], math.exp(e["val_loss"]), rel_tol=1e-9)
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] < math.log(256)
    assert [ev["pass"] for ev in history["events"]] == ["widen", "stack_blocks"]
    assert all(ev["preserved"] for ev in history["events"])
    final = history["final"]
    assert {"test_loss", "test_perplexity"} <= set(final)
    assert final["onnx"]["checker"] == "passed" and final["onnx"]["max_relative_error"] <= 1e-5
    grown = load(out)
    assert grown.stages["h"].depth == 2 and grown.node("wte").attrs.embedding_dim == 12
    status = [u["status"] for u in final["units"].values()]
    assert status == ["done after epoch 1", "done after epoch 2"]


class Killed(Exception):
    """Stands for the process dying (SIGKILL) in the middle of an epoch's growth."""


def test_a_language_model_run_resumes_bitwise(tmp_path: Path, text_file: Path) -> None:
    graph = load_spec(lm_spec(str(text_file)))
    config = growth_config(graph.growth)
    whole = Trainer.fresh(
        graph, config, data_source=str(text_file), out_dir=tmp_path / "whole", progress=False
    ).run()

    def die_at_the_second_step(line: str) -> None:
        if line.startswith("epoch 2:"):
            raise Killed(line)

    part = Trainer.fresh(
        graph,
        config,
        data_source=str(text_file),
        out_dir=tmp_path / "part",
        log=die_at_the_second_step,
        progress=False,
    )
    with pytest.raises(Killed):
        part.run()
    # the last checkpoint is epoch 1's (after the widening); stack_blocks runs after resuming
    resumed = Trainer.resume(tmp_path / "part", progress=False).run()
    assert resumed.graph.stages["h"].depth == 2
    assert resumed.graph.params.keys() == whole.graph.params.keys()
    for k, v in whole.graph.params.items():
        assert torch.equal(resumed.graph.params[k], v), k
    assert resumed.history.epochs[-1]["val_loss"] == whole.history.epochs[-1]["val_loss"]


@pytest.mark.parametrize(
    ("growth", "match"),
    [
        ({"policy": "schedule", "schedule": []}, "expected at least one schedule step"),
        (
            {"schedule": [{"epoch": 3, "pass": "widen", "node": "wte", "width": 12}]},
            "falls in the learning-rate tail",
        ),
        ({"schedule": [{"epoch": 1, "pass": "widne"}]}, "did you mean 'widen'"),
    ],
)
def test_bad_schedules_exit_2(
    tmp_path: Path, text_file: Path, growth: dict, match: str, capsys: pytest.CaptureFixture
) -> None:
    spec = write_spec(tmp_path, lm_spec(str(text_file), **growth))
    assert main(["train", str(spec), "-o", str(tmp_path / "run"), "--quiet"]) == 2
    assert match in capsys.readouterr().err


def test_the_gpt_bytes_example_schedule_is_exact_step_by_step() -> None:
    from grow_ir.growth.policy import make_policy
    from grow_ir.passes import apply_plan
    from grow_ir.spec import example_path

    graph = load_spec(example_path("gpt_bytes"))
    config = growth_config(graph.growth)
    assert type(make_policy(config, graph)).__name__ == "Scheduled"
    plan = [{"pass": s.pass_name, **s.arguments()} for s in config.schedule or []]
    grown = apply_plan(graph, plan, check=True)  # every step measured within 1e-5
    assert grown.stages["h"].depth == 4 and grown.node("wte").attrs.embedding_dim == 64
    assert {n.attrs.num_heads for n in grown.nodes if n.op == "attention"} == {8}


def tiny_qwen3() -> torch.nn.Module:
    """A Hugging Face Qwen3 over bytes (random init, nothing downloaded): the
    ``MODULE:CALLABLE`` the end-to-end test below gives ``grow-ir import``."""
    import transformers

    config = transformers.Qwen3Config(
        vocab_size=256,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return transformers.Qwen3ForCausalLM(config)


def test_a_hugging_face_model_imported_by_the_cli_trains_while_it_grows(
    tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture
) -> None:
    """``grow-ir import tests.test_lm_training:tiny_qwen3 --length-dim``, a schedule added
    to the spec it writes, then ``grow-ir train`` on windows twice the example's length:
    the residual stream widened, heads added and a block inserted, each exact, the loss
    going down, the grown model exported and checked against onnxruntime, the tied head
    still tied."""
    imported = tmp_path / "imported"
    argv = ["import", "tests.test_lm_training:tiny_qwen3", "-o", str(imported)]
    # an example of 8 tokens; --length-dim lets the graph take the 16 it trains on
    assert main([*argv, "--input-shape", "2,8", "--input-dtype", "int64", "--length-dim"]) == 0
    spec = yaml.safe_load((imported / "spec.yaml").read_text())
    assert spec["inputs"]["input_ids"]["shape"] == ["batch", "seq"]
    spec["growth"] = {
        **lm_spec(str(text_file))["growth"],
        "epochs": 3,
        "schedule": [
            {"epoch": 1, "pass": "widen", "node": "model.embed_tokens", "width": 32},
            {"epoch": 1, "pass": "add_heads", "node": "model.layers.0.self_attn", "heads": 6},
            {"epoch": 1, "pass": "insert_block", "stage": "model.layers"},
        ],
    }
    (imported / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", str(imported / "spec.yaml"), "-o", str(out), "--quiet"]) == 0
    history = json.loads((out / "history.json").read_text())
    assert [ev["pass"] for ev in history["events"]] == ["widen", "add_heads", "insert_block"]
    assert all(ev["preserved"] for ev in history["events"])
    epochs = history["epochs"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] < math.log(256)
    onnx = history["final"]["onnx"]
    assert onnx["checker"] == "passed" and onnx["max_relative_error"] <= 1e-5
    grown = load(out)
    assert grown.stages["model.layers"].depth == 2
    assert grown.node("model.layers.0.self_attn").attrs.qk_norm_eps is not None
    assert grown.node("lm_head").share == "model.embed_tokens"
    assert grown.types["model.embed_tokens"].shape[-1] == 32
