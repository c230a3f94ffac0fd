"""The PyTorch backend: lower a Graph to a ``torch.fx.GraphModule`` and take weights back.

The fx graph is built directly from the IR (no tracing) and compiled by fx into real Python
``forward`` code, so a call runs no interpreter. Two lowering tables, keyed by op:

- ``MODULES``: ops with parameters or a train/eval mode become a call of one ``torch.nn``
  module at the node's scoped name, so ``state_dict()`` keys are the graph's parameter names
  and module hooks work;
- ``FUNCTIONS``: stateless ops become one plain tensor function call (``torch.relu``,
  ``x + y``...), as a hand-written ``forward`` would call them, with no module call overhead.

Every fx node is named after its IR node (dots become underscores), so the generated code
reads like the spec: ``s1_b0_sum = s1_b0_bn2 + stem_act``.
"""

from __future__ import annotations

import operator
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from itertools import compress
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.graph import PythonCode

from grow_ir.backends import torch_build, torch_chunks, torch_reuse
from grow_ir.backends.torch_build import untyped
from grow_ir.backends.torch_chunks import Step, fx_graph
from grow_ir.backends.torch_modules import (
    LearnedTensor,
    MaskedConv1d,
    MaskedConv2d,
    MaskedLinear,
    Mix,
    ScaledEmbedding,
    SelfAttention,
    StochasticDepth,
    positions,
    relu_unit_slope,
)
from grow_ir.errors import GrowError
from grow_ir.ir.graph import Graph, Node
from grow_ir.ir.ops.base import param_dtype
from grow_ir.ir.ops.dense import spatial
from grow_ir.ir.ops.elementwise import pool_geometry
from grow_ir.ir.ops.shape import permutation
from grow_ir.ir.ops.spatial import conv_transpose_geometry
from grow_ir.ir.types import DTYPES, TensorType
from grow_ir.ir.verify import verify

ModuleFactory = torch_build.Factory
"""Builds a node's module (on the meta device) from its attributes and input types
(declared :func:`~grow_ir.backends.torch_build.untyped` when it reads none of them)."""

Call = Callable[..., fx.Node]
"""``call(target, args, kwargs=None, name=None)`` adds one call_function node named after
the IR node being lowered (or ``name``) and returns it."""

Emitter = Callable[[Any, Sequence[TensorType], list[fx.Node], Call], fx.Node]
"""Lowers one stateless node: attributes, input types, input values and ``call``."""


# ---- ops lowered to a module call --------------------------------------------------------


def _conv(n: int) -> ModuleFactory:
    plain = nn.Conv1d if n == 1 else nn.Conv2d
    masked = MaskedConv1d if n == 1 else MaskedConv2d

    def make(a: Any, ins: Sequence[TensorType]) -> nn.Module:
        return (masked if a.masked else plain)(
            ins[0].shape[1],
            a.out_channels,
            spatial(a.kernel_size, n),
            stride=a.stride,
            padding=a.padding,
            dilation=a.dilation,
            groups=a.groups,
            bias=a.bias,
            device="meta",
            dtype=ins[0].torch_dtype,
        )

    return make


def _conv_transpose(a: Any, ins: Sequence[TensorType]) -> nn.Module:
    k, s, p, op, d = conv_transpose_geometry(a)
    return nn.ConvTranspose2d(
        ins[0].shape[1],
        a.out_channels,
        k,
        stride=s,
        padding=p,
        output_padding=op,
        groups=a.groups,
        bias=a.bias,
        dilation=d,
        device="meta",
        dtype=ins[0].torch_dtype,
    )


def _batchnorm(a: Any, ins: Sequence[TensorType]) -> nn.Module:
    cls = nn.BatchNorm2d if ins[0].rank == 4 else nn.BatchNorm1d
    return cls(
        ins[0].shape[1],
        eps=a.eps,
        momentum=a.momentum,
        affine=a.affine,
        device="meta",
        dtype=ins[0].torch_dtype,
    )


def _embedding(a: Any) -> nn.Embedding:
    """The ``nn.Embedding`` of an embedding node (a :class:`ScaledEmbedding` with
    ``scale``). ``from_pretrained`` skips nn.Embedding's normal_ init, which on the meta
    device goes through a decomposition that imports torch._dynamo (seconds, on first
    use)."""
    cls = nn.Embedding if a.scale is None else ScaledEmbedding
    module = cls.from_pretrained(
        torch.empty(a.num_embeddings, a.embedding_dim, device="meta"),
        freeze=False,
        padding_idx=a.padding_idx,
    )
    if a.scale is not None:
        module.scale = a.scale
    return module


