"""Growth while training: data sets, the ``growth:`` settings, AutoGrow's policies,
optimizer-state transfer, checkpoints and the training loop.

Typical use::

    from grow_ir import load_spec
    from grow_ir.growth import Trainer, growth_config, write_outputs

    graph = load_spec("specs/examples/autogrow_digits.yaml")
    config = growth_config(graph.growth, {"epochs": 10})
    result = Trainer.fresh(graph, config, data_source="digits", out_dir="runs/d").run()
    write_outputs(result, "runs/d")
"""

from grow_ir.growth.actions import GrowthContext, TrainState, apply_growth
from grow_ir.growth.autogrow import AutoGrow, NoGrowth
from grow_ir.growth.config import GrowthConfig, OptimizerConfig, growth_config
from grow_ir.growth.data import Dataset, check_fits, load_data
from grow_ir.growth.device import pick_device
from grow_ir.growth.history import History
from grow_ir.growth.loop import RunResult, Trainer, accuracy
from grow_ir.growth.nest import NeST
from grow_ir.growth.optim_state import make_optimizer, transfer_optimizer
from grow_ir.growth.outputs import RunFiles, write_outputs
from grow_ir.growth.policy import (
    POLICIES,
    GrowthRequest,
    Observation,
    Policy,
    StepHook,
    make_policy,
    register_policy,
)
from grow_ir.growth.report import describe_architecture
from grow_ir.growth.schedule import learning_rate
from grow_ir.growth.scheduled import Scheduled

__all__ = [
    "POLICIES",
    "AutoGrow",
    "Dataset",
    "GrowthConfig",
    "GrowthContext",
    "GrowthRequest",
    "History",
    "NeST",
    "NoGrowth",
    "Observation",
    "OptimizerConfig",
    "Policy",
    "RunFiles",
    "RunResult",
    "Scheduled",
    "StepHook",
    "TrainState",
    "Trainer",
    "accuracy",
    "apply_growth",
    "check_fits",
    "describe_architecture",
    "growth_config",
    "learning_rate",
    "load_data",
    "make_optimizer",
    "make_policy",
    "pick_device",
    "register_policy",
    "transfer_optimizer",
    "write_outputs",
]
