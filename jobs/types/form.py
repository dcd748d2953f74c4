"""A job type's browser form: the fields it shows on the home page, and how their text becomes a body.

A page form or a GET link sends text only. Each field says how its text becomes the JSON value the
API would receive (a whole number, a flag, a string), and then the type's spec validates that body
exactly as it validates a JSON request (JobSpec.parse_json), so the pages and the API build a
submission the same way and word their errors the same way. Types whose API body is multipart
(an uploaded file) parse their page form with the same parse_form as the API.

Written by hand rather than with WTForms: the forms render through the existing accessible macros
(rest/templates/_macros.html), and the only conversion needed is text to JSON scalars.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jobs.errors import InvalidParams

#: Digits a whole number typed into a form may have, checked before int() sees it (CPython refuses
#: more than 4,300 and is quadratic below that): 2^64 - 1, the largest bound a setting allows, has 20.
#: The same bound and wording as rest.input_bounds, which the job layer cannot import.
MAX_DIGITS = 20
_UINT = re.compile(r"[0-9]+")
_TRUE = frozenset(("true", "1", "on", "yes"))
_FALSE = frozenset(("false", "0", "off", "no", ""))

KINDS = frozenset(("number", "text", "date", "textarea", "file", "checkbox", "choice"))


@dataclass(frozen=True)
class FormField:
    """One input of a type's form.

    `hint` is formatted with the server's limits (`{limits.max_fib_n:,}`), and `maximum` names the
    Limits attribute a number may not exceed, so the form states the limits the server enforces.
    """

    name: str
    label: str
    kind: str = "number"
    hint: str = ""
    placeholder: str = ""
    required: bool = False
    #: (value, label) pairs of a "choice" (radio buttons); the first is the default.
    choices: tuple[tuple[str, str], ...] = ()
    #: A file input's accept attribute.
    accept: str = ""
    #: The Limits attribute that bounds a number (its HTML max).
    maximum: str | None = None
    #: An HTML pattern for text inputs.
    pattern: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"form field {self.name!r}: kind must be one of {', '.join(sorted(KINDS))}")

    def hint_for(self, limits: Any) -> str:
        return self.hint.format(limits=limits)

    def max_for(self, limits: Any) -> int | None:
        return getattr(limits, self.maximum) if self.maximum else None

    def choices_for(self, limits: Any) -> list[tuple[str, str]]:
        return [(value, label.format(limits=limits)) for value, label in self.choices]


def whole_number(values: Mapping[str, str], name: str, errors: list[dict[str, Any]],
                 required: bool = True) -> int | None:
    """A whole number typed into a form or a query string, or an error located at the field."""
    raw = (values.get(name) or "").strip()
    if not raw:
        if required:
            errors.append({"loc": ["body", name], "msg": "this field is required"})
        return None
    if not _UINT.fullmatch(raw):
        errors.append({"loc": ["body", name], "msg": "must be a whole number, 0 or more"})
        return None
    digits = raw.lstrip("0") or "0"
    if len(digits) > MAX_DIGITS:
        errors.append({"loc": ["body", name],
                       "msg": f"too long: has {len(digits)} digits; at most {MAX_DIGITS} are accepted"})
        return None
    return int(digits)


def flag(values: Mapping[str, str], name: str, errors: list[dict[str, Any]]) -> bool:
    raw = (values.get(name) or "").strip().lower()
    if raw in _TRUE or raw in _FALSE:
        return raw in _TRUE
    errors.append({"loc": ["body", name], "msg": "must be true or false"})
    return False


def body_from_form(fields: tuple[FormField, ...], values: Mapping[str, str]) -> dict[str, Any]:
    """The JSON body a form's text stands for; raises InvalidParams for text that is no such value.

    Empty optional fields are left out, so the spec's defaults apply as they would to a JSON body.
    """
    errors: list[dict[str, Any]] = []
    body: dict[str, Any] = {}
    for f in fields:
        if f.kind == "number":
            value = whole_number(values, f.name, errors, f.required)
            if value is not None:
                body[f.name] = value
        elif f.kind == "checkbox":
            body[f.name] = flag(values, f.name, errors)
        elif f.kind == "file":
            continue  # JSON-bodied types have no uploads
        else:
            text = (values.get(f.name) or "").strip()
            if text:
                body[f.name] = text
            elif f.required:
                errors.append({"loc": ["body", f.name], "msg": "this field is required"})
    if errors:
        raise InvalidParams(errors)
    return body


# -- multipart fields in JSON Schema: what a form value the server strips may look like ------------

#: The characters str.strip() removes, as a regex class (JSON Schema's \s differs: it omits
#: \x1c-\x1f and \x85 and adds \ufeff), so a schema can say "blank" or "with spaces around" exactly.
STRIPPED = r"\x09-\x0d\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def blank_value() -> dict[str, Any]:
    """A form value that is empty once stripped, which the server takes as absent."""
    return {"type": "string", "pattern": f"^[{STRIPPED}]*$"}


def stripped_words(words: tuple[str, ...]) -> dict[str, Any]:
    """One of `words` in any letter case, with whitespace around (the server strips and lowers it)."""
    def ci(word: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)

    return {"type": "string", "pattern": f"^[{STRIPPED}]*(?:{'|'.join(ci(w) for w in words)})[{STRIPPED}]*$",
            "examples": list(words)}
