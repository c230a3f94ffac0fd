"""Hugging Face GPT-2 (tied), Llama (tied and untied; 4 query heads, 2 key/value heads,
rotary, RMSNorm) and BERT (post-norm, key padding mask) imported with ``from_torch``:
outputs equal Hugging Face's on other inputs than the example, with and without an
``attention_mask`` (rows padded), in both attention implementations; ONNX full check and
onnxruntime parity; and the transformer growth passes exact on the imported graphs (the
claim checked against the measurement by tests/test_transformer_growth.py's ``run``).

The models (tests/hf_models.py) have random norm weights and biases, so a wrong import of
any of them changes the output; the mask tests check that the mask matters.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import grow_ir as gi
from grow_ir.backends.onnx import to_onnx
from grow_ir.backends.onnx_check import check_model, check_parity
from grow_ir.backends.torch import to_torch
from grow_ir.errors import GrowError
from grow_ir.imports.builder import ImportRefused
from grow_ir.ir.graph import Graph
from tests import hf_models as hf
from tests.test_hf_transformers import bert_inputs, grows_exactly, relative, tokens
from tests.test_transformer_growth import run

TOL = 1e-5


def built(make: Callable[[], nn.Module], attn: str = "sdpa") -> nn.Module:
    """A model from tests/hf_models.py with attention implementation ``attn``."""
    model = make()
    model.set_attn_implementation(attn)
    return model


MAKERS: dict[str, Callable[[], nn.Module]] = {
    "gpt2-tied": lambda: hf.gpt2(True),
    "llama-tied": lambda: hf.llama(True),
    "llama-untied": lambda: hf.llama(False),
}
STREAM = {"gpt2-tied": "transformer.wte", "llama-tied": "model.embed_tokens"}
STREAM["llama-untied"] = STREAM["llama-tied"]
ATTENTION = {"gpt2-tied": "transformer.h.{}.attn", "llama-tied": "model.layers.{}.self_attn"}
ATTENTION["llama-untied"] = ATTENTION["llama-tied"]

MODELS = {name: built(make) for name, make in MAKERS.items()}
GRAPHS: dict[str, Graph] = {name: gi.from_torch(m, tokens(0)) for name, m in MODELS.items()}


def padding(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A right-padding mask for ``x``: row 0 whole, the others padded by 1..L-2 keys."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones_like(x)
    for row in range(1, x.shape[0]):
        mask[row, x.shape[1] - int(torch.randint(1, x.shape[1] - 1, (1,), generator=gen)) :] = 0
    return mask


def masked_import(model: nn.Module) -> Graph:
    x = tokens(0)
    return gi.from_torch(model, {"input_ids": x, "attention_mask": padding(x)})


MASKED = {name: masked_import(MODELS[name]) for name in ("gpt2-tied", "llama-untied")}
BERT = built(hf.bert)


def bert_kwargs(seed: int = 0) -> dict[str, torch.Tensor]:
    x, types, mask = bert_inputs(seed)
    return {"input_ids": x, "attention_mask": mask, "token_type_ids": types}


BERT_GRAPH = gi.from_torch(BERT, bert_kwargs())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(MAKERS))
def test_the_imported_graph_computes_what_hugging_face_computes(name: str, attn: str) -> None:
    model = MODELS[name] if attn == "sdpa" else built(MAKERS[name], attn)
    graph = GRAPHS[name] if attn == "sdpa" else gi.from_torch(model, tokens(0))
    for seed, n in ((1, 3), (2, 5)):  # other tokens, another batch size
        x = tokens(seed, n=n)
        with torch.no_grad():
            want = model(x).logits
            got = to_torch(graph).eval()(x)
        assert relative(got, want) <= TOL
    ops = [n.op for n in graph.nodes]
    assert ops.count("attention") == 2 and ops.count("embedding") >= 1
    assert {ATTENTION[name].format(i) for i in range(2)} <= set(graph.node_map)
    tied = model.config.tie_word_embeddings
    assert graph.node("lm_head").share == (STREAM[name] if tied else None)
    assert ("lm_head.weight" in graph.params) != tied


def test_the_imported_attention_has_the_models_heads_and_rotary() -> None:
    llama = GRAPHS["llama-tied"].node("model.layers.0.self_attn").attr_dict()
    assert llama["num_heads"] == 4 and llama["num_kv_heads"] == 2 and llama["causal"]
    assert llama["rope_theta"] == 10000.0 and llama["bias"] is False
    gpt2 = GRAPHS["gpt2-tied"]
    assert gpt2.node("transformer.h.0.attn").attr_dict()["causal"] is True
    assert gpt2.node("transformer.h.0.mlp.act").attr_dict() == {"approximate": "tanh"}
    assert GRAPHS["llama-tied"].node("model.norm").op == "rmsnorm"
    # Conv1D's [in, out] weight is the linear's [out, in], transposed
    hf_w = MODELS["gpt2-tied"].state_dict()["transformer.h.0.mlp.c_fc.weight"]
    assert torch.equal(gpt2.params["transformer.h.0.mlp.c_fc.weight"], hf_w.t())
    # no mask building, rotary tables or cache positions were imported
    assert {n.op for n in gpt2.nodes} <= {
        "embedding", "positions", "add", "dropout", "layernorm", "attention", "linear", "gelu"
    }  # fmt: skip


@pytest.mark.parametrize("name", list(MASKED))
def test_an_attention_mask_input_becomes_the_key_padding_mask(name: str) -> None:
    model, graph = MODELS[name], MASKED[name]
    assert list(graph.inputs) == ["input_ids", "attention_mask"]
    assert all(len(n.inputs) == 2 for n in graph.nodes if n.op == "attention")
    x = tokens(3, n=4)
    mask = padding(x, seed=5)
    with torch.no_grad():
        want = model(input_ids=x, attention_mask=mask).logits
        got = to_torch(graph).eval()(x, mask)
        unmasked = to_torch(graph).eval()(x, torch.ones_like(mask))
    assert relative(got, want) <= TOL
    # the mask matters: a graph that ignored it would fail the check above on the padded
    # rows (and only there)
    assert relative(unmasked[1:], want[1:]) > TOL and relative(unmasked[0], want[0]) <= TOL


def test_bert_imports_with_its_mask_and_token_types() -> None:
    assert list(BERT_GRAPH.inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert "encoder.layer.0.attention.self" in BERT_GRAPH.node_map
    kwargs = bert_kwargs(4)
    with torch.no_grad():
        want = BERT(**kwargs).last_hidden_state
        got = to_torch(BERT_GRAPH).eval()(*kwargs.values())
        ones = torch.ones_like(kwargs["attention_mask"])
        unmasked = to_torch(BERT_GRAPH).eval()(kwargs["input_ids"], ones, kwargs["token_type_ids"])
    assert relative(got, want) <= TOL
    assert relative(unmasked[1:], want[1:]) > 1e-3


def test_bert_without_token_types_asks_for_them() -> None:
    """BERT reads its zero ``token_type_ids`` buffer when the argument is left out: a
    buffer is not a value grow-ir learns, so the import asks for the argument."""
    with pytest.raises(ImportRefused) as info:
        gi.from_torch(BERT, tokens(0))
    assert any(
        line.startswith("embeddings (BertEmbeddings):")
        and "buffer 'embeddings.token_type_ids'" in line
        and "pass that argument" in line
        for line in info.value.constructs
    )


IMPORTED = {**GRAPHS, **{f"{k}-masked": g for k, g in MASKED.items()}, "bert": BERT_GRAPH}


@pytest.mark.parametrize("name", list(IMPORTED))
def test_the_imported_graph_exports_to_onnx_with_parity(name: str) -> None:
    graph = IMPORTED[name]
    model = to_onnx(graph)
    check_model(model)
    assert check_parity(graph, model) <= TOL


GROWTH = [
    ("gpt2-tied", "widen", {"node": "transformer.wte", "width": 64, "init": "net2net"}),
    ("gpt2-tied", "widen", {"node": "transformer.h.0.mlp.c_fc", "width": 150, "init": "lemon"}),
    ("gpt2-tied", "add_heads", {"node": "transformer.h.1.attn", "heads": 5}),
    ("gpt2-tied", "grow_head_dim", {"node": "transformer.h.0.attn", "head_dim": 21}),
    ("gpt2-tied", "grow_vocab", {"node": "transformer.wte", "size": 120}),
    ("llama-tied", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("llama-untied", "widen", {"node": "model.embed_tokens", "width": 64, "init": "net2net"}),
    ("llama-tied", "add_heads", {"node": "model.layers.0.self_attn", "heads": 8}),
    ("llama-tied", "grow_kv_heads", {"node": "model.layers.1.self_attn", "kv_heads": 4}),
    ("llama-tied", "grow_head_dim", {"node": "model.layers.0.self_attn", "head_dim": 16}),
    ("llama-tied", "grow_vocab", {"node": "model.embed_tokens", "size": 128}),
    ("llama-untied", "grow_vocab", {"node": "model.embed_tokens", "size": 128}),
    ("gpt2-tied", "insert_block", {"stage": "transformer.h"}),
    ("gpt2-tied", "stack_blocks", {"stage": "transformer.h", "mode": "interpolate"}),
    ("llama-tied", "insert_block", {"stage": "model.layers"}),
    ("llama-untied", "stack_blocks", {"stage": "model.layers", "mode": "interpolate"}),
    ("gpt2-tied-masked", "widen", {"node": "transformer.wte", "width": 64, "init": "net2net"}),
    ("bert", "widen", {"node": "encoder.layer.1.intermediate.dense", "width": 80}),
    ("bert", "add_heads", {"node": "encoder.layer.0.attention.self", "heads": 3}),
    ("bert", "grow_head_dim", {"node": "encoder.layer.1.attention.self", "head_dim": 20}),
]


@pytest.mark.parametrize(
    ("name", "pass_name", "kwargs"),
    GROWTH,
    ids=[f"{m}-{p}-{i}" for i, (m, p, _) in enumerate(GROWTH)],
)
def test_growth_on_the_imported_graphs_is_exact(name: str, pass_name: str, kwargs: dict) -> None:
    grows_exactly(IMPORTED[name], pass_name, kwargs)


@pytest.mark.parametrize(
    ("name", "stage"), [("gpt2-tied", "transformer.h"), ("llama-tied", "model.layers")]
)
def test_the_module_list_of_blocks_becomes_a_stage(name: str, stage: str, tmp_path) -> None:
    """The blocks keep the module's names (``transformer.h.0.attn``); the stage's template
    is block 0 with local names (``mlp.c_fc``); a grown block is named as the next module
    of the list would be, and the graph saves and loads with its stage."""
    graph = GRAPHS[name]
    assert graph.stages[stage].depth == 2 and graph.stages[stage].prefix == ""
    template = graph.blocks[graph.stages[stage].block]
    first = [n.name for n in graph.nodes if n.name.startswith(f"{stage}.0.")]
    assert [f"{stage}.0.{t.name}" for t in template.nodes] == first
    grown = run("insert_block", graph, stage=stage).graph
    assert f"{stage}.2.{template.output}" in grown.node_map
    gi.save(grown, tmp_path / "grown")
    back = gi.load(tmp_path / "grown")
    assert back.stages == grown.stages and back.blocks == grown.blocks
    assert [n.name for n in back.nodes] == [n.name for n in grown.nodes]


# ---- what is refused, by module path ----------------------------------------------------


class OddAttention(nn.Module):
    """Self-attention through SDPA with a mask or scale grow-ir's attention does not have."""

    def __init__(self, mask: torch.Tensor | None = None, scale: float | None = None) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))
        self.register_buffer("bias", mask if mask is not None else torch.zeros(1))
        self.masked, self.scale = mask is not None, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, 2, 4).transpose(1, 2)

        y = nn.functional.scaled_dot_product_attention(
            heads(self.q(x)),
            heads(self.k(x)),
            heads(self.v(x)),
            attn_mask=self.bias if self.masked else None,
            scale=self.scale,
        )
        return self.o(y.transpose(1, 2).reshape(n, length, 8))