MODULES: dict[str, ModuleFactory] = {
    "linear": lambda a, ins: (MaskedLinear if a.masked else nn.Linear)(
        ins[0].shape[-1], a.out_features, bias=a.bias, device="meta", dtype=ins[0].torch_dtype
    ),
    "conv1d": _conv(1),
    "conv2d": _conv(2),
    "conv_transpose2d": _conv_transpose,
    "batchnorm": _batchnorm,
    "layernorm": lambda a, ins: nn.LayerNorm(
        ins[0].shape[-1],
        eps=a.eps,
        elementwise_affine=a.elementwise_affine,
        bias=a.bias,
        device="meta",
        dtype=ins[0].torch_dtype,
    ),
    "rmsnorm": lambda a, ins: nn.RMSNorm(
        ins[0].shape[-1],
        eps=a.eps,
        elementwise_affine=a.elementwise_affine,
        device="meta",
        dtype=ins[0].torch_dtype,
    ),
    "embedding": untyped(lambda a, ins: _embedding(a)),
    "attention": lambda a, ins: SelfAttention(
        ins[0].shape[2],
        a.num_heads,
        bias=a.bias,
        dropout=a.dropout,
        causal=a.causal,
        head_dim=a.head_dim,
        num_kv_heads=a.num_kv_heads,
        rope_theta=a.rope_theta,
        rotary_dim=a.rotary_dim,
        qk_norm_eps=a.qk_norm_eps,
        device="meta",
        dtype=ins[0].torch_dtype,
    ),
    "dropout": untyped(lambda a, ins: nn.Dropout(p=a.p)),
    "stochastic_depth": untyped(lambda a, ins: StochasticDepth(a.p, a.mode)),
    "mix": lambda a, ins: Mix(len(ins), device="meta", dtype=ins[0].torch_dtype),
    "parameter": lambda a, ins: LearnedTensor(  # float even when expanded to int ids
        a.shape, device="meta", dtype=DTYPES[param_dtype(ins)]
    ),
}
"""Ops lowered to a call of an nn.Module at the node's name (parameters or a mode)."""


# ---- ops lowered to a tensor function call -----------------------------------------------


def typed(emit: Emitter) -> Emitter:
    """Declares that ``emit`` reads its input types: the generated code of its nodes is
    keyed by them. Every other emitter gets no types (an empty sequence), so the code of a
    ``relu`` or an ``add`` is taken over when a pass changes only the shapes it sees."""
    emit.reads_types = True  # type: ignore[attr-defined]
    return emit


