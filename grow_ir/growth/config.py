"""The ``growth:`` section of a spec: a validated run configuration, overridable by flags.

The section is kept free-form on ``Graph.growth``; :func:`growth_config` validates it with
pydantic, merges overrides (command-line flags, ``--set key=value``) and reports the first
bad field as a GrowError naming the file and the field path (``growth.widen.factor``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from grow_ir.errors import GrowError
from grow_ir.passes.args import Seed
from grow_ir.passes.inits import WIDTH_INITS
from grow_ir.passes.insert import BLOCK_INITS as PASS_BLOCK_INITS

MAX_COUNT = 2**31 - 1
"""The largest count a setting takes (epochs, batch size, depth, width...): anything above
is a mistake, refused with the field's name rather than met deep inside training."""

Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
"""A positive count of at most :data:`MAX_COUNT`."""

BLOCK_INITS = (*PASS_BLOCK_INITS, "adam")
"""AutoGrow's initialisers of a new block: those of ``insert_block`` (ZeroInit ``zero``,
GauInit ``gauss``, UniInit ``uniform``) and AdamInit (``adam``: a Gaussian block trained
alone afterwards, the :class:`grow_ir.growth.hooks.AdamInit` step hook)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Model):
    """The optimizer: SGD with momentum or Adam, at a base learning rate.

    Attributes:
        name: ``sgd`` (uses momentum, nesterov) or ``adam`` (uses betas).
        lr: the base learning rate (constant while growing, then the staircase tail).
        weight_decay: L2 penalty, both optimizers.
    """

    name: Literal["sgd", "adam"] = "sgd"
    lr: PositiveFloat = 0.05
    momentum: NonNegativeFloat = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: NonNegativeFloat = 0.0


class AdamInitConfig(_Model):
    """AdamInit: after inserting a (Gaussian) block, train it alone with Adam until the
    training loss on a probe batch is back to its value before the step.

    The defaults recover: on MNIST after 2 epochs, a Gaussian block in stage1 came back
    to the probe loss in 60 steps at lr 0.01, but needed 240 at lr 0.001 (the reference
    code's rate), where a cap of 100 stopped it at 0.180 against 0.108. The growth line
    says which happened.

    Attributes:
        lr: Adam's learning rate for the new block.
        max_steps: the most Adam steps per new block.
        check_every: steps between two measurements of the probe loss.
    """

    lr: PositiveFloat = 1e-2
    max_steps: Count = 300
    check_every: Count = 10


class WidenConfig(_Model):
    """The width policy: widen ``nodes`` by ``factor`` when validation accuracy plateaus.

    ``init: zero`` (the default) gives new units random fan-in and zero fan-out: exact, and
    the new units learn. ``net2net`` copies units exactly; copies stay identical under
    training unless ``noise`` (a fraction of the weight's std added to the copies' fan-in,
    which makes the step not exact) breaks their symmetry.

    Attributes:
        nodes: linear/conv/embedding nodes to widen (each a unit of its own).
        factor: the width is multiplied by this (rounded up) at each step.
        max_width: no unit grows past this width.
        init: a width init of ``widen`` (``passes.inits.WIDTH_INITS``).
        noise: net2net's symmetry-breaking noise (0: exact).
    """

    nodes: list[str] = Field(min_length=1)
    factor: float = Field(default=1.5, gt=1.0)
    max_width: Count = 64
    init: str = "zero"
    noise: NonNegativeFloat = 0.0

    @field_validator("init")
    @classmethod
    def _known_init(cls, v: str) -> str:
        if v not in WIDTH_INITS:
            raise ValueError(f"expected one of {', '.join(WIDTH_INITS)}, found {v!r}")
        return v


class NestConfig(_Model):
    """NeST (Dai, Yin and Jha 2019): grow, then prune, on a fixed schedule.

    Every ``interval`` epochs one step runs, first ``grow_steps`` growth steps, then
    ``prune_steps`` pruning steps. A growth step grows every layer of ``nodes`` by
    ``factor`` (up to ``max_width``) with gradient-based new units (GradMax: zero fan-in,
    fan-out from the loss gradient; exact) and, from the second step on, brings back the
    ``connection_growth`` fraction of each layer's masked connections with the largest
    loss gradient (NeST's rule; they start at 0, exact). The first growth step first
    sparsifies the layers to ``seed_density`` (NeST's sparse seed; 1.0: dense). Pruning
    step ``j`` of ``P`` keeps ``1 - (1 - density) * j / P`` of each layer's connections by
    magnitude (gradual pruning); the first keeps ``channels`` of each layer's channels by
    l1 when set, and the last removes every channel that is provably dead (exact).

    Attributes:
        nodes: linear/conv layers that grow and are pruned.
        grow_steps: growth steps (0: prune only).
        factor: the width is multiplied by this (rounded up) at each growth step.
        max_width: no layer grows past this width.
        seed_density: connections kept before growing (1.0: start dense).
        connection_growth: fraction of masked connections grown back per growth step.
        prune_steps: pruning steps (0: grow only).
        density: fraction of each layer's connections kept after the last pruning step.
        channels: fraction of channels kept at the first pruning step (None: keep all).
    """

    nodes: list[str] = Field(min_length=1)
    grow_steps: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 2
    factor: float = Field(default=1.5, gt=1.0)
    max_width: Count = 64
    seed_density: float = Field(default=1.0, gt=0.0, le=1.0)
    connection_growth: float = Field(default=0.1, ge=0.0, le=1.0)
    prune_steps: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 3
    density: float = Field(default=0.3, gt=0.0, le=1.0)
    channels: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _some_steps(self) -> NestConfig:
        if self.grow_steps + self.prune_steps == 0:
            raise ValueError("expected at least one growth or pruning step, found none")
        return self


class ScheduleStep(BaseModel):
    """One step of a growth schedule: after epoch ``epoch``, run pass ``pass`` with the
    other keys as its arguments (a plan entry with an epoch), e.g.
    ``{epoch: 2, pass: widen, node: wte, width: 128, init: lemon}``."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    epoch: Count
    pass_name: str = Field(alias="pass")

    def arguments(self) -> dict[str, Any]:
        """The pass's arguments: every key besides ``epoch`` and ``pass``."""
        return dict(self.model_extra or {})


class GrowthConfig(_Model):
    """The settings every run shares, whatever its policy: data, optimizer, budget.

    ``growth:`` is a union discriminated by ``policy``: each registered policy has its own
    settings model, a subclass of this one (:class:`AutoGrowConfig`,
    :class:`NestGrowthConfig`, :class:`ScheduleConfig`, :class:`NoGrowthConfig`), and a
    setting of another policy is refused with the policy it belongs to.

    ``epochs`` is the whole budget. Growth may happen while ``epoch < epochs - tail_epochs``;
    once it stops (every unit stopped, or the budget reached), the learning rate follows a
    staircase over the remaining epochs: it is multiplied by ``lr_gamma`` at each fraction
    of the tail listed in ``lr_milestones``.

    Attributes:
        data: ``spirals``, ``digits``, ``mnist``, ``pydoc``, ``FILE.npz`` or ``FILE.txt``
            (relative to the spec).
        policy: a registered policy (``growth.policy.POLICIES``): ``autogrow``; ``nest``
            (grow then prune); ``schedule`` (plan entries at given epochs, as staged
            training grows width, depth and heads to given sizes); or ``none`` to train the
            network as it is.
        seq_len: the context length of language-model training windows (tokens).
        optimizer: the optimizer and base learning rate.
        epochs: the whole training budget.
        tail_epochs: growth never happens in the last ``tail_epochs`` epochs.
        lr_milestones: fractions of the tail at which the learning rate drops.
        lr_gamma: the factor of each drop.
        batch_size: training batch size.
        val_fraction: the validation split of a user ``.npz`` file's training arrays
            (of the whole set for the embedded data sets).
        seed: the training seed: shuffling, growth steps' random initialisation.
        task: the output to train, for a graph with several.
    """

    data: str | None = None
    policy: str = "autogrow"
    seq_len: Count = 64
    optimizer: OptimizerConfig = OptimizerConfig()
    epochs: Count = 20
    tail_epochs: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 4
    lr_milestones: list[float] = Field(default_factory=lambda: [0.5, 0.75])
    lr_gamma: PositiveFloat = 0.1
    batch_size: Count = 64
    val_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    seed: Seed = 0
    task: str | None = None

    @field_validator("lr_milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < f < 1.0 for f in v) or v != sorted(v):
            raise ValueError(f"expected increasing fractions in (0, 1), found {v}")
        return v

    @model_validator(mode="after")
    def _budget(self) -> GrowthConfig:
        if self.tail_epochs >= self.epochs:
            raise ValueError(
                f"tail_epochs ({self.tail_epochs}) must be smaller than epochs ({self.epochs}); "
                "set a shorter tail with --tail-epochs N"
            )
        return self


class AutoGrowConfig(GrowthConfig):
    """``policy: autogrow``: stages grow by blocks, layers by width (Wen et al. 2020).

    Attributes:
        mode: ``periodic`` (grow every ``interval`` epochs) or ``convergent`` (grow when
            the best validation accuracy of the last ``interval`` epochs beats the best
            before them by less than ``tau``).
        interval: AutoGrow's K.
        patience: AutoGrow's J: epochs after a unit grew before its growth is judged.
        tau: a unit stops growing when the running maximum of validation accuracy rose
            by less than this in the ``patience`` epochs after it grew.
        growing: ``round_robin`` (one stage per step, in turn: each stage's gain is its
            own) or ``all`` (every growing stage at each step; they stop together).
        stages: the stages that grow (default: every stage of the spec).
        max_depth: the most blocks per stage: one number, or per stage (stages not
            listed get the largest).
        init: new blocks' initialisation: ``zero`` (ZeroInit, exact), ``adam``
            (AdamInit), ``uniform`` (UniInit) or ``gauss`` (GauInit).
        adam_init: AdamInit's settings.
        widen: the width policy (none by default).
    """

    policy: Literal["autogrow"] = "autogrow"
    mode: Literal["periodic", "convergent"] = "periodic"
    interval: Count = 2
    patience: Count = 3
    tau: NonNegativeFloat = 0.005
    growing: Literal["round_robin", "all"] = "round_robin"
    stages: list[str] | None = None
    max_depth: Count | dict[str, Count] = 4
    init: str = "zero"
    adam_init: AdamInitConfig = AdamInitConfig()
    widen: WidenConfig | None = None

    @field_validator("init")
    @classmethod
    def _known_block_init(cls, v: str) -> str:
        if v not in BLOCK_INITS:
            raise ValueError(f"expected one of {', '.join(BLOCK_INITS)}, found {v!r}")
        return v

    def depth_limit(self, stage: str) -> int:
        """The maximum depth (blocks) of ``stage``."""
        if isinstance(self.max_depth, int):
            return self.max_depth
        return self.max_depth.get(stage, max(self.max_depth.values()))


class NestGrowthConfig(GrowthConfig):
    """``policy: nest``: grow, then prune, every ``interval`` epochs (see :class:`NestConfig`).

    Attributes:
        interval: epochs between two NeST steps.
        nest: NeST's settings.
    """

    policy: Literal["nest"] = "nest"
    interval: Count = 2
    nest: NestConfig


class ScheduleConfig(GrowthConfig):
    """``policy: schedule``: the steps of ``schedule`` after their epochs.

    Attributes:
        schedule: the growth schedule, in epoch order (at least one step).
    """

    policy: Literal["schedule"] = "schedule"
    schedule: list[ScheduleStep]

    @field_validator("schedule")
    @classmethod
    def _in_order(cls, v: list[ScheduleStep]) -> list[ScheduleStep]:
        if not v:
            raise ValueError("expected at least one schedule step, found none")
        epochs = [s.epoch for s in v]
        if epochs != sorted(epochs):
            raise ValueError(f"expected schedule steps in epoch order, found epochs {epochs}")
        return v


class NoGrowthConfig(GrowthConfig):
    """``policy: none``: train the network as it is (the shared settings only)."""

    policy: Literal["none"] = "none"


def settings_model(policy: Any, file: str | None = None) -> type[GrowthConfig]:
    """The settings model of the registered policy ``policy``.

    Raises:
        GrowError: no policy of that name (``growth.policy``, with the nearest name).
    """
    import grow_ir.growth  # noqa: F401  (the policies register on import)
    from grow_ir.growth.policy import policy_entry

    try:
        return policy_entry(policy).settings
    except GrowError as exc:
        raise GrowError(
            exc.reason, file=file, field=exc.field, expected=exc.expected, found=exc.found
        ) from None


def shared_settings(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of a ``growth:`` section that every policy accepts (the data, optimizer
    and budget; ``policy`` dropped), for running the same data and budget under another
    policy (a benchmark's from-scratch baseline)."""
    keep = set(GrowthConfig.model_fields) - {"policy"}
    return {k: v for k, v in (section or {}).items() if k in keep}


def validate_settings(raw: Mapping[str, Any], file: str | None = None) -> GrowthConfig:
    """``raw`` validated by its policy's settings model (the union's discriminator is
    ``policy``, default ``autogrow``).

    Raises:
        GrowError: the first bad field, naming ``file`` and the field path.
    """
    model = settings_model(raw.get("policy", "autogrow"), file)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _to_grow_error(exc, file, model) from None


def growth_config(
    section: Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | None = None,
    *,
    file: str | None = None,
) -> GrowthConfig:
    """Validate a ``growth:`` section with ``overrides`` (dotted keys) applied on top.

    Guarantees: the result is a frozen, fully validated GrowthConfig of the policy's own
    settings model; overrides win over the section; ``None`` override values are ignored
    (an unset flag); an override of ``policy`` that names another policy than the
    section's keeps only the section's shared settings (data, optimizer, budget), since the
    others configure the section's policy.

    Raises:
        GrowError: naming ``file`` and the field path (``growth.optimizer.lr``), what was
            expected and what was found; unknown fields suggest the nearest known name.
    """
    if not isinstance(section or {}, Mapping):
        raise GrowError(
            "the growth section must be a mapping",
            file=file,
            field="growth",
            expected="a mapping of settings",
            found=type(section).__name__,
        )
    raw: dict[str, Any] = _deep_copy(section or {})
    policy = (overrides or {}).get("policy")
    if policy is not None and policy != raw.get("policy", "autogrow"):
        raw = shared_settings(raw)  # another policy: the section's own settings do not apply
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(raw, key, value, file)
    return validate_settings(raw, file)


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _set_dotted(raw: dict[str, Any], key: str, value: Any, file: str | None) -> None:
    parts = key.split(".")
    target = raw
    for i, part in enumerate(parts[:-1]):
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise GrowError(
                "cannot set a field inside a value that is not a mapping",
                file=file,
                field="growth." + ".".join(parts[: i + 1]),
                expected="a mapping",
                found=repr(nxt),
            )
        target = nxt
    target[parts[-1]] = value


def _to_grow_error(
    exc: ValidationError, file: str | None, top: type[GrowthConfig] = GrowthConfig
) -> GrowError:
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "constrained-"))]
    path = ".".join(["growth", *loc])
    if err["type"] == "extra_forbidden" and len(loc) == 1:
        owners = [p for p, m in _policy_models().items() if loc[0] in m.model_fields]
        if owners:
            policy = top.model_fields["policy"].default
            return GrowError(
                f"a setting of policy {' / '.join(owners)}, not of policy {policy}",
                file=file,
                field=path,
                expected=f"a setting of policy {policy} ({', '.join(top.model_fields)}), or "
                f"policy: {owners[0]}",
                found=repr(loc[0]),
            )
    if err["type"] == "extra_forbidden":
        model: type[BaseModel] = top
        for part in loc[:-1]:
            ann = model.model_fields.get(part)
            sub = getattr(ann, "annotation", None) if ann else None
            model = next(
                (t for t in getattr(sub, "__args__", (sub,)) if isinstance(t, type)),
                top,
            )
        fields = list(model.model_fields)
        near = difflib.get_close_matches(loc[-1], fields, n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        return GrowError(
            f"unknown growth setting{hint}",
            file=file,
            field=path,
            expected=f"one of {', '.join(fields)}",
            found=repr(loc[-1]),
        )
    if err["type"] == "missing":
        policy = top.model_fields["policy"].default
        return GrowError(
            f"missing growth setting of policy {policy}",
            file=file,
            field=path,
            expected="a value",
        )
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    if msg.startswith("expected "):
        return GrowError("bad growth setting", file=file, field=path, found=None, expected=msg[9:])
    found = err.get("input")
    found_text = None if isinstance(found, dict) else repr(found)
    return GrowError(
        "bad growth setting", file=file, field=path, expected=msg.rstrip("."), found=found_text
    )


def _policy_models() -> dict[str, type[GrowthConfig]]:
    import grow_ir.growth  # noqa: F401  (the policies register on import)
    from grow_ir.growth.policy import POLICIES

    return {name: entry.settings for name, entry in POLICIES.items()}
