"""The `unetgen` command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from unetgen.cli import main

PAPER = str(Path(__file__).resolve().parents[1] / "examples" / "ronneberger2015.yaml")


def test_summary_paper(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", PAPER, "--input-size", "572"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 31,030,658" in out
    assert "bottleneck.conv2      1024  28 x 28" in out and "head                     2  388 x 388" in out
    assert "540, 556 | 572 | 588, 604" in out


def test_summary_invalid_size_lists_neighbours(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", PAPER, "--input-size", "570x572"]) == 1
    out = capsys.readouterr().out
    assert "not valid" in out and "540, 556 | 570 | 572, 588, 604" in out


def test_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sizes", PAPER, "--near", "570"]) == 0
    assert "near 570: below 556, above 572 (-> output 388)" in capsys.readouterr().out
    assert main(["sizes", "cicek2016", "--max", "140"]) == 0
    out = capsys.readouterr().out
    assert "132->44" in out and "116->28" in out


def test_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("depth: 3\nchanels: 4\n")
    assert main(["sizes", str(bad)]) == 1
    assert "bad.yaml:2:1: chanels: unknown field 'chanels'; did you mean 'channels'?" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["ronneberger2015.yaml", "oktay2018.yaml", "nnunet-3d-anisotropic.yaml"])
def test_summary_prints_one_row_per_level_in_execution_order(capsys: pytest.CaptureFixture[str], config: str) -> None:
    """torchinfo's tree has one EncoderLevel/DecoderLevel row per level, no '(recursive)' rows."""
    assert main(["summary", str(Path(PAPER).parent / config), "--depth", "2"]) == 0
    out = capsys.readouterr().out
    assert "(recursive)" not in out
    rows = [line.split("─")[1].split(":")[0] for line in out.splitlines() if "─" in line and ":" in line]
    depth = {"ronneberger2015.yaml": 4, "oktay2018.yaml": 4, "nnunet-3d-anisotropic.yaml": 5}[config]
    levels = [r for r in rows if r.endswith("Level")]
    assert levels == ["EncoderLevel"] * (depth + 1) + ["DecoderLevel"] * depth
