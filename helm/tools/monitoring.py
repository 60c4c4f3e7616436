"""The chart's alerts and Grafana dashboard against the gateway (chart_checks.py rules-file,
metrics, alerts-covered).

  rules-file RENDERED OUT          the PrometheusRule's groups as a Prometheus rule file (for
                                   promtool check rules / test rules)
  metrics SRC CHART RENDERED PROMTOOL
                                   every PromQL expression of the rendered alerts and dashboard
                                   names metrics, each one the gateway registers in SRC (read
                                   from its Rust sources), and parses (promtool check rules);
                                   the dashboard is valid JSON with unique panel ids and a target
                                   on every panel, and the ConfigMap carries CHART's file
  alerts-covered RENDERED TESTS README
                                   every rendered alert has a case in TESTS that fires it and a
                                   runbook in README (what it means, what to check, what to do),
                                   and neither names an alert that does not exist
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import yaml

from consistency import fail, load_docs

# Series a family exposes in the text format, by type (prometheus-client adds `_total` to
# counters; a unit, e.g. `_seconds`, comes before the suffixes).
SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
REGISTER = re.compile(
    r'\.register(?P<unit_call>_with_unit)?\(\s*"(?P<name>[a-z0-9_]+)",\s*'
    r'"(?:[^"\\]|\\.)*",\s*(?:Unit::(?P<unit>\w+),\s*)?(?P<value>[^;]*?)\s*,?\s*\)\s*;', re.S)
METRIC = re.compile(r"\bscan_gateway_[a-z0-9_]+\b")
# Grafana's variables, replaced by values promtool can parse.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def metric_type(source: str, value: str, name: str) -> str:
    """counter, gauge or histogram of the value passed to register(): a field or local whose
    declared type names the kind, or a type implementing EncodeMetric with a MetricType."""
    ident = re.search(r"(\w+)(?:\.clone\(\))?$", value)
    if not ident:
        raise ValueError(f"{name}: cannot read the registered value {value!r}")
    field = ident.group(1)
    # A struct field's type (not a value in a constructor: no call in it), or a local's value.
    types = [m.group(1) for m in re.finditer(rf"^\s*(?:pub\s+)?{field}\s*:\s*(.+?),?\s*$", source, re.M)
             if "(" not in m.group(1)]
    types += re.findall(rf"let\s+{field}\s*=\s*([^;]+);", source)
    # Several structs may have a field of that name (a label set's, say): the first whose type
    # is a metric wins.
    for kind in types:
        for word, family in (("Histogram", "histogram"), ("Counter", "counter"), ("Gauge", "gauge")):
            if re.search(rf"\b{word}\b", kind):
                return family
        custom = re.search(rf"impl EncodeMetric for {re.escape(kind.strip())}\b.*?MetricType::(\w+)",
                           source, re.S)
        if custom and custom.group(1).lower() in SUFFIXES:
            return custom.group(1).lower()
    raise ValueError(f"{name}: cannot tell the metric type of {field} from {types}")


def source_metrics(src: str) -> dict[str, str]:
    """Every series name the gateway exposes -> its family, from the registrations in src/."""
    files = {path: path.read_text() for path in Path(src).rglob("*.rs")}
    prefixes = {m for text in files.values() for m in re.findall(r'Registry::with_prefix\("(\w+)"\)', text)}
    if len(prefixes) != 1:
        raise ValueError(f"expected one registry prefix in {src}, found {sorted(prefixes)}")
    prefix = prefixes.pop() + "_"
    series: dict[str, str] = {}
    for path, text in files.items():
        # Every registration (a name first) must be one the pattern reads, or a metric would go
        # unseen.
        calls = len(re.findall(r'\.register(?:_with_unit)?\(\s*"', text))
        read = len(REGISTER.findall(text))
        if calls != read:
            raise ValueError(f"{path}: {calls} registrations, {read} of them readable")
        for match in REGISTER.finditer(text):
            name = prefix + match.group("name")
            if match.group("unit"):
                name += "_" + match.group("unit").lower()
            kind = metric_type(text, match.group("value"), name)
            for suffix in SUFFIXES[kind]:
                series[name + suffix] = f"{name} ({kind}, {path})"
    return series


def rule_file(rendered: str) -> dict:
    rules = [d for d in load_docs(rendered) if d["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        raise ValueError(f"{rendered}: expected one PrometheusRule, found {len(rules)}")
    return {"groups": rules[0]["spec"]["groups"]}


def write_rules_file(rendered: str, out: str) -> int:
    Path(out).write_text(yaml.safe_dump(rule_file(rendered), sort_keys=False, width=1000))
    return 0


def dashboard_panels(dashboard: dict) -> list[dict]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels += panel.get("panels", [])  # a collapsed row holds its panels
    return panels


def check_dashboard(rendered: str, chart: Path, errors: list[str]) -> list[tuple[str, str]]:
    """Checks the dashboard ConfigMap; returns (where, expr) of every query in it."""
    maps = [d for d in load_docs(rendered) if d["kind"] == "ConfigMap"
            and any(key.endswith(".json") for key in d.get("data", {}))]
    if len(maps) != 1:
        errors.append(f"expected one dashboard ConfigMap, found {len(maps)}")
        return []
    (key, text), = [(k, v) for k, v in maps[0]["data"].items() if k.endswith(".json")]
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as err:
        errors.append(f"dashboard {key}: not JSON: {err}")
        return []
    if dashboard != json.loads((chart / "dashboards" / key).read_text()):
        errors.append(f"the ConfigMap's {key} is not dashboards/{key}")
    values = yaml.safe_load((chart / "values.yaml").read_text())["monitoring"]["dashboard"]
    labels = maps[0]["metadata"]["labels"]
    if labels.get(values["sidecarLabel"]) != values["sidecarLabelValue"]:
        errors.append(f"dashboard ConfigMap without the default sidecar label {values['sidecarLabel']}")
    if not dashboard.get("uid") or not dashboard.get("title"):
        errors.append("dashboard without uid or title")
    panels = dashboard_panels(dashboard)
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append(f"dashboard panel ids missing or repeated: {ids}")
    queries = []
    for panel in panels:
        where = f"dashboard panel {panel.get('id')} '{panel.get('title')}'"
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"{where}: no query")
        for target in targets:
            if not target.get("expr"):
                errors.append(f"{where}: a target without expr")
            else:
                queries.append((where, target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        found = re.fullmatch(r"label_values\((.*),\s*\w+\)", query or "")
        if found:
            queries.append((f"dashboard variable {variable['name']}", found.group(1)))
    return queries


def metrics(src: str, chart_dir: str, rendered: str, promtool: str) -> int:
    errors: list[str] = []
    known = source_metrics(src)
    if len(known) < 20:  # the parser found the registrations (there are dozens)
        errors.append(f"only {len(known)} series found in {src}: the registrations were not read")
    chart = Path(chart_dir)
    queries = [(f"alert {r['alert']}", r["expr"]) for g in rule_file(rendered)["groups"]
               for r in g["rules"]]
    queries += check_dashboard(rendered, chart, errors)
    used = set()
    for where, expr in queries:
        names = set(METRIC.findall(expr))
        if not names:
            errors.append(f"{where}: names no scan_gateway_ metric: {expr}")
        for name in sorted(names - set(known)):
            errors.append(f"{where}: {name} is not a metric of the gateway")
        used |= names
    # PromQL syntax: promtool parses every query as a recording rule.
    with tempfile.TemporaryDirectory() as tmp:
        rules = []
        for index, (_, expr) in enumerate(queries):
            for variable, value in GRAFANA_VARS.items():
                expr = expr.replace(variable, value)
            expr = re.sub(r"\$\{?(\w+)\}?", r"\1", expr)  # $namespace -> namespace
            rules.append({"record": f"check:query_{index}", "expr": expr})
        path = Path(tmp) / "queries.yaml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
        if result.returncode:
            errors.append(f"promtool check rules refused a query:\n{result.stdout}{result.stderr}")
    if not errors:
        print(f"  {len(queries)} queries (alerts, dashboard panels and variables) parse and name "
              f"{len(used)} series, all registered in {src} ({len(known)} series there)")
    return fail(errors)


def alerts_covered(rendered: str, tests: str, readme: str) -> int:
    errors: list[str] = []
    alerts = [r["alert"] for g in rule_file(rendered)["groups"] for r in g["rules"] if "alert" in r]
    cases = [c for t in yaml.safe_load(Path(tests).read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    text = Path(readme).read_text()
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0] if "\n## Alerts\n" in text else ""
    runbooks = dict(re.findall(r"^#### (\w+)\n(.*?)(?=^#### |\Z)", section, re.M | re.S))
    for alert in alerts:
        if alert not in fired:
            errors.append(f"{alert}: no test case that fires it in {tests}")
        book = runbooks.get(alert)
        if book is None:
            errors.append(f"{alert}: no runbook (#### {alert}) under '## Alerts' in {readme}")
        elif not all(part in book for part in ("**Means.**", "**Check.**", "**Do.**")):
            errors.append(f"{alert}: its runbook lacks **Means.**, **Check.** or **Do.**")
    for name in sorted((set(runbooks) | fired | silent) - set(alerts)):
        errors.append(f"{name} is tested or has a runbook, but the chart renders no such alert")
    if not errors:
        print(f"  {len(alerts)} alerts, each fired by a test case ({len(silent & set(alerts))} "
              f"also with a silent case) and with a runbook in the README")
    return fail(errors)