class Wrapper(nn.Module):
    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.block = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def test_plain_sdpa_attention_imports() -> None:
    x = torch.randn(2, 5, 8)
    graph = gi.from_torch(Wrapper(OddAttention()).eval(), x)  # checked against the module
    assert graph.node("block").op == "attention"
    assert graph.node("block").attrs.causal is False


@pytest.mark.parametrize(
    ("attn", "reason"),
    [
        (OddAttention(mask=torch.randn(5, 5)), "adds a float bias to its scores"),
        (OddAttention(mask=torch.rand(5, 5) > 0.5), "not all-visible or lower-triangular"),
        (OddAttention(scale=0.1), "scales scores by 0.1"),
    ],
    ids=["alibi-like bias", "random mask", "scale"],
)
def test_attention_grow_ir_lacks_is_refused_naming_the_module(attn: nn.Module, reason: str) -> None:
    with pytest.raises(ImportRefused) as info:
        gi.from_torch(Wrapper(attn).eval(), torch.randn(2, 5, 8))
    lines = [line for line in info.value.constructs if line.startswith("block (OddAttention)")]
    assert len(lines) == 1 and reason in lines[0], info.value.constructs


class WrittenOut(nn.Module):
    """Heads attended with matmul/softmax/matmul: unscaled (not grow-ir's attention, but
    every op has a rule) or scaled, across two inputs (cross-attention)."""

    def __init__(self, cross: bool) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(8, 8) for _ in range(3))
        self.cross = cross

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, 2, 4).transpose(1, 2)

        source = y if self.cross else x
        q, k, v = heads(self.q(x)), heads(self.k(source)), heads(self.v(source))
        scores = q @ k.transpose(-1, -2)
        if self.cross:
            scores = scores * 0.5
        return (scores.softmax(-1) @ v).sum(1)


