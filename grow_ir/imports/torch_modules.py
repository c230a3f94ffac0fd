"""Modules imported whole: every ATen op a call of one of them runs becomes one IR node.

``nn.MultiheadAttention`` (and grow-ir's own lowering of ``attention``) decomposes under
torch.export into some thirty view, transpose and matmul ops; grow-ir has the module as
one op, so the ops of each call (one ``nn_module_stack`` entry, ``attn@1`` for a second
call) are taken together: the call's one outside input is the node's input, its one value
used outside is the node's output, and the module's own attributes give the node's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import fx, nn

from grow_ir.backends.torch_modules import SelfAttention
from grow_ir.imports.torch_rules import Context, Unsupported


@dataclass(frozen=True)
class Call:
    """The fx nodes of one call of a module imported whole."""

    path: str
    module: nn.Module
    nodes: tuple[fx.Node, ...]

    def outside_inputs(self, ctx: Context) -> list[fx.Node]:
        """Values the call reads that it did not compute (parameters excluded)."""
        inside = {n.name for n in self.nodes}
        seen: dict[str, fx.Node] = {}
        for n in self.nodes:
            for a in n.all_input_nodes:
                if a.name not in inside and a.name not in ctx.fqns:
                    seen.setdefault(a.name, a)
        return list(seen.values())

    def outside_outputs(self) -> list[fx.Node]:
        """Values of the call that something after it reads."""
        inside = {n.name for n in self.nodes}
        return [n for n in self.nodes if any(u.name not in inside for u in n.users)]


CallRule = Callable[[Context, Call], None]


def _self_attention(ctx: Context, call: Call) -> None:
    m = call.module
    if isinstance(m, nn.MultiheadAttention):
        if not m.batch_first:
            raise Unsupported("is not batch first (grow-ir: batch_first=True)")
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise Unsupported("has separate q/k/v sizes, bias_k/bias_v or add_zero_attn")
        causal = False
    else:
        causal = m.causal
    inputs = call.outside_inputs(ctx)
    if len(inputs) != 1:
        raise Unsupported(
            f"reads {len(inputs)} values ({', '.join(a.name for a in inputs)}); grow-ir's "
            "attention is self-attention on one input, without a mask"
        )
    outputs = call.outside_outputs()
    x = inputs[0]
    if len(outputs) != 1 or ctx.shape(outputs[0]) != ctx.shape(x):
        raise Unsupported("returns its attention weights to the model (need_weights)")
    attrs = {
        "num_heads": int(m.num_heads),
        "bias": m.in_proj_bias is not None,
        "dropout": float(m.dropout),
        "causal": bool(causal),
    }
    if isinstance(m, SelfAttention) and m.head_dim * m.num_heads != m.embed_dim:
        attrs["head_dim"] = int(m.head_dim)  # heads grown apart from the embedding
    keys = {
        "in_proj_weight": f"{call.path}.in_proj_weight",
        "in_proj_bias": f"{call.path}.in_proj_bias" if attrs["bias"] else None,
        "out_proj.weight": f"{call.path}.out_proj.weight",
        "out_proj.bias": f"{call.path}.out_proj.bias" if attrs["bias"] else None,
    }
    ctx.add_layer(outputs[0], "attention", [ctx.value(x)], attrs, keys)


WHOLE: dict[type[nn.Module], CallRule] = {
    nn.MultiheadAttention: _self_attention,
    SelfAttention: _self_attention,
}
"""Module class -> the rule that imports one call of it."""


def calls(graph: fx.Graph, root: nn.Module) -> dict[str, Call]:
    """Every call of a module in :data:`WHOLE`, by the name of its first fx node."""
    grouped: dict[str, tuple[str, nn.Module, list[fx.Node]]] = {}
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
            try:
                module = root.get_submodule(path)
            except AttributeError:
                continue
            if type(module) in WHOLE:
                grouped.setdefault(key, (path, module, []))[2].append(node)
                break
    return {nodes[0].name: Call(path, m, tuple(nodes)) for path, m, nodes in grouped.values()}
