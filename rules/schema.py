"""The shipped JSON Schema as the one source of truth for the policy file's shape.

jsonschema's own messages name JSON paths and whole instances; users want the YAML line and a
short reason, so each error kind is rewritten here into a one-line :class:`InputError`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from gpupack.errors import InputError
from gpupack.yamlfile import LineDict, LineList

KIND_KEYS = ("resource", "max_devices", "pin", "anti_affinity", "replicas")
_TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "an integer", "array": "a list",
               "object": "a mapping", "boolean": "true or false"}


@functools.cache
def policy_schema() -> dict:
    """The schema shipped as ``gpupack/rules/policy.schema.json`` (also for editors and CI)."""
    return json.loads(resources.files("gpupack.rules").joinpath("policy.schema.json").read_text(encoding="utf-8"))


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(policy_schema())


def validate_document(data: Any, path: str) -> None:
    """Raise one error: an unknown field first (a misspelt key explains the errors it causes),
    else the one that comes first in the file, so fixing a file top to bottom converges."""
    errors = sorted(_validator().iter_errors(data),
                    key=lambda e: (e.validator != "additionalProperties", line_of(data, list(e.absolute_path))))
    if errors:
        raise _to_input_error(errors[0], data, path)


def field_name(steps: list[Any]) -> str:
    """``['policies', 2, 'max']`` -> ``policies[2].max``."""
    text = ""
    for step in steps:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def line_of(data: Any, steps: list[Any]) -> int:
    """The line of the last step's key or item (1-based); the document's first line for the root."""
    line, node = getattr(data, "line", 1), data
    for step in steps:
        if isinstance(node, LineDict) and isinstance(step, str):
            line = node.line_of(step)
        elif isinstance(node, LineList) and isinstance(step, int):
            line = node.item_lines[step]
        node = node[step]
    return line


def _to_input_error(error: ValidationError, data: Any, path: str) -> InputError:
    steps = list(error.absolute_path)
    # Errors from iter_errors always carry these; the stubs also allow the `Unset` sentinel of a
    # hand-built error (and a bare boolean schema, which the policy schema never uses).
    instance: Any = error.instance
    schema: Any = error.schema
    expected_value: Any = error.validator_value
    message = error.message
    if error.validator == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        unexpected = [key for key in instance if key not in schema.get("properties", {})]
        key = min(unexpected, key=lambda k: instance.line_of(k) if isinstance(instance, LineDict) else 0)
        steps.append(key)
        message = f"unknown field (known: {', '.join(known)})"
    elif error.validator == "required":
        missing = [key for key in expected_value if key not in instance]
        return InputError("required field is missing", path=path, line=line_of(data, steps),
                          field=field_name([*steps, missing[0]]))
    elif error.validator == "dependentRequired":
        present = next(k for k, needs in expected_value.items() if k in instance and any(n not in instance for n in needs))
        needed = [n for n in expected_value[present] if n not in instance]
        steps.append(present)
        message = f"needs {', '.join(needed)} in the same policy"
    elif error.validator == "oneOf":
        kinds = [key for key in KIND_KEYS if key in instance]
        if kinds:
            steps.append(kinds[1])
            message = f"a policy has one kind, but this one has both {kinds[0]} and {kinds[1]}"
        else:
            message = f"a policy needs one of: {', '.join(KIND_KEYS)}"
    elif error.validator == "enum":
        message = f"{instance!r} is not one of: {', '.join(map(str, expected_value))}"
    elif error.validator == "type":
        expected = expected_value if isinstance(expected_value, list) else [expected_value]
        message = f"must be {' or '.join(_TYPE_NAMES.get(t, str(t)) for t in expected)}, not {_describe(instance)}"
        if not steps:
            message = "top level must be a mapping with a 'policies' list"
    elif error.validator == "minimum":
        message = f"must be at least {expected_value}"
    elif error.validator == "minItems":
        message = f"needs at least {expected_value} entries"
    elif error.validator == "minLength":
        message = "must not be empty"
    elif error.validator == "minProperties":
        message = "must name at least one of: devices, labels, servers"
    elif error.validator == "pattern":
        message = f"{instance!r} must start with a letter or digit and hold only letters, digits, '_', '.', '-'"
    return InputError(message, path=path, line=line_of(data, steps), field=field_name(steps) or None)


def _describe(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (dict, list)):
        return _TYPE_NAMES["object" if isinstance(value, dict) else "array"]
    return repr(value)
