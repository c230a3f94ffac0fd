"""The example specs: packaged, mirrored in specs/examples, and each runs end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from grow_ir.backends.torch import to_torch
from grow_ir.errors import SpecError
from grow_ir.ir.verify import verify
from grow_ir.probes import random_inputs
from grow_ir.spec import example_names, example_path, load_spec
from grow_ir.spec.examples import examples_dir

SPECS_EXAMPLES = Path(__file__).resolve().parent.parent / "specs" / "examples"
EXPECTED = ["concat", "gpt_bytes", "mlp", "multitask", "resnet", "transformer"]


def test_the_examples_are_packaged():
    assert set(EXPECTED) <= set(example_names())


def test_specs_examples_is_the_packaged_directory():
    assert SPECS_EXAMPLES.resolve() == examples_dir().resolve()
    assert sorted(p.stem for p in SPECS_EXAMPLES.glob("*.yaml")) == example_names()


@pytest.mark.parametrize("name", EXPECTED)
def test_example_loads_lowers_and_runs(name):
    g = verify(load_spec(example_path(name)))
    module = to_torch(g).eval()
    with torch.no_grad():
        y = module(**random_inputs(g, batch=2))
    outputs = y if isinstance(y, dict) else {next(iter(g.outputs)): y}
    assert set(outputs) == set(g.outputs)
    for out, value in outputs.items():
        want = g.types[g.outputs[out]].concrete({"batch": 2, "seq": 5})
        assert tuple(value.shape) == want
        assert torch.isfinite(value).all()


def test_examples_cover_what_they_promise():
    resnet = load_spec(example_path("resnet"))
    assert resnet.blocks and {"stage1", "stage2"} <= set(resnet.stages)
    assert any(n.op == "concat" for n in load_spec(example_path("concat")).nodes)
    assert len(load_spec(example_path("multitask")).outputs) == 2
    transformer = load_spec(example_path("transformer"))
    assert transformer.inputs["tokens"].dtype == "int64"
    assert transformer.node("attn").attrs.causal


def test_unknown_example_suggests():
    with pytest.raises(SpecError, match="did you mean 'resnet'"):
        example_path("resnt")


def test_the_readme_spec_example_loads():
    readme = (SPECS_EXAMPLES.parent.parent / "README.md").read_text()
    text = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    g = load_spec(yaml.safe_load(text))
    assert g.node("stage1.block1.out").inputs == ("stage1.block1.sum",)
    assert g.grow[0]["pass"] == "widen"
