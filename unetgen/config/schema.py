"""The JSON Schema (draft 2020-12) of config files, generated from `UNetConfig`.

The committed copy, ``schemas/unet-config.schema.json``, is what editors use (YAML files point at
it with a ``# yaml-language-server: $schema=...`` first line, JSON files with a ``"$schema"`` key);
a test fails when it differs from `config_json_schema`. Regenerate it with
``unetgen schema > schemas/unet-config.schema.json``.
"""

from __future__ import annotations

import json
from typing import Any

from .unet_config import UNetConfig

__all__ = ["SCHEMA_DIALECT", "SCHEMA_ID", "SCHEMA_PATH", "config_json_schema", "schema_text", "with_required_tags"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:unetgen:unet-config"
SCHEMA_PATH = "schemas/unet-config.schema.json"
"""Where the schema is committed, relative to the repository root."""


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of a config file: `UNetConfig.model_json_schema()` with the draft, an id,
    a top-level ``"$schema"`` string property, and ``type`` required in every option mapping
    (pydantic needs it to choose the option; a bare string such as ``"batch"`` needs none)."""
    schema = with_required_tags(UNetConfig.model_json_schema())
    schema["properties"] = {
        "$schema": {
            "description": "The JSON Schema of this file, for editors; ignored when loading.",
            "type": "string",
        },
        **schema["properties"],
    }
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": "UNetConfig", **schema}


def with_required_tags(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a pydantic model's JSON Schema) with ``type`` required in every option mapping of
    a discriminated union, changed in place and returned."""
    for node in _walk(schema):
        for ref in node.get("discriminator", {}).get("mapping", {}).values():
            target = schema["$defs"][ref.removeprefix("#/$defs/")]
            target["required"] = sorted({*target.get("required", ()), "type"})
    return schema


def schema_text() -> str:
    """The schema as committed: indented JSON and a final newline."""
    return json.dumps(config_json_schema(), indent=2) + "\n"


def _walk(node: Any) -> Any:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
