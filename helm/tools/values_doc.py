"""Every value documented with a "# --" comment, and the README's values table generated from
values.yaml and values.schema.json (chart_checks.py values-doc)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from consistency import fail

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?: |$)")


def parse_values_comments(text: str) -> tuple[dict[str, dict], list[str]]:
    """Returns {dotted key: {description, default_text}} for every documented key, and the
    errors (undocumented leaves). A key with a "# --" comment documents its whole value."""
    docs: dict[str, dict] = {}
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    skip_deeper_than: int | None = None
    lines = text.splitlines()
    undocumented: list[str] = []
    values = yaml.safe_load(text) or {}

    def lookup(path: list[str]):
        node = values
        for part in path:
            node = node[part]
        return node

    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        if not stripped:
            comment = []
            continue
        match = KEY_LINE.match(line)
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper_than is not None:
            if indent > skip_deeper_than or stripped.startswith("- "):
                comment = []
                continue
            skip_deeper_than = None
        if not match:
            comment = []
            continue
        indent = len(match.group("indent"))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match.group("key")
        path = [k for _, k in stack] + [key]
        dotted = ".".join(path)
        value = lookup(path)
        description, default = parse_comment(comment)
        comment = []
        if description is not None:
            docs[dotted] = {"description": description, "default": default, "value": value}
            skip_deeper_than = indent
        elif isinstance(value, dict) and value:
            stack.append((indent, key))
        else:
            undocumented.append(f"values.yaml: {dotted} has no '# --' comment")
    return docs, undocumented


def parse_comment(lines: list[str]) -> tuple[str | None, str | None]:
    start = None
    for index, line in enumerate(lines):
        if line.startswith("# --"):
            start = index
    if start is None:
        return None, None
    text: list[str] = []
    default = None
    for line in lines[start:]:
        body = line[1:].strip()
        if body.startswith("--"):
            text.append(body[2:].strip())
        elif body.startswith("@default --"):
            default = body[len("@default --"):].strip()
        else:
            text.append(body)
    return " ".join(t for t in text if t), default


def schema_node(schema: dict, path: list[str]) -> dict | None:
    node = schema
    for part in path:
        node = resolve(schema, node)
        props = node.get("properties", {})
        if part not in props:
            return None
        node = props[part]
    return resolve(schema, node)


def resolve(schema: dict, node: dict) -> dict:
    while True:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].split("/")[-1]]
        elif "allOf" in node and len(node["allOf"]) == 1 and "type" not in node:
            node = node["allOf"][0]
        else:
            return node


def type_of(schema: dict, path: list[str]) -> str:
    node = schema_node(schema, path)
    if node is None:
        return "?"
    if "type" in node:
        kind = node["type"]
        return "/".join(kind) if isinstance(kind, list) else kind
    kinds = []
    for option in node.get("anyOf", []) + node.get("oneOf", []):
        option = resolve(schema, option)
        if option.get("type") and option["type"] not in kinds:
            kinds.append(option["type"])
    return "/".join(kinds) or "?"


def render_table(docs: dict[str, dict], schema: dict) -> str:
    rows = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, doc in docs.items():
        default = doc["default"]
        if default is None:
            default = "`" + json.dumps(doc["value"], separators=(",", ":")) + "`"
            default = default.replace("|", "\\|")
        description = doc["description"].replace("|", "\\|")
        kind = type_of(schema, key.split("."))
        rows.append(f"| `{key}` | {kind} | {default} | {description} |")
    return "\n".join(rows)


def values_doc(chart: str, write: bool) -> int:
    chart_dir = Path(chart)
    text = (chart_dir / "values.yaml").read_text()
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    docs, errors = parse_values_comments(text)
    for key in docs:
        if schema_node(schema, key.split(".")) is None:
            errors.append(f"values.yaml: {key} is not in values.schema.json")
    # Every top-level schema property must have a default in values.yaml (so it is documented).
    documented_prefixes = set(docs)
    for top in schema["properties"]:
        if not any(k == top or k.startswith(top + ".") for k in documented_prefixes):
            errors.append(f"values.schema.json: {top} has no documented default in values.yaml")
    readme_path = chart_dir / "README.md"
    readme = readme_path.read_text()
    start, end = "<!-- values:start -->", "<!-- values:end -->"
    if start not in readme or end not in readme:
        errors.append(f"README.md: markers {start} / {end} missing")
        return fail(errors)
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    table = render_table(docs, schema)
    wanted = f"{head}{start}\n{table}\n{end}{tail}"
    if write:
        readme_path.write_text(wanted)
        print(f"  README.md values table written ({len(docs)} values)")
    elif wanted != readme:
        errors.append("README.md: the values table is out of date: run "
                      "`.tools/chart-venv/bin/python helm/tools/chart_checks.py values-doc "
                      "helm/scan-gateway --write`")
    if not errors:
        print(f"  {len(docs)} values documented, README table current")
    return fail(errors)
