"""No input crashes the loader, and the committed JSON Schema agrees with pydantic.

The fuzz documents are arbitrary JSON-like values, configs with fields replaced by such values,
and arbitrary text or bytes in .yaml/.json files (also YAML and JSON renderings of the
documents, and snippets of hazards); the only exception that may escape is `ConfigError`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import config_dicts, configs
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from unetgen import ConfigError, UNetConfig, load_config
from unetgen.config.io import validate_document
from unetgen.config.schema import SCHEMA_PATH

ROOT = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=5 * settings().max_examples)  # cheap examples: 5x the profile's count
VALIDATOR = Draft202012Validator(json.loads((ROOT / SCHEMA_PATH).read_text(encoding="utf-8")))
FIELDS = [*UNetConfig.model_fields, "$schema"]
TAGS = ["none", "batch", "group", "grop", "layer", "instance", "relu", "leaky_relu", "residual", "attention", "add"]
TAGS += ["concat", "max", "conv", "transpose", "linear", "valid", "same", "skip", "keep", "paper", "torch", "type"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 20)
    | st.integers()
    | st.integers(-(10**40), 10**40)
    | st.sampled_from([-(2**64), 2**63])
    | st.integers(4301, 5000).map(lambda digits: 10**digits)  # beyond int->str's limit
    | st.floats()
    | st.sampled_from(TAGS)
    | st.text(max_size=8)
)
keys = st.sampled_from([*FIELDS, *TAGS, "num_groups", "rate", "eps"]) | st.text(max_size=6)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)


plausible = (
    st.integers(0, 9)
    | st.lists(st.integers(1, 9) | st.lists(st.integers(1, 9), max_size=3), max_size=6)
    | st.sampled_from(TAGS)
    | st.fixed_dictionaries({"type": st.sampled_from(TAGS)}, optional={"num_groups": st.integers(0, 9)})
)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config dict with a few fields replaced, removed or added."""
    doc: dict[str, Any] = draw(config_dicts()) if draw(st.booleans()) else draw(configs()).model_dump(mode="json")
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(FIELDS) | st.text(max_size=6))
        if draw(st.integers(0, 4)) == 0:
            doc.pop(key, None)
        else:
            doc[key] = draw(plausible | json_values)
    return doc


def _nest(depth: int, field: str, value: Any) -> dict[str, Any]:
    for i in range(depth):
        value = [value] if i % 2 else {"type": value}
    return {field: value}


def deep(max_depth: int) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(_nest, st.integers(1, max_depth), st.sampled_from(FIELDS), scalars)


shallow = json_values | st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6) | mutated_configs()
documents = shallow | deep(3000)


def _load(source: Any) -> None:
    try:
        assert isinstance(load_config(source), UNetConfig)
    except ConfigError as err:
        assert err.problems and all(str(p).count(": ") >= 2 for p in err.problems)


@FUZZ
@given(documents)
def test_documents_raise_only_config_error(doc: Any) -> None:
    start = time.perf_counter()
    if isinstance(doc, dict):
        _load(doc)  # as a Python mapping (lax)
    try:
        validate_document(doc, "fuzz")  # as a file's document (strict)
    except ConfigError:
        pass
    assert time.perf_counter() - start < 5


_DIR = Path(tempfile.mkdtemp(prefix="unetgen-fuzz-"))
HAZARD_SNIPPETS = [
    "!!python/object/apply:os.system ['true']",
    "&a [*a]",
    "<<: {depth: 3}",
    "{a: 1, a: 2}",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "? [a, b]\n: 1",
    ".nan",
    "-.inf",
    "0x7fffffffffffffffffff",
    "1:30:00",
    "2001-12-14t21:59:43.10-05:00",
    '"\\ud800"',
    "NaN",
    "Infinity",
    "[" * 50,
    "\x00\x01",
    "\ufeff{}",
]


@st.composite
def file_texts(draw: st.DrawFn) -> tuple[str, bytes]:
    suffix = draw(st.sampled_from([".yaml", ".yml", ".json"]))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return suffix, draw(st.binary(max_size=200))
    if kind == 1:
        return suffix, draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    doc = draw(shallow | deep(100))  # the test's dumpers recurse
    try:
        text = json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc, allow_unicode=True)
    except (ValueError, yaml.YAMLError):
        text = ""  # ints beyond 4300 digits cannot be written (the hazard tests write one)
    if kind == 3:  # splice a hazard into the text
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(HAZARD_SNIPPETS)) + text[at:]
    return suffix, text.encode("utf-8", "surrogatepass")


@FUZZ
@given(file_texts())
def test_files_raise_only_config_error(case: tuple[str, bytes]) -> None:
    suffix, data = case
    path = _DIR / f"fuzz{suffix}"
    path.write_bytes(data)
    start = time.perf_counter()
    _load(path)
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------------------------------------
# agreement with the committed JSON Schema


@given(configs())
def test_every_config_validates_against_the_schema(config: UNetConfig) -> None:
    for doc in (config.model_dump(mode="json"), config.model_dump(mode="json", exclude_unset=True)):
        assert validate_document(doc) == config  # pydantic accepts the document, as a file...
        VALIDATOR.validate(doc)  # ...and so does the schema


@FUZZ
@given(documents)
def test_documents_the_schema_rejects_are_rejected(doc: Any) -> None:
    """Every document pydantic accepts (as a file) the schema accepts; equivalently every
    document the schema rejects pydantic rejects."""
    try:
        validate_document(doc)
    except ConfigError:
        return
    errors = [e.message for e in VALIDATOR.iter_errors(doc)]
    assert not errors, f"pydantic accepts {doc!r} but the schema says {errors}"


def test_agreement_examples() -> None:
    """The two sides of the agreement on known documents (so that the property tests can fail)."""
    accepted = [{}, {"$schema": "x.json", "norm": "batch"}, {"norm": {"type": "group", "num_groups": 4}}]
    rejected = [{"norm": "grop"}, {"depth": "4"}, {"chanels": 3}, {"norm": {"eps": 0.1}}, {"$schema": None}, []]
    rejected += [{"spatial_dims": True}, {"dropout": {"rate": 1}}, {"kernel_size": [[3, 3.5]]}]
    for doc in accepted:
        validate_document(doc)
        VALIDATOR.validate(doc)
    for doc in rejected:
        assert not VALIDATOR.is_valid(doc), doc
        try:
            validate_document(doc)
        except ConfigError:
            continue
        raise AssertionError(f"pydantic accepts {doc!r}")
