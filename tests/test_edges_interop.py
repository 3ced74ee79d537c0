"""Issue 18, part B: nnU-Net import and model conversion at their edges. What a plans file, a
command line or a peer module can carry in: key injection into the written YAML, outputs that
are inputs or are left behind invalid, FIFOs, long inheritance chains, huge stage lists, values
of the wrong type read as something else, peers whose function is not their layers' (hooks, a
replaced forward), and example inputs of the wrong shape."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from test_interop import NEW_3D

from unetgen import load_config
from unetgen.cli import main
from unetgen.interop import from_nnunet_plans, nnunet_yaml

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny maps: threads only add overhead

INJECTED = "X\nup_channels: half\n#"
LINE_BREAKS = ["\n", "\r", "\r\n", "\x85", "\u2028", "\u2029"]  # every line break YAML (1.1, PyYAML) knows


def _plans(**configurations: Any) -> dict[str, Any]:
    return {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "configurations": configurations}


def _import(plans: Path, out: Path, *extra: str, configuration: str = "c") -> int:
    args = ["import", "nnunet", str(plans), "--configuration", configuration, "--in-channels", "1"]
    return main([*args, "--out-channels", "2", "-o", str(out), *extra])


def _write_plans(path: Path, **top: Any) -> Path:
    path.write_text(json.dumps(_plans(c=NEW_3D) | top))
    return path


# ---------------------------------------------------------------------------------------------
# the written YAML: no key injection, never left invalid, never over an input or a foreign file


@pytest.mark.parametrize("brk", LINE_BREAKS)
def test_dataset_name_cannot_add_keys(tmp_path: Path, brk: str) -> None:
    plans = _write_plans(tmp_path / "plans.json", dataset_name=INJECTED.replace("\n", brk))
    out = tmp_path / "m.yaml"
    assert _import(plans, out) == 0
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert "up_channels" not in data
    assert load_config(out) == from_nnunet_plans(plans, "c", in_channels=1, out_channels=2)


def test_plans_file_name_and_configuration_cannot_add_keys(tmp_path: Path) -> None:
    name = "p\nup_channels: half\n#.json"
    plans = tmp_path / name
    plans.write_text(json.dumps({"configurations": {"c\nup_channels: half\n#": NEW_3D}}))
    out = tmp_path / "m.yaml"
    assert _import(plans, out, configuration="c\nup_channels: half\n#") == 0
    assert "up_channels" not in yaml.safe_load(out.read_text(encoding="utf-8"))
    expected = from_nnunet_plans(_plans(c=NEW_3D), "c", in_channels=1, out_channels=2)
    assert load_config(out).up_channels == expected.up_channels


@pytest.mark.parametrize(
    "schema",
    ["s.json\nup_channels: half", "s\u2028up_channels: half", "s\tx", "x" * 5000],
    ids=["newline", "u2028", "tab", "5000-long"],
)
def test_schema_that_would_leave_its_comment_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], schema: str
) -> None:
    plans = _write_plans(tmp_path / "plans.json")
    out = tmp_path / "m.yaml"
    assert _import(plans, out, "--schema", schema) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --schema=") and "printable characters on one line" in err and len(err) < 600
    assert os.listdir(tmp_path) == ["plans.json"]
    with pytest.raises(ValueError, match="schema="):
        nnunet_yaml(plans, "c", in_channels=1, out_channels=2, schema=schema)


@given(name=st.text(max_size=40))
def test_any_dataset_name_reads_back_as_the_config(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    plans = _write_plans(tmp_path_factory.mktemp("p") / "plans.json", dataset_name=name)
    text = nnunet_yaml(plans, "c", in_channels=1, out_channels=2)
    expected = from_nnunet_plans(plans, "c", in_channels=1, out_channels=2)
    assert yaml.safe_load(text) == expected.model_dump(mode="json", exclude_unset=True)


def test_invalid_yaml_is_not_left_on_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import unetgen.interop

    plans = _write_plans(tmp_path / "plans.json")
    monkeypatch.setattr(unetgen.interop, "nnunet_yaml", lambda *a, **k: "spatial_dims: 2\ndepth: -1\n")
    assert _import(plans, tmp_path / "m.yaml") == 1
    assert "depth" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["plans.json"]


@pytest.mark.parametrize("fail", ["fsync", "replace"])
def test_full_disk_leaves_the_previous_output_and_no_temporary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    import unetgen.cli.imports as imports

    plans = _write_plans(tmp_path / "plans.json")
    out = tmp_path / "m.yaml"
    assert _import(plans, out) == 0
    before = out.read_bytes()

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(imports.os, fail, full)
    assert _import(plans, out, "--no-deep-supervision") == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "m.yaml" in err and "nothing was written" in err
    assert sorted(os.listdir(tmp_path)) == ["m.yaml", "plans.json"]
    assert out.read_bytes() == before


def test_output_that_is_the_plans_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = _write_plans(tmp_path / "plans.yaml")  # JSON in a .yaml file: a valid plans file
    before = plans.read_bytes()
    assert _import(plans, plans) == 1
    assert "is the plans file itself" in capsys.readouterr().err
    link = tmp_path / "hard.yaml"
    os.link(plans, link)
    assert _import(plans, link) == 1
    assert "is the plans file itself" in capsys.readouterr().err
    assert plans.read_bytes() == before


def test_foreign_files_and_links_are_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plans = _write_plans(tmp_path / "plans.json")
    mine = tmp_path / "notes.yaml"
    mine.write_text("# my hand-tuned model\ndepth: 3\n")
    assert _import(plans, mine) == 1
    assert "was not written by `unetgen import`" in capsys.readouterr().err
    assert mine.read_text() == "# my hand-tuned model\ndepth: 3\n"
    link = tmp_path / "link.yaml"
    link.symlink_to(mine)
    assert _import(plans, link) == 1
    assert "symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and mine.read_text() == "# my hand-tuned model\ndepth: 3\n"
    # what unetgen import wrote, it may replace
    out = tmp_path / "m.yaml"
    assert _import(plans, out) == 0 and _import(plans, out, "--no-deep-supervision") == 0
    assert load_config(out).deep_supervision == ()
    assert sorted(os.listdir(tmp_path)) == ["link.yaml", "m.yaml", "notes.yaml", "plans.json"]


# ---------------------------------------------------------------------------------------------
# only regular files are read: a FIFO or device never blocks


def _alarm(signum: int, frame: Any) -> None:
    raise TimeoutError("blocked opening the plans file")


@pytest.fixture
def no_blocking() -> Any:
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(5)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.usefixtures("no_blocking")
@pytest.mark.parametrize("kind", ["fifo", "device", "directory"])
def test_plans_that_are_not_regular_files_are_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = tmp_path / "plans.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path = Path("/dev/zero")
    what = {"fifo": "FIFO", "device": "device", "directory": "directory"}[kind]
    with pytest.raises(ValueError, match=f"plans file .*{what}.*not a regular file"):
        from_nnunet_plans(path, "c", in_channels=1, out_channels=2)
    with pytest.raises(ValueError, match=what):
        nnunet_yaml(str(path), "c", in_channels=1, out_channels=2)
    assert _import(path, tmp_path / "m.yaml") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: plans file ") and what in err and "Traceback" not in err
    assert not (tmp_path / "m.yaml").exists()


# ---------------------------------------------------------------------------------------------
# inherits_from: linear time, bounded, every value of the wrong kind a clear error


def test_a_100000_long_inheritance_chain_is_refused_at_once() -> None:
    n = 100_000
    configurations: dict[str, Any] = {f"c{i}": {"inherits_from": f"c{i + 1}"} for i in range(n)}
    configurations[f"c{n}"] = NEW_3D
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"inherits_from chain is longer than 32 \(c0 -> c1 -> c2 -> \.\.\."):
        from_nnunet_plans(_plans(**configurations), "c0", in_channels=1, out_channels=2)
    assert time.perf_counter() - start < 1.0
    configurations = {f"c{i}": {"inherits_from": f"c{i + 1}"} for i in range(31)} | {"c31": NEW_3D}
    assert from_nnunet_plans(_plans(**configurations), "c0", in_channels=1, out_channels=2).depth == 5  # 32 is fine


@pytest.mark.parametrize("parent", [[], {}, ["c"], 5, True, 1.5])
def test_inherits_from_that_is_not_a_name(parent: Any) -> None:
    plans = _plans(c=NEW_3D, d={"inherits_from": parent})
    with pytest.raises(ValueError, match=r"configurations\.d\.inherits_from=.* must be a str: the name of another"):
        from_nnunet_plans(plans, "d", in_channels=1, out_channels=2)


@pytest.mark.parametrize("name", [[], {}, None, 3, b"c"])
def test_configuration_that_is_not_a_name(name: Any) -> None:
    with pytest.raises(ValueError, match=r"configuration=.* must be a str"):
        from_nnunet_plans(_plans(c=NEW_3D), name, in_channels=1, out_channels=2)


def test_messages_about_configurations_stay_short() -> None:
    many = {f"config_{i}": NEW_3D for i in range(10_000)}
    with pytest.raises(ValueError, match=r"available: config_0, .* and 9,992 more") as err:
        from_nnunet_plans(_plans(**many), "x" * 5000, in_channels=1, out_channels=2)
    assert len(str(err.value)) < 500
    circle = {f"c{i}": {"inherits_from": f"c{(i + 1) % 8}"} for i in range(8)}
    with pytest.raises(ValueError, match=r"circle: c0 -> c1 -> c2 -> \.\.\. \(4 more\) -> c7 -> c0$"):
        from_nnunet_plans(_plans(**circle), "c0", in_channels=1, out_channels=2)
    odd = {"a\nb" * 1000: {"inherits_from": "a\nb" * 1000}}
    with pytest.raises(ValueError, match="circle") as err:
        from_nnunet_plans(_plans(**odd), "a\nb" * 1000, in_channels=1, out_channels=2)
    assert len(str(err.value)) < 500 and "\n" not in str(err.value)
