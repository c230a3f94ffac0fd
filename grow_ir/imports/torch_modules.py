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
        """Values the call reads that it did not compute, other than the module's own
        parameters (a buffer or parameter of another module counts: an ``attn_mask``
        kept as a buffer of the model is a value the call reads)."""
        own = {id(p) for p in self.module.parameters()}
        inside = {n.name for n in self.nodes}
        seen: dict[str, fx.Node] = {}
        for n in self.nodes:
            for a in n.all_input_nodes:
                if a.name not in inside and not _is_parameter_of(ctx, a, own):
                    seen.setdefault(a.name, a)
        return list(seen.values())

    def outside_outputs(self) -> list[fx.Node]:
        """Values of the call that something after it reads."""
        inside = {n.name for n in self.nodes}
        return [n for n in self.nodes if any(u.name not in inside for u in n.users)]


def _is_parameter_of(ctx: Context, node: fx.Node, own: set[int]) -> bool:
    """True when ``node`` is the placeholder of a parameter in ``own`` (by identity: a
    module registered under two paths has one state_dict key)."""
    key = ctx.fqns.get(node.name)
    if key is None:
        return False
    try:
        return id(ctx.root.get_parameter(key)) in own
    except AttributeError:  # a buffer
        return False


CallRule = Callable[[Context, Call], None]


def _self_attention(ctx: Context, call: Call) -> None:
    m = call.module
    if isinstance(m, nn.MultiheadAttention):
        _check_multihead(m)
        causal = False  # is_causal needs an attn_mask, which the call then reads: refused
    else:
        causal = m.causal
    inputs = call.outside_inputs(ctx)
    if len(inputs) != 1:
        read = ", ".join(
            f"buffer '{ctx.fqns[a.name]}'" if a.name in ctx.fqns else a.name for a in inputs
        )
        raise Unsupported(
            f"reads {len(inputs)} values ({read}); grow-ir's attention is self-attention "
            "on one input (query, key and value the same tensor), without attn_mask or "
            "key_padding_mask"
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


def _check_multihead(m: nn.MultiheadAttention) -> None:
    """Refuse, naming the attribute, what grow-ir's attention does not compute."""
    if not m.batch_first:
        raise Unsupported("has batch_first=False (grow-ir's attention is batch first)")
    if not m._qkv_same_embed_dim:
        raise Unsupported(
            f"has kdim={m.kdim}, vdim={m.vdim} other than embed_dim={m.embed_dim} "
            "(grow-ir: query, key and value of one size)"
        )
    if m.bias_k is not None:
        raise Unsupported("has bias_k and bias_v (add_bias_kv=True; grow-ir: no learned key row)")
    if m.add_zero_attn:
        raise Unsupported("has add_zero_attn=True (grow-ir: no zero key row)")


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
