"""Growth passes: function-preserving rewrites of Graphs, and the plan manager."""

from grow_ir.passes.adapter import add_adapter
from grow_ir.passes.base import PASSES, Origin, PassResult, get_pass, register_pass
from grow_ir.passes.channels import ChannelGroup, channel_group, widenable
from grow_ir.passes.connections import grow_connections, prune_connections
from grow_ir.passes.fork import fork_task
from grow_ir.passes.gradmax import Probe
from grow_ir.passes.heads import add_heads, grow_head_dim, grow_kv_heads, prune_heads
from grow_ir.passes.insert import insert_block, insert_layer
from grow_ir.passes.lemon import lemon_units  # noqa: F401  (registers the lemon init)
from grow_ir.passes.manager import (
    CheckPreservation,
    DumpIR,
    Instrument,
    PlanResult,
    Step,
    apply_plan,
    output_error,
    run_plan,
)
from grow_ir.passes.prune import prunable, prune
from grow_ir.passes.stack import stack_blocks
from grow_ir.passes.vocab import grow_vocab
from grow_ir.passes.widen import widen

__all__ = [
    "PASSES",
    "ChannelGroup",
    "CheckPreservation",
    "DumpIR",
    "Instrument",
    "Origin",
    "PassResult",
    "PlanResult",
    "Probe",
    "Step",
    "add_adapter",
    "add_heads",
    "apply_plan",
    "channel_group",
    "fork_task",
    "get_pass",
    "grow_connections",
    "grow_head_dim",
    "grow_kv_heads",
    "grow_vocab",
    "insert_block",
    "insert_layer",
    "output_error",
    "prunable",
    "prune",
    "prune_connections",
    "prune_heads",
    "register_pass",
    "run_plan",
    "stack_blocks",
    "widen",
    "widenable",
]
