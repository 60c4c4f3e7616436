#!/usr/bin/env python3
"""Checks of the scan-gateway chart that no off-the-shelf tool makes (used by
scripts/check-chart.sh; needs PyYAML, which the chart-tools venv has).

  schema-strict SCHEMA            every object in the schema refuses unknown keys
  values-doc CHART [--write]      every value has a "# --" comment, and the README's values
                                  table is the one generated from values.yaml + the schema
  split RENDERED OUT_CORE OUT_CRD put CRD kinds (which kubernetes-validate has no schema for)
                                  in OUT_CRD, the rest in OUT_CORE; prints what it set apart
  rendered RENDERED               cross-resource consistency of one rendered release
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import yaml

# Kinds served by CRDs, not by Kubernetes itself: kubernetes-validate cannot know them.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus Operator CRD",
    ("cert-manager.io/v1", "Certificate"): "cert-manager CRD",
}

# Every environment variable the chart may set; a name outside this list is a typo (or a
# setting the gateway does not read). The contract is in ../shared/design.md and README.md.
GATEWAY_ENV = {
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "MDE_API_BASE_URL", "MDE_TOKEN_SCOPE",
    "SCAN_GATEWAY_CONFIG", "SCAN_GATEWAY_LISTEN", "SCAN_GATEWAY_ADMIN_LISTEN", "SCAN_GATEWAY_QUOTA",
    "SCAN_GATEWAY_MAX_QUOTA_WAIT", "SCAN_GATEWAY_POLL_INTERVAL", "SCAN_GATEWAY_UPSTREAM_TIMEOUT",
    "SCAN_GATEWAY_SHUTDOWN_GRACE", "SCAN_GATEWAY_REDIS_URL", "SCAN_GATEWAY_REPLICAS",
    "SCAN_GATEWAY_REDIS_TIMEOUT", "SCAN_GATEWAY_REDIS_PREFIX", "SCAN_GATEWAY_QUOTA_TOTAL", "SCAN_GATEWAY_MAX_QUEUE",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "SCAN_GATEWAY_MAX_MESSAGE_BYTES", "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION",
    "SCAN_GATEWAY_MAX_STREAMS_PER_CALLER", "SCAN_GATEWAY_CALLER_RATE", "SCAN_GATEWAY_CALLER_BURST",
    "SCAN_GATEWAY_TLS_CERT", "SCAN_GATEWAY_TLS_KEY", "SCAN_GATEWAY_TLS_CLIENT_CA",
    "SCAN_GATEWAY_ALLOW_UNAUTHENTICATED",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES", "RUST_LOG", "SCAN_GATEWAY_LOG_FORMAT",
    "SCAN_GATEWAY_LOG_SPANS",
    # downward API helpers referenced by OTEL_RESOURCE_ATTRIBUTES
    "K8S_POD_NAME", "K8S_NAMESPACE_NAME", "K8S_NODE_NAME",
}
# Keys the gateway's config file accepts (it refuses unknown ones: deny_unknown_fields).
CONFIG_KEYS = {
    "tenant_id", "client_id", "client_secret", "authority_host", "api_base_url", "token_scope",
    "listen", "admin_listen", "quota", "max_quota_wait", "poll_interval", "upstream_timeout",
    "shutdown_grace",
}
# Objects whose keys are free by nature (documented in the schema's description).
FREE_FORM = {"/properties/global"}


def fail(errors: list[str]) -> int:
    for error in errors:
        print(f"  {error}")
    return 1 if errors else 0


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


# --- values-doc ------------------------------------------------------------------------------

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


# --- split -----------------------------------------------------------------------------------

def load_docs(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


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


# --- rendered --------------------------------------------------------------------------------

def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"([0-9]+) ?(ms|s|m|h|d)", text):
        total += int(number) * units[unit]
    return total


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def selects(selector: dict, labels: dict) -> bool:
    """A full label selector: matchLabels and matchExpressions."""
    if not matches(selector.get("matchLabels", {}), labels):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def rendered(path: str) -> int:
    docs = load_docs(path)
    errors: list[str] = []
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    if len(names) != len(set(names)):
        errors.append(f"duplicate resources: {names}")
    for doc in docs:
        name = doc["metadata"]["name"]
        if len(name) > 63:
            errors.append(f"{doc['kind']} {name}: name longer than 63 characters")
        if "namespace" not in doc["metadata"]:
            errors.append(f"{doc['kind']} {name}: no namespace")

    (deploy,) = by_kind["Deployment"]
    pod = deploy["spec"]["template"]
    spec = pod["spec"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e for e in container.get("env", [])}
    env_names = [e["name"] for e in container.get("env", [])]

    if not matches(deploy["spec"]["selector"]["matchLabels"], pod_labels):
        errors.append("Deployment selector does not match its pod labels")
    if len(env_names) != len(set(env_names)):
        errors.append(f"duplicate environment variables: {env_names}")
    for name in env_names:
        if name not in GATEWAY_ENV:
            errors.append(f"environment variable {name} is not part of the gateway's contract")

    # Security posture (the chart's defaults and every CI value set keep it).
    psc, csc = spec.get("securityContext", {}), container.get("securityContext", {})
    expect = [
        (psc.get("runAsNonRoot") or csc.get("runAsNonRoot"), "runAsNonRoot"),
        (csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem"),
        (csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation: false"),
        ("ALL" in csc.get("capabilities", {}).get("drop", []), "capabilities drop ALL"),
        ((csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault",
         "seccompProfile RuntimeDefault"),
        (spec.get("automountServiceAccountToken") is False, "automountServiceAccountToken: false"),
        (spec.get("enableServiceLinks") is False, "enableServiceLinks: false"),
        (any(m["mountPath"] == "/tmp" for m in container.get("volumeMounts", [])), "/tmp mounted"),
    ]
    errors += [f"pod security: {what} missing" for ok, what in expect if not ok]
    for mount in container.get("volumeMounts", []):
        if mount.get("subPath"):
            errors.append(f"volume mount {mount['name']} uses subPath: Secret updates would not reach it")
        if mount["mountPath"] != "/tmp" and not mount.get("readOnly"):
            errors.append(f"volume mount {mount['name']} is writable")

    # Rollout and shutdown timing.
    strategy = deploy["spec"]["strategy"]
    if strategy["rollingUpdate"]["maxUnavailable"] != 0:
        errors.append("rolling update maxUnavailable is not 0")
    config_maps = {c["metadata"]["name"]: c for c in by_kind.get("ConfigMap", [])}
    config_volume = next(v for v in spec["volumes"] if v["name"] == "config")
    config_text = config_maps[config_volume["configMap"]["name"]]["data"]["config.toml"]
    config = {}
    for line in config_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            config[key.strip()] = json.loads(value.strip())
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        errors.append(f"config.toml keys the gateway refuses: {sorted(unknown)}")
    if "client_secret" in config:
        errors.append("config.toml (a ConfigMap) holds the client secret")
    grace = duration_seconds(config["shutdown_grace"])
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    if spec["terminationGracePeriodSeconds"] < pre_stop + grace + 5:
        errors.append(f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} < "
                      f"preStop {pre_stop} + shutdown_grace {grace} + 5")
    for key, port_name in (("listen", "grpc"), ("admin_listen", "admin")):
        if not config[key].endswith(f":{ports[port_name]}"):
            errors.append(f"config {key} {config[key]} is not on container port {port_name}")
    if env.get("SCAN_GATEWAY_CONFIG", {}).get("value") != "/etc/scan-gateway/config/config.toml":
        errors.append("SCAN_GATEWAY_CONFIG does not point at the mounted config file")

    # Probes: gRPC probes target the gRPC port (plaintext only); HTTP ones the admin port.
    tls = "SCAN_GATEWAY_TLS_CERT" in env
    for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(probe_name)
        if not probe:
            errors.append(f"{probe_name} missing")
            continue
        if "grpc" in probe:
            if tls:
                errors.append(f"{probe_name}: gRPC probe against a TLS port")
            if probe["grpc"]["port"] != ports["grpc"]:
                errors.append(f"{probe_name}: gRPC probe not on the gRPC port")
        elif "httpGet" in probe:
            if probe["httpGet"]["port"] not in ("admin", ports["admin"]):
                errors.append(f"{probe_name}: HTTP probe not on the admin port")
    readiness = container.get("readinessProbe", {})
    if "grpc" in readiness and readiness["grpc"].get("service") != "defender.scan.v1.ScanService":
        errors.append("readiness probe does not ask for defender.scan.v1.ScanService")
    if "httpGet" in readiness and readiness["httpGet"]["path"] != "/readyz":
        errors.append("HTTP readiness probe is not /readyz")

    # Replicas, HPA, quota share. With Redis SCAN_GATEWAY_REPLICAS is the replicas (the HPA's
    # maxReplicas); without Redis one pod keeps the whole quota, or the pods split it
    # (gateway.quotaSharePerPod) counting the rolling update's surge too: old and new pods run
    # together. More than one pod without Redis must split.
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    replicas_env = int(env["SCAN_GATEWAY_REPLICAS"]["value"])
    if hpas:
        (hpa,) = hpas
        if "replicas" in deploy["spec"]:
            errors.append("Deployment sets replicas although an HPA manages them")
        if hpa["spec"]["scaleTargetRef"]["name"] != deploy["metadata"]["name"]:
            errors.append("HPA does not target the Deployment")
        replicas = hpa["spec"]["maxReplicas"]
    else:
        replicas = deploy["spec"].get("replicas")
    max_surge = strategy["rollingUpdate"]["maxSurge"]
    if isinstance(max_surge, str):
        surge = math.ceil(replicas * int(max_surge.rstrip("%")) / 100)
    else:
        surge = int(max_surge)
    surge = min(surge, replicas)
    if "SCAN_GATEWAY_REDIS_URL" in env:
        if replicas_env != replicas:
            errors.append(f"SCAN_GATEWAY_REPLICAS {replicas_env} is not the replicas ({replicas}: "
                          "replicaCount, or the HPA's maxReplicas) although Redis is set")
    elif hpas or replicas > 1:
        if replicas_env != replicas + surge:
            errors.append(f"SCAN_GATEWAY_REPLICAS {replicas_env} without Redis is not replicas + "
                          f"surge ({replicas} + {surge}): pods running together would exceed the quota")
    elif replicas_env not in (1, 1 + surge):
        errors.append(f"SCAN_GATEWAY_REPLICAS {replicas_env} for one pod without Redis is neither 1 "
                      f"nor 1 + surge ({1 + surge})")

    # Services, PDB, NetworkPolicy, ServiceMonitor, Certificate.
    services = by_kind.get("Service", [])
    for service in services:
        if not matches(service["spec"]["selector"], pod_labels):
            errors.append(f"Service {service['metadata']['name']} selects no gateway pod")
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports:
                errors.append(f"Service port {port['name']} targets unknown port {port['targetPort']}")
            if port["name"] == "grpc" and not port.get("appProtocol"):
                errors.append("Service gRPC port without appProtocol")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        if not matches(pdb["spec"]["selector"]["matchLabels"], pod_labels):
            errors.append("PodDisruptionBudget selects no gateway pod")
    for policy in by_kind.get("NetworkPolicy", []):
        if not matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels):
            errors.append("NetworkPolicy selects no gateway pod")
        egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["spec"]["egress"]
                        for p in rule.get("ports", [])}
        for needed in (("UDP", 53), ("TCP", 53), ("TCP", 443)):
            if needed not in egress_ports:
                errors.append(f"NetworkPolicy egress lacks {needed}")
        if any(not rule.get("ports") for rule in policy["spec"]["egress"]):
            errors.append("NetworkPolicy has an egress rule without ports (allows everything)")
        if any(not rule.get("from") for rule in policy["spec"].get("ingress", [])):
            errors.append("NetworkPolicy has an ingress rule without peers (allows everyone)")
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if port["port"] not in ports:
                    errors.append(f"NetworkPolicy ingress port {port['port']} is not a container port")
    for monitor in by_kind.get("ServiceMonitor", []):
        selector = monitor["spec"]["selector"]
        targets = [s for s in services if selects(selector, s["metadata"]["labels"])]
        if not targets:
            errors.append("ServiceMonitor selects no Service")
        for endpoint in monitor["spec"]["endpoints"]:
            if not all(endpoint["port"] in [p["name"] for p in s["spec"]["ports"]] for s in targets):
                errors.append(f"ServiceMonitor port {endpoint['port']} missing on a selected Service")
            if duration_seconds(endpoint["scrapeTimeout"]) > duration_seconds(endpoint["interval"]):
                errors.append("ServiceMonitor scrapeTimeout longer than interval")
    for certificate in by_kind.get("Certificate", []):
        tls_volume = next((v for v in spec["volumes"] if v["name"] == "tls"), None)
        if not tls_volume or tls_volume["secret"]["secretName"] != certificate["spec"]["secretName"]:
            errors.append("Certificate secretName is not the mounted TLS Secret")
    if tls and not any(v["name"] == "tls" for v in spec["volumes"]):
        errors.append("TLS enabled but no tls volume")

    # Chart-managed Secret: referenced keys exist.
    own_secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] in own_secrets and ref["key"] not in own_secrets[ref["name"]]["data"]:
            errors.append(f"{item['name']} refers to missing key {ref['key']}")
    if own_secrets and "checksum/secret" not in pod["metadata"].get("annotations", {}):
        errors.append("pods do not roll when the chart's Secret changes (no checksum/secret)")
    if "checksum/config" not in pod["metadata"].get("annotations", {}):
        errors.append("pods do not roll when the config changes (no checksum/config)")

    if not errors:
        kinds = ", ".join(f"{k} x{len(v)}" if len(v) > 1 else k for k, v in sorted(by_kind.items()))
        print(f"  consistent: {kinds}")
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
        return rendered(args[0])
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
