"""Any job type, as the server describes it: `crunch types` and `crunch submit TYPE NAME=VALUE ...`.

The CLI knows no type by heart here. It reads the server's /openapi.json, whose submit operations
are built from each type's spec (jobs.types.spec.JobSpec: summary, body schema, examples), and
turns NAME=VALUE words into the body that schema describes: JSON where the type takes JSON
(integers stay exact at any size, as `crunch sort` keeps them), multipart with --file otherwise.
So a type registered on the server is usable from the terminal without a new CLI release.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_TRUE = frozenset(("true", "1", "yes", "on"))
_FALSE = frozenset(("false", "0", "no", "off"))
#: Digits of an integer word, bounded before int() (CPython refuses more than 4,300).
MAX_DIGITS = 4000


class TypeUsage(Exception):
    """A NAME=VALUE word the type's schema does not take (the CLI's usage error, exit 2)."""


def submit_operations(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Type name -> its POST /api/v1/<name> operation, in the document's order."""
    out = {}
    for path, item in doc.get("paths", {}).items():
        op = item.get("post") if isinstance(item, dict) else None
        if op and "submit" in op.get("tags", ()) and path.startswith("/api/v1/"):
            out[path.removeprefix("/api/v1/")] = op
    return out


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """A schema with its local $ref followed ("#/components/schemas/X")."""
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def body_schema(doc: dict[str, Any], op: dict[str, Any], media: str) -> dict[str, Any] | None:
    content = op.get("requestBody", {}).get("content", {})
    return resolve(doc, content[media].get("schema", {})) if media in content else None


def _types(prop: dict[str, Any]) -> list[str]:
    kinds = prop.get("type")
    if isinstance(kinds, str):
        return [kinds]
    if isinstance(kinds, list):
        return [k for k in kinds if isinstance(k, str)]
    return [k for branch in prop.get("anyOf", []) if isinstance(branch, dict) for k in _types(branch)]


def number(word: str, name: str, integral: bool) -> int | float:
    """A JSON number from a command-line word: integers exact, floats only where the field takes them."""
    t = word.strip().replace("_", "")
    if _INT.match(t):
        if len(t.lstrip("+-")) > MAX_DIGITS:
            raise TypeUsage(f"{name}: {len(t)} digits are too many")
        return int(t)
    if not integral and _FLOAT.match(t):
        value = float(t)
        if math.isfinite(value):
            return value
    raise TypeUsage(f"{name}: {word!r} is not {'an integer' if integral else 'a number'}")


def json_value(name: str, word: str, prop: dict[str, Any]) -> Any:
    """The JSON value of one NAME=VALUE word, by the property's schema."""
    kinds = _types(prop)
    if "integer" in kinds and "number" not in kinds:
        return number(word, name, integral=True)
    if "number" in kinds:
        return number(word, name, integral=False)
    if "boolean" in kinds:
        low = word.strip().lower()
        if low in _TRUE or low in _FALSE:
            return low in _TRUE
        raise TypeUsage(f"{name}: {word!r} is not true or false")
    if "array" in kinds:
        items = prop.get("items", {})
        return [json_value(f"{name}[{i}]", w, items) for i, w in enumerate(t for t in re.split(r"[,\s]+", word) if t)]
    return word


def split_words(words: Iterable[str]) -> list[tuple[str, str]]:
    pairs = []
    for word in words:
        name, sep, value = word.partition("=")
        if not sep or not name:
            raise TypeUsage(f"{word!r} is not NAME=VALUE")
        pairs.append((name, value))
    return pairs


def json_body(doc: dict[str, Any], op: dict[str, Any], kind: str, words: Iterable[str]) -> bytes:
    """The JSON body of `crunch submit KIND NAME=VALUE ...`."""
    schema = body_schema(doc, op, "application/json") or {}
    props = schema.get("properties", {})
    body: dict[str, Any] = {}
    for name, value in split_words(words):
        if name not in props:
            raise TypeUsage(f"{kind} jobs take {', '.join(props) or 'no fields'}, not {name!r}")
        body[name] = json_value(name, value, props[name])
    missing = [n for n in schema.get("required", []) if n not in body]
    if missing:
        raise TypeUsage(f"{kind} jobs need {', '.join(f'{n}=...' for n in missing)}")
    return json.dumps(body).encode()


def describe(doc: dict[str, Any]) -> str:
    """`crunch types`: each type, what it computes, and the fields it takes."""
    lines = []
    for kind, op in submit_operations(doc).items():
        lines.append(f"{kind:<12} {op.get('summary', '')}")
        for media, how in (("application/json", "NAME=VALUE"), ("multipart/form-data", "--file FILE, NAME=VALUE")):
            schema = body_schema(doc, op, media)
            if schema is None:
                continue
            required = set(schema.get("required", []))
            fields = [f"{n}{'' if n in required else '?'}" for n in schema.get("properties", {}) if n != "file"]
            lines.append(f"{'':<12}   {how}: {' '.join(fields) or '(none)'}")
            break
    return "\n".join(lines) + "\n"
