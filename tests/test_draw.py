"""``grow-ir draw``: a picture per spec or directory, stages and blocks framed, grown nodes
coloured; written atomically, never over a file grow-ir did not draw."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import grow_ir as gi
from grow_ir.cli import main
from grow_ir.drawing import ADDED, CHANGED, grown_from_history
from grow_ir.spec.examples import example_names
from tests.tiny_specs import TINY_SPIRALS

PLAN = [
    {"pass": "insert_block", "stage": "stage2", "init": "zero"},
    {"pass": "widen", "node": "down", "width": 24},
]


def svg_texts(path: Path) -> list[str]:
    return re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())


@pytest.mark.parametrize("name", example_names())
def test_every_example_draws_as_svg_with_every_node(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / f"{name}.svg"
    assert main(["draw", name, "-o", str(out)]) == 0
    graph = gi.load_spec(Path(gi.__file__).parent / "examples" / f"{name}.yaml")
    texts = " ".join(svg_texts(out))
    for n in graph.nodes:
        assert n.name.split(".")[-1] in texts and n.op in texts, n.name
    for stage, info in graph.stages.items():
        assert f"{stage} ({info.block} × {info.depth})" in texts
    assert "grow-ir draw" in out.read_text()  # the metadata that marks it as ours


def test_a_grown_directory_colours_what_growth_added_and_widened(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump(PLAN))
    assert main(["grow", "resnet", "--plan", str(plan), "-o", str(tmp_path / "g")]) == 0
    grown = grown_from_history(tmp_path / "g")
    assert grown["added"] == {
        f"stage2.block1.{n}" for n in ("conv1", "bn1", "act1", "conv2", "bn2", "sum", "out")
    }
    assert {"down", "down_bn", "stage2.block0.conv1", "head"} <= grown["changed"]
    capsys.readouterr()
    out = tmp_path / "g.svg"
    assert main(["draw", str(tmp_path / "g"), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(36 nodes, " in printed  # resnet's 29, plus a block of 7
    assert f"7 added, {len(grown['changed'])} widened by growth)" in printed
    svg = out.read_text()
    # one filled box per coloured node, plus its legend entry
    assert svg.count(f"fill: {ADDED}") == 7 + 1
    assert svg.count(f"fill: {CHANGED}") == len(grown["changed"]) + 1
    assert "added by growth" in svg and "widened by growth" in svg
    png = tmp_path / "g.png"
    assert main(["draw", str(tmp_path / "g" / "spec.yaml"), "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_training_run_marks_the_blocks_it_grew(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "tiny.yaml"
    growth = {"data": "spirals", "epochs": 3, "tail_epochs": 1, "interval": 1, "patience": 1}
    spec.write_text(yaml.safe_dump({**TINY_SPIRALS, "growth": growth}))
    assert main(["train", str(spec), "-o", str(tmp_path / "run"), "--quiet"]) == 0
    grown = grown_from_history(tmp_path / "run")
    assert {"stage1.block1.fc1", "stage1.block1.out"} <= grown["added"]
    out = tmp_path / "run.svg"
    assert main(["draw", str(tmp_path / "run"), "-o", str(out)]) == 0
    assert out.read_text().count(f"fill: {ADDED}") == len(grown["added"]) + 1


def test_draw_replaces_only_its_own_pictures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "photo.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n my holiday")
    assert main(["draw", "mlp", "-o", str(mine)]) == 2
    assert "refusing to replace a file that grow-ir did not write" in capsys.readouterr().err
    assert mine.read_bytes() == b"\x89PNG\r\n\x1a\n my holiday"
    ours = tmp_path / "mlp.svg"
    assert main(["draw", "mlp", "-o", str(ours)]) == 0
    assert main(["draw", "resnet", "-o", str(ours)]) == 0  # its own picture is replaced
    assert "stage1" in ours.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.svg", "photo.png"]


def test_a_bad_format_or_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["draw", "mlp", "-o", str(tmp_path / "net.pdf")]) == 2
    assert "unknown picture format" in capsys.readouterr().err
    assert main(["draw", "nosuch", "-o", str(tmp_path / "net.svg")]) == 2
    assert not list(tmp_path.iterdir())
