"""The README documents every config field and its two opening commands stay as CI runs them."""

from __future__ import annotations

from pathlib import Path

from unetgen import UNetConfig

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_field() -> None:
    text = (ROOT / "README.md").read_text()
    missing = [name for name in UNetConfig.model_fields if f"| `{name}` |" not in text]
    assert not missing, f"README config reference lacks {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = (
        'pip install -e ".[test]" torch==2.13.0 && pip install --no-deps dynamic-network-architectures==0.4.4 '
        "pytorch3dunet==1.9.6 && python -m pytest -q"
    )
    assert command in readme
    assert command in ci.splitlines()[-1]