def test_an_unscaled_written_out_attention_imports_op_by_op() -> None:
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    graph = gi.from_torch(WrittenOut(cross=False).eval(), (x, y))  # checked
    ops = {n.op for n in graph.nodes}
    assert {"matmul", "softmax"} <= ops and "attention" not in ops


def test_a_written_out_cross_attention_is_refused_saying_why() -> None:
    with pytest.raises(ImportRefused) as info:
        gi.from_torch(WrittenOut(cross=True).eval(), (torch.randn(2, 5, 8), torch.randn(2, 5, 8)))
    lines = info.value.constructs
    assert "<root> (WrittenOut): mul.Tensor with a scalar operand (0.5)" in lines
    assert (
        "<root> (WrittenOut): eager attention (matmul, softmax, matmul) not recognised: "
        "projects q, k and v from different values (grow-ir: self-attention)"
    ) in lines


@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied"])
def test_a_model_with_its_kv_cache_on_imports_and_keeps_its_config(name: str) -> None:
    """Hugging Face's default ``use_cache=True`` returns a ``DynamicCache`` that
    torch.export cannot return; the import captures the model with the cache off (the
    cache is not part of what it computes) and gives ``config.use_cache`` back."""
    model = built(MAKERS[name])
    model.config.use_cache = True
    x = tokens(0)
    with torch.no_grad():
        assert model(x).past_key_values is not None  # the cache is really on
    graph = gi.from_torch(model, x)
    assert model.config.use_cache is True
    assert list(graph.outputs) == ["logits"]
    with torch.no_grad():
        want = model(tokens(1)).logits
        assert relative(to_torch(graph).eval()(tokens(1)), want) <= TOL


