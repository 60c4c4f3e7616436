#!/usr/bin/env python3
"""Checks of the scan-gateway chart that no off-the-shelf tool makes (used by
scripts/check-chart.sh; needs PyYAML, which the chart-tools venv has).

  schema-strict SCHEMA            every object in the schema refuses unknown keys
  values-doc CHART [--write]      every value has a "# --" comment, and the README's values
                                  table is the one generated from values.yaml + the schema
  split RENDERED OUT_CORE OUT_CRD put CRD kinds (which kubernetes-validate has no schema for)
                                  in OUT_CRD, the rest in OUT_CORE; prints what it set apart
  rendered RENDERED               cross-resource consistency of one rendered release
  readme-examples CHART HELM KUBE every install example of the chart README renders as pasted
                                  (see readme_examples.py)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from consistency import fail, load_docs, rendered
from readme_examples import readme_examples
from values_doc import values_doc

# Kinds served by CRDs, not by Kubernetes itself: kubernetes-validate cannot know them.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD",
    ("cert-manager.io/v1", "Certificate"): "cert-manager CRD",
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
        return rendered(args[0])
    if command == "readme-examples":
        return readme_examples(*args)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
