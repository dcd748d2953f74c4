"""The project's documents stay true: docs/api.md against /openapi.json, the README against the repository.

docs/api.md is written by hand for people; /openapi.json is generated from the schemas that
validate requests. This test is what keeps the two from drifting: a route, a query parameter
or a job field added to one and not the other fails here, naming what to add where.
"""

from __future__ import annotations

import re

import pytest

from infra.processes import ROOT

API_MD = ROOT / "docs" / "api.md"
#: Section headings of docs/api.md that name an operation: ### `POST /api/v1/primes`
OPERATION = re.compile(r"^#{2,4} `(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`\s*$", re.M)
METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture(scope="module")
def spec(redis_url: str) -> dict:
    from rest import create_app
    from rest.settings import Settings

    resp = create_app(settings=Settings(redis_url=redis_url)).test_client().get("/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()


def documented() -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the text of its section in docs/api.md."""
    text = API_MD.read_text()
    heads = list(OPERATION.finditer(text))
    out = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        nxt = re.search(r"^#{1,3} ", text[m.end():end], re.M)  # a section ends at the next heading
        out[(m.group(1), m.group(2))] = text[m.end(): m.end() + nxt.start() if nxt else end]
    return out


def operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {(method.upper(), path): op for path, item in spec["paths"].items()
            for method, op in item.items() if method in METHODS}


def test_every_operation_of_the_openapi_document_is_in_docs_api_md_and_back(spec: dict) -> None:
    in_spec, in_doc = set(operations(spec)), set(documented())
    assert in_spec, "the document lists operations"
    missing = sorted(in_spec - in_doc)
    extra = sorted(in_doc - in_spec)
    assert not missing, f"add a section `### \\`METHOD /path\\`` to docs/api.md for: {missing}"
    assert not extra, f"docs/api.md documents operations the server does not have: {extra}"


def test_every_parameter_is_described_in_its_section(spec: dict) -> None:
    docs = documented()
    absent = []
    for (method, path), op in operations(spec).items():
        params = list(spec["paths"][path].get("parameters", [])) + list(op.get("parameters", []))
        for p in params:
            if "$ref" in p:
                p = spec["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]]
            if p.get("in") == "query" and f"`{p['name']}`" not in docs[(method, path)]:
                absent.append(f"{method} {path}: `{p['name']}`")
    assert not absent, f"query parameters docs/api.md does not describe in their section: {absent}"


def test_every_field_of_the_job_resource_is_described(spec: dict) -> None:
    text = API_MD.read_text()
    table = text[text.index("## The job resource"):text.index("## Submitting jobs")]
    fields = spec["components"]["schemas"]["Job"]["properties"]
    absent = [f for f in fields if not re.search(rf"^\| [^|]*`{re.escape(f)}`", table, re.M)]
    assert not absent, f"job fields missing from docs/api.md's table: {absent}"


def test_the_readme_points_only_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme, "the README links outside the repository"
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    for path in re.findall(r"@(examples/[\w./-]+)|--file (examples/[\w./-]+)|crunch csv (examples/[\w./-]+)",
                           readme):
        name = next(p for p in path if p)
        assert (ROOT / name).is_file(), f"the README uploads {name}, which the repository does not ship"
    assert "4f0c…" not in readme and "ID ;" not in readme, "examples use real ids ($id), not placeholders"