@pytest.mark.parametrize("name", ["gpt2-tied", "llama-untied"])
def test_length_dim_gives_a_graph_of_any_length(name: str) -> None:
    """Imported from 9 tokens with ``length_dim``, the input is ``[batch, seq]`` and the
    graph computes what Hugging Face computes on 5 and 17 tokens (positions, masks and
    rotary tables are the nodes' own, computed from the input's length)."""
    model = MODELS[name]
    graph = gi.from_torch(model, tokens(0), length_dim=True)
    assert graph.inputs["input_ids"].shape == ("batch", "seq")
    for seed, length in ((1, 5), (2, 17)):
        x = tokens(seed, n=2, length=length)
        with torch.no_grad():
            want = model(x).logits
            got = to_torch(graph).eval()(x)
        got = got if isinstance(got, torch.Tensor) else next(iter(got.values()))
        assert relative(got, want) <= TOL


class FixedLength(nn.Module):
    """Token embeddings flattened into one linear layer: a function of 6 tokens only."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 4)
        self.head = nn.Linear(24, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).flatten(1))


def test_length_dim_refuses_a_graph_that_holds_at_one_length_only() -> None:
    with pytest.raises(GrowError) as err:
        gi.from_torch(FixedLength(), torch.randint(0, 50, (2, 6)), length_dim=True)
    assert err.value.field == "length_dim" and err.value.node == "flatten"
    assert "only at the example's length" in str(err.value)
    assert gi.from_torch(FixedLength(), torch.randint(0, 50, (2, 6))).inputs["ids"].shape == (
        "batch",
        6,
    )
