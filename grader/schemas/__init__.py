"""JSON Schemas for the documents pplab writes, and a small validator for them.

The validator implements the subset of JSON Schema draft-07 that the
schemas here use: ``type``, ``enum``, ``properties``, ``required``,
``additionalProperties`` (true, false or a schema), ``items`` (one schema),
``minItems``, ``minimum``, ``anyOf``, and ``$ref`` to ``#/definitions/...``.
Any other keyword raises ``SchemaError`` rather than being ignored, so a
schema cannot silently ask for more than is checked. pplab needs no
``jsonschema`` package at grading time; the tests compare this validator
with ``jsonschema`` where that package is installed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent
GRADESCOPE_RESULTS = "gradescope_results"

# Keywords that only annotate a schema; they never make an instance invalid.
ANNOTATIONS = {"$schema", "$id", "title", "description", "definitions", "default", "examples"}
SUPPORTED = {"type", "enum", "properties", "required", "additionalProperties", "items", "minItems",
             "minimum", "anyOf", "$ref"}


class SchemaError(ValueError):
    """The schema uses a keyword or a reference this validator does not implement."""


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    """Return the schema stored as ``grader/schemas/<name>.schema.json``."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8"))


def _is_type(value: Any, kind: str) -> bool:
    # JSON has one number type: booleans are not numbers, and 2.0 is an integer.
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "integer":
        return _is_type(value, "number") and float(value).is_integer()
    raise SchemaError(f"unknown type {kind!r} in schema")


def _resolve(reference: str, root: dict) -> dict:
    prefix = "#/definitions/"
    if not reference.startswith(prefix):
        raise SchemaError(f"only local references {prefix}NAME are supported, got {reference!r}")
    try:
        return root["definitions"][reference[len(prefix):]]
    except KeyError:
        raise SchemaError(f"reference {reference!r} names no definition") from None


def _errors(value: Any, schema: dict, root: dict, path: str) -> list[str]:
    unknown = set(schema) - SUPPORTED - ANNOTATIONS
    if unknown:
        raise SchemaError(f"schema keyword(s) {sorted(unknown)} at {path} are not supported")
    if "$ref" in schema:
        return _errors(value, _resolve(schema["$ref"], root), root, path)

    errors: list[str] = []
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(value, kind) for kind in kinds):
            return [f"{path}: expected {' or '.join(kinds)}, got {json.dumps(value)[:60]}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {json.dumps(value)[:60]} is not one of {schema['enum']}")
    if "minimum" in schema and _is_type(value, "number") and value < schema["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {schema['minimum']}")

    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{path}: required field {name!r} is missing")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors.extend(_errors(item, properties[name], root, f"{path}.{name}"))
            elif extra is False:
                errors.append(f"{path}: field {name!r} is not allowed")
            elif isinstance(extra, dict):
                errors.extend(_errors(item, extra, root, f"{path}.{name}"))

    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: expected at least {schema['minItems']} item(s), got {len(value)}")
        if "items" in schema:
            for index, item in enumerate(value):
                errors.extend(_errors(item, schema["items"], root, f"{path}[{index}]"))

    if "anyOf" in schema:
        branches = [_errors(value, branch, root, path) for branch in schema["anyOf"]]
        if all(branches):
            reasons = "; or ".join(", ".join(branch) for branch in branches)
            errors.append(f"{path}: matches none of the allowed forms ({reasons})")
    return errors


def validate(value: Any, schema: dict) -> list[str]:
    """Return the ways ``value`` breaks ``schema`` as messages with a JSON path; empty when valid.

    Raises SchemaError when the schema uses a keyword outside the supported subset.
    """
    return _errors(value, schema, schema, "$")


def validate_gradescope_results(document: Any) -> list[str]:
    """Return the ways ``document`` breaks the Gradescope ``results.json`` schema; empty when valid."""
    return validate(document, load_schema(GRADESCOPE_RESULTS))
