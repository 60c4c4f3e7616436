#!/usr/bin/env python3
"""Checks of the scan-gateway chart that no off-the-shelf tool makes (used by
scripts/check-chart.sh; needs PyYAML, which the chart-tools venv has).

  schema-strict SCHEMA            every object in the schema refuses unknown keys
  values-doc CHART [--write]      every value has a "# --" comment, and the README's values
                                  table is the one generated from values.yaml + the schema
  split RENDERED OUT_CORE OUT_CRD put CRD kinds (which kubernetes-validate has no schema for)
                                  in OUT_CRD, the rest in OUT_CORE; prints what it set apart
  rendered RENDERED [CHART VALUES...]
                                  cross-resource consistency of one rendered release; with
                                  the chart and the values files of the render, also that the
                                  environment carries the values given (consistency.VALUE_ENV,
                                  OPTIONAL_VALUE_ENV)
  gateway-defaults CHART ARGS_RS  the defaults of the values always passed as environment
                                  variables are the gateway's own (src/config/args.rs), and
                                  those passed only when set are settings it reads, empty
  prestop OLD NEW DOCKERFILE SECS the preStop hook of a render for Kubernetes < 1.30 (OLD) execs
                                  the Dockerfile's ENTRYPOINT with `wait SECSs`, the one for
                                  >= 1.30 (NEW) is the sleep action; SECS 0: neither has one
  readme-examples CHART HELM KUBE every install example of the chart README renders as pasted
                                  (see readme_examples.py)
  rules-file, metrics, alerts-covered
                                  the alerts and the dashboard (see monitoring.py)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

from consistency import fail, gateway_defaults, load_docs, rendered
from monitoring import alerts_covered, metrics, write_rules_file
from readme_examples import readme_examples
from values_doc import values_doc

# Kinds served by CRDs, not by Kubernetes itself: kubernetes-validate cannot know them.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD",
    ("cert-manager.io/v1", "Certificate"): "cert-manager CRD",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator CRD",
}
# Objects whose keys are free by nature (documented in the schema's description).
FREE_FORM = {"/properties/global"}


# --- schema-strict ---------------------------------------------------------------------------

def schema_strict(path: str) -> int:
    schema = json.loads(Path(path).read_text())
    errors: list[str] = []

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" or "properties" in node:
                extra = node.get("additionalProperties")
                if where in FREE_FORM:
                    pass
                elif extra is None or extra is True:
                    errors.append(f"{where or '/'}: object without additionalProperties: false")
                elif isinstance(extra, dict) and "properties" in node:
                    errors.append(f"{where}: both properties and a schema for other keys")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(schema, "")
    if not errors:
        count = json.dumps(schema).count('"additionalProperties"')
        print(f"  {count} objects, each refusing unknown keys (or typed maps)")
    return fail(errors)


# --- split -----------------------------------------------------------------------------------

def split(rendered: str, core_out: str, crd_out: str) -> int:
    core, crd = [], []
    for doc in load_docs(rendered):
        reason = CRD_KINDS.get((doc.get("apiVersion"), doc.get("kind")))
        if reason:
            crd.append(doc)
            print(f"  skipped {doc['kind']} {doc['metadata']['name']}: {reason}, no schema in "
                  "kubernetes-validate (cross-checked by chart_checks.py rendered instead)")
        else:
            core.append(doc)
    Path(core_out).write_text(yaml.safe_dump_all(core, sort_keys=False))
    Path(crd_out).write_text(yaml.safe_dump_all(crd, sort_keys=False))
    return 0


# --- prestop ---------------------------------------------------------------------------------

def pre_stop_hook(path: str) -> dict | None:
    (deploy,) = [d for d in load_docs(path) if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container.get("lifecycle", {}).get("preStop")


def prestop(old: str, new: str, dockerfile: str, seconds: str) -> int:
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", Path(dockerfile).read_text(), re.M)
    if not entrypoint:
        return fail([f"{dockerfile}: no ENTRYPOINT in exec form"])
    binary = json.loads(entrypoint.group(1))[0]
    wanted = {"exec": {"command": [binary, "wait", f"{seconds}s"]}}, {"sleep": {"seconds": int(seconds)}}
    if seconds == "0":
        wanted = None, None
    errors = []
    for path, hook, kube in ((old, wanted[0], "< 1.30"), (new, wanted[1], ">= 1.30")):
        got = pre_stop_hook(path)
        if got != hook:
            errors.append(f"Kubernetes {kube}: preStop {got}, expected {hook}")
    if not errors:
        print(f"  preStop with {seconds} s: {wanted[0]} below 1.30, {wanted[1]} from 1.30")
    return fail(errors)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    command, args = argv[1], argv[2:]
    if command == "schema-strict":
        return schema_strict(args[0])
    if command == "values-doc":
        return values_doc(args[0], "--write" in args)
    if command == "split":
        return split(*args)
    if command == "rendered":
        return rendered(args[0], args[1] if len(args) > 1 else None, args[2:])
    if command == "gateway-defaults":
        return gateway_defaults(*args)
    if command == "prestop":
        return prestop(*args)
    if command == "rules-file":
        return write_rules_file(*args)
    if command == "metrics":
        return metrics(*args)
    if command == "alerts-covered":
        return alerts_covered(*args)
    if command == "readme-examples":
        return readme_examples(*args)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