def _unary(fn: Callable[..., torch.Tensor], **kwargs: Callable[[Any], Any]) -> Emitter:
    """A one-input function; ``kwargs`` map keyword names to functions of the attributes."""

    def emit(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
        return call(fn, (args[0],), {k: f(a) for k, f in kwargs.items()})

    return emit


def _fold(fn: Callable[[Any, Any], Any]) -> Emitter:
    """A left fold of a binary operator over every input (``x + y + z``)."""

    def emit(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
        acc = args[0]
        for i, y in enumerate(args[1:], start=2):
            acc = call(fn, (acc, y), name=None if i == len(args) else "partial")
        return acc

    return emit


def _max_pool(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    k, s, p, d = pool_geometry(a)
    return call(torch.max_pool2d, (args[0], k, s, p, d, a.ceil_mode))


def _avg_pool(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    k, s, p, _ = pool_geometry(a)
    return call(F.avg_pool2d, (args[0], k, s, p, a.ceil_mode, a.count_include_pad))


@typed
def _global_avgpool(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    return call(torch.mean, (args[0], tuple(range(2, ins[0].rank))))


def _upsample(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    return call(
        F.interpolate,
        (args[0],),
        {
            "size": a.size,
            "scale_factor": a.scale_factor,
            "mode": a.mode,
            "align_corners": a.align_corners,
        },
    )


@typed
def _slice(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    axis = a.dim % ins[0].rank
    index = (*[slice(None)] * axis, slice(a.start, a.end, a.step))
    return call(operator.getitem, (args[0], index))


@typed
def _permute(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    return call(torch.permute, (args[0], permutation("permute", a, ins[0].rank)))


def _relu(a: Any, ins: Sequence[TensorType], args: list[fx.Node], call: Call) -> fx.Node:
    # grad_at_zero=1: the same output, with derivative 1 at exactly 0 (GradMax's grown units)
    return call(relu_unit_slope if a.grad_at_zero else torch.relu, (args[0],))


FUNCTIONS: dict[str, Emitter] = {
    "relu": _relu,
    "gelu": _unary(F.gelu, approximate=lambda a: a.approximate),
    "silu": _unary(F.silu),
    "hardtanh": _unary(F.hardtanh, min_val=lambda a: a.min_val, max_val=lambda a: a.max_val),
    "relu6": _unary(F.relu6),
    "hardswish": _unary(F.hardswish),
    "hardsigmoid": _unary(F.hardsigmoid),
    "leaky_relu": _unary(F.leaky_relu, negative_slope=lambda a: a.negative_slope),
    "elu": _unary(F.elu, alpha=lambda a: a.alpha),
    "tanh": _unary(torch.tanh),
    "sigmoid": _unary(torch.sigmoid),
    "identity": lambda a, ins, args, call: args[0],
    "softmax": _unary(torch.softmax, dim=lambda a: a.dim),
    "log_softmax": _unary(torch.log_softmax, dim=lambda a: a.dim),
    "maxpool2d": _max_pool,
    "avgpool2d": _avg_pool,
    "global_avgpool": _global_avgpool,
    "adaptive_avgpool2d": _unary(F.adaptive_avg_pool2d, output_size=lambda a: a.output_size),
    "upsample": _upsample,
    "flatten": _unary(torch.flatten, start_dim=lambda a: a.start_dim, end_dim=lambda a: a.end_dim),
    "add": _fold(operator.add),
    "mul": _fold(operator.mul),
    "sub": _fold(operator.sub),
    "div": _fold(operator.truediv),
    "mean": _unary(torch.mean, dim=lambda a: a.dim, keepdim=lambda a: a.keepdim),
    "sum": _unary(torch.sum, dim=lambda a: a.dim, keepdim=lambda a: a.keepdim),
    "reshape": lambda a, ins, args, call: call(torch.reshape, (args[0], a.shape)),
    "unflatten": lambda a, ins, args, call: call(torch.unflatten, (args[0], a.dim, a.sizes)),
    "transpose": lambda a, ins, args, call: call(torch.transpose, (args[0], a.dim0, a.dim1)),
    "permute": _permute,
    "squeeze": lambda a, ins, args, call: call(torch.squeeze, (args[0], a.dim)),
    "unsqueeze": lambda a, ins, args, call: call(torch.unsqueeze, (args[0], a.dim)),
    "select": lambda a, ins, args, call: call(torch.select, (args[0], a.dim, a.index)),
    "slice": _slice,
    "pad": lambda a, ins, args, call: call(F.pad, (args[0], a.pad), {"value": a.value}),
    "matmul": _fold(torch.matmul),
    "positions": lambda a, ins, args, call: call(
        positions, (args[0], a.dim, a.batch_axis, a.padding_idx)
    ),
    "concat": lambda a, ins, args, call: call(torch.cat, (list(args),), {"dim": a.dim}),
}
"""Stateless ops lowered to tensor functions (no module, no call overhead)."""


TiedEmitter = Callable[[Any, list[fx.Node], dict[str, fx.Node], Call], fx.Node]
"""Lowers a node tied to another op's parameters: attributes, input values, its parameters
(read from the owner's module, by local name) and ``call``."""

TIED: dict[str, TiedEmitter] = {
    "linear": lambda a, args, w, call: call(F.linear, (args[0], w["weight"], w.get("bias"))),
}
"""Ops that may read the parameters of a node of another op (``Node.share``, a tie), as one
functional call on the owner's tensors (a linear head tied to its embedding)."""


# ---- lowering ----------------------------------------------------------------------------


def build_module(graph: Graph, node: Node) -> nn.Module:
    """The nn.Module of one node, holding copies of the graph's tensors for it.

    Guarantees: the module's ``state_dict()`` keys, prefixed with ``node.param_prefix``,
    are exactly the node's parameter names, and its tensors share no storage with
    ``graph.params``.
    """
    return torch_build.build(graph, node, MODULES[node.op]).module


def selected_outputs(graph: Graph, task: str | None) -> dict[str, str]:
    """The outputs to lower: all of them, or ``task`` alone.

    Raises:
        GrowError: ``task`` is not an output of the graph.
    """
    if task is None:
        return dict(graph.outputs)
    if task not in graph.outputs:
        raise GrowError(
            "unknown task",
            field="task",
            expected=f"one of the graph's outputs ({', '.join(graph.outputs)})",
            found=repr(task),
        )
    return {task: graph.outputs[task]}


def needed_nodes(graph: Graph, outputs: dict[str, str]) -> list[Node]:
    """The nodes the given outputs depend on, in graph order."""
    wanted = set(outputs)
    deps = graph.output_deps
    return [n for n in graph.nodes if not deps[n.name].isdisjoint(wanted)]


class LoweredModule(fx.GraphModule):
    """The ``fx.GraphModule`` that :func:`to_torch` returns, called like any nn.Module.

    fx replaces ``__call__`` of every GraphModule with a wrapper that, when the forward
    raises, prints the generated line at fault; it costs two extra Python calls and a
    ``try`` on every call (about a microsecond, a few percent of a small model's forward).
    A lowered module keeps ``nn.Module.__call__`` (looked up on every call, so tracers that
    patch it still see it); Python's traceback already shows the generated line.
    """

    frozen_stats: tuple[str, ...] = ()
    """Submodules whose buffers (BatchNorm running statistics) another task also reads:
    they stay in eval mode, so training this task cannot move those statistics."""

    built: Mapping[str, torch_reuse.Built] = MappingProxyType({})
    """How each submodule was built, by target (see :mod:`grow_ir.backends.torch_reuse`):
    what a later ``to_torch(..., reuse=self)`` checks before taking one over."""

    def train(self, mode: bool = True) -> LoweredModule:
        """``nn.Module.train``, except that :attr:`frozen_stats` submodules stay in eval mode."""
        super().train(mode)
        for name in self.frozen_stats:
            self.get_submodule(name).eval()
        return self

    chunks: Mapping[str, torch_chunks.Chunk] = MappingProxyType({})
    """The generated functions ``forward`` calls (through its sections), by first node
    (see :mod:`grow_ir.backends.torch_chunks`): what a later ``to_torch(..., reuse=self)``
    takes over unchanged."""

    lowering: Lowering | None = None
    """What a later ``to_torch(..., reuse=self)`` compares against (None after a deepcopy
    or pickling: nothing is then taken over)."""

    _pending: Callable[[], fx.Graph] | None = None

    @property
    def graph(self) -> fx.Graph:
        """The one fx graph of the whole forward, built on first use: the forward that
        runs is the chunks' code, fx's code for the same nodes, and nothing at run time
        reads the graph, so a growth step does not pay for it."""
        pending = self.__dict__.get("_pending")
        if pending is not None:
            fxg = pending()
            fxg.owning_module = self
            self.__dict__["_graph"] = fxg
            self.__dict__["_pending"] = None
        return self._graph

    @graph.setter
    def graph(self, g: fx.Graph) -> None:
        self.__dict__["_pending"] = None
        fx.GraphModule.graph.fset(self, g)  # type: ignore[attr-defined]

    @property
    def code(self) -> str:
        """The Python code of ``forward``: after a lowering, ``forward``, then the
        sections and the chunks it calls (joined on first use); after ``recompile()``,
        fx's one function."""
        if self.__dict__.get("_code") is None and self.lowering is not None:
            self.__dict__["_code"] = self.lowering.plan.code
        return fx.GraphModule.code.fget(self)  # type: ignore[attr-defined]

    @classmethod
    def empty(cls, class_name: str) -> LoweredModule:
        """A lowered module with no submodules and no code yet (``to_torch`` sets them),
        without generating and compiling the code of an empty fx graph, as fx's
        constructor otherwise does: a copy of one that constructor made (attributes, every
        dict, list and set copied), holding a new empty fx graph, of a class of its own
        (``class_name``) as fx gives every GraphModule."""
        shape = _EMPTY.get(cls)
        if shape is None:
            shape = _EMPTY[cls] = torch_build.Shape.of(cls._constructed())
        gm = shape.copy()[0]
        made = type(shape.parts[0][0])
        own = type(made.__name__, (cls,), {"__module__": made.__module__})
        own.__qualname__ = made.__qualname__  # fx finds the user class past it by name
        own.__name__ = class_name
        object.__setattr__(gm, "__class__", own)
        fxg = fx.Graph()
        fxg.owning_module = gm
        gm.__dict__["_graph"] = fxg
        return gm

    @classmethod
    def _constructed(cls) -> LoweredModule:
        """An empty lowered module, as fx's constructor makes it (without code)."""
        gm = cls.__new__(cls)
        gm.__dict__["_no_code"] = True
        fx.GraphModule.__init__(gm, nn.Module(), fx.Graph())
        del gm.__dict__["_no_code"]
        gm._prologue_start = 0
        return gm

    def recompile(self) -> PythonCode:
        """Regenerate ``forward`` from ``self.graph`` as one function (see
        ``fx.GraphModule.recompile``)."""
        if self.__dict__.get("_no_code"):
            return None  # type: ignore[return-value]  (only ``empty`` calls it so)
        self.graph  # noqa: B018  (built, if it is still pending)
        code = super().recompile()
        cls = type(self)  # fx gives each GraphModule a class of its own
        if "__call__" in vars(cls):
            del cls.__call__
        return code

    def __deepcopy__(self, memo: dict[int, Any]) -> LoweredModule:
        self.graph  # noqa: B018  (fx's deepcopy reads the graph from __dict__)
        return super().__deepcopy__(memo)

    def __reduce__(self) -> tuple[Any, ...]:
        # fx pickles the code of the graph, so the module switches to fx's one function
        # first; the chunks' compiled functions cannot be pickled and are only a cache.
        self.recompile()
        self.__dict__["chunks"] = {}
        return super().__reduce__()

    def __reduce_package__(self, exporter: Any) -> tuple[Any, ...]:
        self.recompile()
        self.__dict__["chunks"] = {}
        return super().__reduce_package__(exporter)


_EMPTY: dict[type[LoweredModule], torch_build.Shape] = {}
"""How to copy an empty lowered module, by class (see ``LoweredModule.empty``)."""


Scopes = dict[str, tuple[nn.Module, dict[str, nn.Module]]]
"""Every scope of a lowered module by path (``""``: the module itself): its container and a
copy of the container's ``_modules`` as the lowering left it."""


class Lowering:
    """What one lowering was made from, for the next ``to_torch(..., reuse=...)`` to
    compare against: the graph lowered (weakly: the module does not keep its tensors
    alive) and its types, the steps by node, the generated code, the scopes and the build
    records placed in them, and those records flattened. Neither copied nor pickled (a
    copy's modules are other objects: it reuses nothing)."""

    def __init__(
        self,
        graph: Graph,
        types: Mapping[str, TensorType],
        steps: dict[str, Step],
        plan: torch_chunks.Plan,
        scopes: Scopes,
        placed: Mapping[str, torch_reuse.Built],
    ) -> None:
        self.graph = weakref.ref(graph)
        self.types = types
        self.steps = steps
        self.plan = plan
        self.scopes = scopes
        self.placed = placed
        """The build records whose modules the scopes hold, in the order they were placed."""
        self.records: torch_reuse.Records | None = None

    def records_of(self, built: Mapping[str, torch_reuse.Built]) -> torch_reuse.Records:
        """``built`` as :class:`~grow_ir.backends.torch_reuse.Records`, made on first use
        and kept while ``built`` is the same mapping (``update_params`` relinks, and a
        module relinked before its next growth step never needs the first ones)."""
        if self.records is None or self.records.built is not built:
            self.records = torch_reuse.Records(built)
        return self.records

    def in_place(self) -> bool:
        """Every scope holds what the lowering put in it (so every submodule is where the
        lowering put it): one dict comparison per scope."""
        scopes = self.scopes.values()
        now = map(_MODULES, (c for c, _ in scopes))
        return all(map(operator.eq, now, (table for _, table in scopes)))

    def __deepcopy__(self, memo: dict[int, Any]) -> None:
        return None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(None), ())


_MODULES = operator.attrgetter("_modules")


def to_torch(
    graph: Graph, task: str | None = None, *, reuse: nn.Module | None = None
) -> fx.GraphModule:
    """Lower ``graph`` to a ``torch.fx.GraphModule`` with generated forward code.

    Guarantees:

    - the forward takes one argument per graph input, by the input's name (for ``task``,
      only the inputs that output reads), and computes exactly what PyTorch's modules and
      functions of the same names and attributes compute;
    - one submodule per node with parameters or a train/eval mode, at its scoped name
      (a node that ``share``\\ s another's parameters calls that node's submodule);
      stateless nodes are plain tensor function calls named after the node;
    - ``state_dict()`` keys equal the graph's parameter names (for ``task``, the subset
      that output uses); the tensors are copies, so training never changes ``graph``;
    - one output gives a tensor, several a dict by output name; with ``task`` only that
      output is computed and ``requires_grad`` is set only on parameters whose value
      affects no other output (``Graph.param_owners``), and submodules whose buffers
      another output reads (shared BatchNorm statistics) stay in eval mode even under
      ``.train()``, so training ``task`` cannot change another task;
    - nothing is pinned to a device or dtype: ``.to(device, dtype)``, autocast and
      ``torch.compile`` (without graph breaks) work;
    - the module is in train mode (``frozen_stats`` in eval), with no gradients;
    - with ``reuse`` (a module an earlier ``to_torch`` made, possibly trained, moved,
      compiled or wrapped in DDP), each submodule that would be built exactly as ``reuse``
      holds it (same op, attributes and input types, and tensors whose values are known to
      equal this graph's: see :mod:`grow_ir.backends.torch_reuse`) is that very submodule
      object, now shared by both modules (and so is every scope holding exactly the same
      submodules), gradients cleared and ``requires_grad`` set as above; every other
      submodule is built afresh. The result computes bitwise what
      ``to_torch(graph, task)`` computes (on the reused modules' device), with the same
      ``state_dict`` keys; likewise every chunk of generated code whose nodes lower to the
      same code (see :mod:`grow_ir.backends.torch_chunks`) is taken over compiled: a
      growth step costs the nodes it changed;
    - ``forward`` is fx's code for the nodes, in chunk functions called in order through
      section functions (the same code a fresh lowering generates); ``graph``, the one fx
      graph of it all, is built on first use, and ``recompile()`` turns the forward into
      one function.

    Raises:
        VerifyError: ``graph`` breaks an invariant of the IR.
        GrowError: ``task`` is not an output of the graph, or an op has no lowering.
    """
    root = _unwrap(reuse) if reuse is not None else None
    old_built, prior, records, in_place = _reusable(root)
    # a graph not verified yet (a copy made without ``replace``) is checked by what differs
    # from the graph ``reuse`` was lowered from, when that one is still alive
    verify(graph, prior.graph() if prior is not None else None)
    outputs = selected_outputs(graph, task)
    # verify: every node feeds some output, so all of them are needed without a task
    nodes = graph.nodes if task is None else needed_nodes(graph, outputs)
    changed = _changed_types(prior.types if prior is not None else None, graph.types)
    steps = _steps(graph, nodes, prior.steps if prior is not None else {}, changed)
    built, reused = _modules(graph, steps, old_built, records, changed)
    if task is None:
        inputs = list(graph.inputs)
    else:
        used_inputs = {i for n in nodes for i in n.inputs}
        inputs = [i for i in graph.inputs if i in used_inputs]
    plan = torch_chunks.plan(steps, inputs, outputs, _emit, prior.plan if prior else None)
    gm = LoweredModule.empty(_class_name(graph.name))
    if prior is not None and in_place:
        scopes = _nest(gm, built, prior.scopes, prior.placed)
    else:
        scopes = _nest(gm, built, {}, {})
    type(gm).forward = plan.forward
    gm._code = None  # the chunks' code, joined on first use (see ``code``)
    gm._lineno_map = None  # no map from lines of the chunks' code to graph nodes
    gm.__dict__["_pending"] = _whole_fx(steps, inputs, outputs)
    gm.chunks = plan.chunk_at
    gm.built = built
    by_node = {s.node.name: s for s in steps}
    gm.lowering = lowering = Lowering(graph, graph.types, by_node, plan, scopes, built)
    if task is not None:
        owners = graph.param_owners
        mine = frozenset({task})
        for name, p in gm.named_parameters():
            p.requires_grad_(owners.get(name) == mine)
            if reused:
                p.grad = None
        gm.frozen_stats = tuple(
            dict.fromkeys(
                name.rsplit(".", 1)[0]
                for name, _ in gm.named_buffers()
                if owners.get(name, mine) != mine
            )
        )
        return gm.train()
    # Everything built afresh is in train mode, requires gradients and has none: only
    # the reused modules and scopes may differ (checked together, in flat C-level maps:
    # when the records they were taken from are all fresh, so are they).
    if reused:
        containers = [c for c, _ in scopes.values()]
        if records is not None and records.fresh():
            torch_reuse.train_mode(containers)
        else:
            lowering.records_of(built).reset(containers)
    return gm


def _reusable(
    root: nn.Module | None,
) -> tuple[Mapping[str, torch_reuse.Built], Lowering | None, torch_reuse.Records | None, bool]:
    """The build records of ``root`` whose submodule is still in place, its lowering
    record, those build records to be checked together, and whether every scope is
    still as the lowering left it (then unchanged scopes may be shared)."""
    if root is None:
        return {}, None, None, False
    if not isinstance(root, LoweredModule):
        raise GrowError(
            "reuse needs a module that to_torch made",
            field="reuse",
            expected="a module returned by to_torch (possibly compiled or wrapped in DDP)",
            found=type(root).__name__,
        )
    prior = root.__dict__.get("lowering")
    if prior is not None and prior.in_place():
        return root.built, prior, prior.records_of(root.built), True
    out = {}
    for target, built in root.built.items():
        module: nn.Module | None = root
        for part in target.split("."):  # get_submodule, without its checks per level
            module = module._modules.get(part)
            if module is None:
                break
        if module is built.module:
            out[target] = built
    return out, prior, torch_reuse.Records(out), False


def _changed_types(
    old: Mapping[str, TensorType] | None, new: Mapping[str, TensorType]
) -> set[str] | None:
    """The values whose type differs from ``old`` (all of them without ``old``: None)."""
    if old is None:
        return None
    if old is new:
        return set()
    get = old.get
    return {k for k, t in new.items() if (o := get(k)) is not t and o != t}


def _check_lowerable(graph: Graph, nodes: Sequence[Node]) -> None:
    for n in nodes:
        if n.tied(graph) and n.op not in TIED:
            raise GrowError(
                f"op {n.op} cannot read the parameters of {graph.node(n.share or '').op} "
                f"'{n.share}' in PyTorch",
                node=n.name,
                field="share",
                expected=f"a node of op {' / '.join(TIED)} tied to another op, or of op "
                f"{graph.node(n.share or '').op}",
                found=repr(n.op),
            )
        if n.op not in FUNCTIONS and n.op not in MODULES:
            raise GrowError(
                f"op {n.op} has no PyTorch lowering",
                node=n.name,
                field="op",
                expected=f"one of {', '.join(sorted([*FUNCTIONS, *MODULES]))}",
                found=repr(n.op),
            )


def _steps(
    graph: Graph, nodes: Sequence[Node], prior: Mapping[str, Step], changed: set[str] | None
) -> list[Step]:
    """How each node lowers: the step of ``prior`` (an earlier lowering's, by node) for the
    very same node, if its emitter reads no input types or they are unchanged; a new
    step otherwise.

    Raises:
        GrowError: a node (new or changed) has no lowering.
    """
    if changed is None or not prior:
        return [_step(graph, n) for n in nodes]
    steps: list[Step] = []
    append = steps.append
    get = prior.get
    for n in nodes:
        s = get(n.name)
        # A share is rebuilt every time: whether it is a tie depends on its owner's op.
        if (
            s is not None
            and s.node is n
            and n.share is None
            and (not changed or not s.input_types or changed.isdisjoint(n.inputs))
        ):
            append(s)
        else:
            append(_step(graph, n))
    return steps


def _step(graph: Graph, n: Node) -> Step:
    _check_lowerable(graph, (n,))
    if n.op in FUNCTIONS:
        typed = getattr(FUNCTIONS[n.op], "reads_types", False)
        return torch_chunks.step(
            n, "function", input_types=tuple(graph.input_types(n)) if typed else ()
        )
    target = n.param_prefix
    if n.tied(graph):
        return torch_chunks.step(n, "tied", target, tuple(graph.params_of(n)))
    return torch_chunks.step(n, "module", target)


def _modules(
    graph: Graph,
    steps: Sequence[Step],
    old: Mapping[str, torch_reuse.Built],
    records: torch_reuse.Records | None,
    changed: set[str] | None,
) -> tuple[dict[str, torch_reuse.Built], int]:
    """The build record of every module ``steps`` call, by target, in the order the graph
    first uses them: those of ``old`` that still match (see
    :mod:`grow_ir.backends.torch_reuse`), new ones for the rest; and how many were
    taken over."""
    targets = dict.fromkeys(s.target for s in steps if s.target)
    stale = records.stale(graph.params) if records is not None and old else set()
    node_map = graph.node_map
    built: dict[str, torch_reuse.Built] = {}
    reused = 0
    for target in targets:
        owner = node_map[target]
        b = old.get(target)
        if b is not None and target not in stale:
            typed = torch_build.reads_types(MODULES[owner.op])
            same = b.node is owner
            if same and changed is not None:
                # the same node; its input types equal those it was built for when they
                # equal the earlier lowering's types, which ``changed`` is relative to,
                # and matter only if its factory reads them
                keep = not changed or not typed or changed.isdisjoint(owner.inputs)
            else:
                keep = b.matches(graph, owner, typed)
            if keep:
                built[target] = b if same else b.for_node(owner)
                reused += 1
                continue
        made = torch_build.build(graph, owner, MODULES[owner.op])
        built[target] = torch_reuse.record(owner, made)
    return built, reused


def _emit(
    fxg: fx.Graph, env: dict[str, fx.Node], scopes: dict[str, fx.Node], step: Step
) -> fx.Node:
    """The fx nodes of one step (see :data:`grow_ir.backends.torch_chunks.Emit`)."""
    n = step.node
    args = [env[i] for i in n.inputs]
    if step.kind == "function":
        return FUNCTIONS[n.op](n.attrs, step.input_types, args, _caller(fxg, n))
    target = step.target
    if step.kind == "tied":
        weights = {k[len(target) + 1 :]: fxg.get_attr(k) for k in step.weights}
        return TIED[n.op](n.attrs, args, weights, _caller(fxg, n))
    scope, _, leaf = target.rpartition(".")
    if not scope:
        return fxg.create_node("call_module", target, tuple(args), name=n.name)
    # A nested module is called through its scope, fetched once per forward (chunk)
    # (``s1_b0 = self.s1.b0`` then ``s1_b0.conv1(x)``): each level of a dotted
    # ``self.s1.b0.conv1`` costs a Python-level Module.__getattr__ on every use.
    if scope not in scopes:
        scopes[scope] = fxg.get_attr(scope)
    return fxg.create_node("call_method", leaf, (scopes[scope], *args), name=n.name)


def _whole_fx(
    steps: Sequence[Step], inputs: Sequence[str], outputs: dict[str, str]
) -> Callable[[], fx.Graph]:
    """The builder of the one fx graph of all ``steps`` (what ``LoweredModule.graph``
    shows; the forward that runs is the chunks')."""

    def returned(env: dict[str, fx.Node]) -> Any:
        if len(outputs) == 1:
            return env[next(iter(outputs.values()))]
        return {out: env[node] for out, node in outputs.items()}

    def build() -> fx.Graph:
        fxg = fx_graph(steps, inputs, _emit, returned, inputs=True)
        fxg.lint()
        return fxg

    return build


def _caller(fxg: fx.Graph, node: Node) -> Call:
    def call(
        target: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> fx.Node:
        label = node.name if name is None else f"{node.name}_{name}"
        return fxg.create_node("call_function", target, args, kwargs or {}, name=label)

    return call


def _nest(
    gm: nn.Module,
    built: Mapping[str, torch_reuse.Built],
    old: Scopes,
    placed: Mapping[str, torch_reuse.Built],
) -> Scopes:
    """Put each module at its dotted target, registered in graph order (so that
    state_dict() and parameters() list scopes in the order the graph first uses them).

    A scope of ``old`` (an earlier lowering's, every one of them as that lowering left
    it, holding the modules of ``placed``) that would hold exactly the same modules under
    the same names, in the same order, is that very container, now shared like the
    modules it holds; the others are new. Returns the scopes (see :data:`Scopes`).
    """
    if old and list(built) == list(placed):
        return _renest(gm, built, old, placed)
    tables: dict[str, dict[str, Any]] = {"": {}}
    inner: dict[str, list[tuple[str, str]]] = {}

    def open_scope(path: str) -> dict[str, Any]:
        outer, _, name = path.rpartition(".")
        parent = tables.get(outer)
        if parent is None:
            parent = open_scope(outer)
        parent[name] = None  # its place in the order; the container is known below
        inner.setdefault(outer, []).append((name, path))
        table = tables[path] = {}
        return table

    last_path, table = "", tables[""]
    for target, b in built.items():
        path, _, leaf = target.rpartition(".")
        if path != last_path:  # siblings come in runs: one scope look-up per run
            last_path = path
            table = tables.get(path)
            if table is None:
                table = open_scope(path)
        table[leaf] = b.module
    scopes: Scopes = {}
    for path in reversed(tables):  # inner scopes (opened after their outer one) first
        table = tables[path]
        for name, sub in inner.get(path, ()):
            table[name] = scopes[sub][0]
        if not path:
            continue
        was = old.get(path)
        if was is not None and was[1] == table and list(was[1]) == list(table):
            scopes[path] = was
        else:
            scopes[path] = _scope(table)
    gm._modules.update(tables[""])
    scopes[""] = (gm, dict(tables[""]))
    return scopes


def _renest(
    gm: nn.Module,
    built: Mapping[str, torch_reuse.Built],
    old: Scopes,
    placed: Mapping[str, torch_reuse.Built],
) -> Scopes:
    """What :func:`_nest` makes of ``built`` when its targets are those of ``placed``, in
    the same order (so every scope holds the same names, in the same order, as in
    ``old``): the scopes holding a module of ``built`` that is not ``placed``'s, and those
    holding them, are new; the others are taken over. It costs the modules that changed."""
    tables: dict[str, dict[str, Any]] = {}  # the new scopes' entries, by path

    def table_of(path: str) -> dict[str, Any]:
        table = tables.get(path)
        if table is None:
            table = tables[path] = dict(old[path][1])
        return table

    other = map(operator.is_not, map(_MODULE, built.values()), map(_MODULE, placed.values()))
    for target in compress(built, other):
        path, _, leaf = target.rpartition(".")
        table_of(path)[leaf] = built[target].module
    for path in list(tables):  # the scopes holding a new scope are new
        while path:
            path = path.rpartition(".")[0]
            table_of(path)
    scopes = dict(old)
    for path in sorted(tables, key=_depth, reverse=True):  # inner scopes first
        if path:
            scopes[path] = _scope(tables[path])
            outer, _, name = path.rpartition(".")
            tables[outer][name] = scopes[path][0]
    root = table_of("")
    gm._modules.update(root)
    scopes[""] = (gm, dict(root))
    return scopes


def _depth(path: str) -> int:
    return path.count(".") + 1 if path else 0


_MODULE = operator.attrgetter("module")


def _scope(table: dict[str, nn.Module]) -> tuple[nn.Module, dict[str, nn.Module]]:
    """A new container holding ``table`` (see :data:`Scopes`)."""
    # Straight into _modules: add_module's checks (a name clashing with an attribute)
    # cost a failed getattr per module, and ``verify`` already rejects such names.
    container = torch_build.container()
    container.__dict__["_modules"] = table
    return container, dict(table)


def _class_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in name) or "graph"
    return cleaned if not cleaned[0].isdigit() else f"g_{cleaned}"


# ---- weights back ------------------------------------------------------------------------


def _unwrap(module: nn.Module) -> nn.Module:
    """The module that holds the lowered graph's names: through torch.compile's and DDP's
    wrappers, whose ``state_dict()`` keys carry a ``_orig_mod.`` / ``module.`` prefix."""
    # torch._dynamo takes seconds to import: without it loaded, nothing is compiled.
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    while True:
        if dynamo is not None and isinstance(module, dynamo.OptimizedModule):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def to_device(module: nn.Module, reuse: nn.Module, device: torch.device) -> nn.Module:
    """``module`` (made by ``to_torch(..., reuse=reuse)``, possibly wrapped since) with the
    submodules it built afresh moved to ``device``, and returned: ``module.to(device)`` at
    the cost of what changed, where ``.to`` would walk every module and tensor of it (and
    does, for a module ``to_torch`` did not make).

    Guarantees: when every tensor of ``reuse`` is on ``device``, so is every tensor of
    ``module`` (the submodules taken over are ``reuse``'s, and only node submodules hold
    tensors)."""
    root, old = _unwrap(module), _unwrap(reuse)
    if not isinstance(root, LoweredModule):
        return module.to(device)
    before = old.built if isinstance(old, LoweredModule) else {}
    for target, built in root.built.items():
        prior = before.get(target)
        if prior is None or prior.module is not built.module:
            built.module.to(device)
    return module


def update_params(graph: Graph, module: nn.Module) -> Graph:
    """Return ``graph`` with the values of ``module``'s state_dict taken back.

    ``module`` is one that :func:`to_torch` made of ``graph`` (possibly trained, moved to
    another device or dtype, compiled or wrapped in DDP); it may hold a subset of the
    graph's parameters (e.g. one task's module), and the others are kept. Guarantees: the
    result is verified; its tensors are detached CPU copies with the graph's dtypes, sharing
    no storage with ``module``; ``graph`` is unchanged. ``module`` records that its tensors
    equal the result's (where the copy is exact), so ``to_torch(grown, reuse=module)`` of a
    graph a pass grew from the result takes over the submodules the pass left alone.

    Raises:
        GrowError: a key is not a parameter of the graph, or its shape differs.
    """
    specs = graph.param_specs
    old_params = graph.params
    params = dict(old_params)
    root = _unwrap(module)
    exact: set[str] = set()
    cpu = torch.device("cpu")
    with torch.no_grad():  # copies that autograd does not record, no detach needed
        for key, value in root.state_dict(keep_vars=True).items():
            if key not in specs:
                raise GrowError(
                    "the module has a tensor the graph does not",
                    field=key,
                    expected="a parameter name of the graph",
                    found=repr(key),
                )
            old = old_params[key]
            if value.shape != old.shape:
                raise GrowError(
                    "the module's tensor has another shape",
                    field=key,
                    expected=str(list(old.shape)),
                    found=str(list(value.shape)),
                )
            if value.dtype == old.dtype:
                params[key] = value.clone() if value.is_cpu else value.to(cpu, copy=True)
                exact.add(key)
            else:
                params[key] = value.to(cpu, old.dtype, copy=True)
    if isinstance(root, LoweredModule) and root.built:
        # The new tensors are exact copies of the module's: link them, so that lowering
        # a graph grown from the result can take over the unchanged submodules.
        relinked = {t: torch_reuse.relink(b, params, exact) for t, b in root.built.items()}
        root.built = {t: b for t, b in relinked.items() if b is not None}
    return verify(graph.replace(params=params))
