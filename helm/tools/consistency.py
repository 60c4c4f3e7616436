"""Cross-resource consistency of one rendered release (chart_checks.py rendered): selectors,
ports, probes, grace periods, the gateway's environment contract, the config file's keys."""

from __future__ import annotations

import base64
import json
import math
import re
import urllib.parse
from pathlib import Path

import yaml

# Every environment variable the chart may set; a name outside this list is a typo (or a
# setting the gateway does not read). The contract is in ../shared/design.md and README.md.
GATEWAY_ENV = {
    "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST", "MDE_API_BASE_URL", "MDE_TOKEN_SCOPE",
    "SCAN_GATEWAY_CONFIG", "SCAN_GATEWAY_LISTEN", "SCAN_GATEWAY_ADMIN_LISTEN", "SCAN_GATEWAY_QUOTA",
    "SCAN_GATEWAY_MAX_QUOTA_WAIT", "SCAN_GATEWAY_POLL_INTERVAL", "SCAN_GATEWAY_UPSTREAM_TIMEOUT",
    "SCAN_GATEWAY_SHUTDOWN_GRACE", "SCAN_GATEWAY_REDIS_URL", "SCAN_GATEWAY_REPLICAS",
    "SCAN_GATEWAY_REDIS_TIMEOUT", "SCAN_GATEWAY_REDIS_PREFIX", "SCAN_GATEWAY_QUOTA_TOTAL", "SCAN_GATEWAY_MAX_QUEUE",
    "SCAN_GATEWAY_BACKGROUND_FLOOR",
    "AZURE_CLIENT_SEND_CERTIFICATE_CHAIN",
    "SCAN_GATEWAY_MAX_MESSAGE_BYTES", "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION",
    "SCAN_GATEWAY_MAX_STREAMS_PER_CALLER", "SCAN_GATEWAY_CALLER_RATE", "SCAN_GATEWAY_CALLER_BURST",
    "SCAN_GATEWAY_TLS_CERT", "SCAN_GATEWAY_TLS_KEY", "SCAN_GATEWAY_TLS_CLIENT_CA",
    "SCAN_GATEWAY_ALLOW_UNAUTHENTICATED",
    "SCAN_GATEWAY_MAX_CONNECTIONS", "SCAN_GATEWAY_MAX_CONNECTIONS_PER_PEER",
    "SCAN_GATEWAY_HANDSHAKE_TIMEOUT", "SCAN_GATEWAY_IDLE_TIMEOUT",
    "SCAN_GATEWAY_KEEPALIVE_INTERVAL", "SCAN_GATEWAY_KEEPALIVE_TIMEOUT",
    "SCAN_GATEWAY_STREAM_RIDE_OUT", "SCAN_GATEWAY_MAX_WATCH", "SCAN_GATEWAY_READ_FRESHNESS",
    "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG", "OTEL_RESOURCE_ATTRIBUTES", "RUST_LOG", "SCAN_GATEWAY_LOG_FORMAT",
    "SCAN_GATEWAY_LOG_SPANS",
    # downward API helpers referenced by OTEL_RESOURCE_ATTRIBUTES
    "K8S_POD_NAME", "K8S_NAMESPACE_NAME", "K8S_NODE_NAME",
}
# Values the chart always passes as an environment variable, each verbatim (integers as
# integers: a float such as 1e+06 is no number the gateway parses; decimals as the same number).
VALUE_ENV = {
    "gateway.backgroundFloor": "SCAN_GATEWAY_BACKGROUND_FLOOR",
    "gateway.callerRate": "SCAN_GATEWAY_CALLER_RATE",
    "gateway.maxMessageBytes": "SCAN_GATEWAY_MAX_MESSAGE_BYTES",
    "gateway.maxStreamsPerConnection": "SCAN_GATEWAY_MAX_STREAMS_PER_CONNECTION",
    "gateway.maxStreamsPerCaller": "SCAN_GATEWAY_MAX_STREAMS_PER_CALLER",
    "gateway.callerBurst": "SCAN_GATEWAY_CALLER_BURST",
    "gateway.connections.max": "SCAN_GATEWAY_MAX_CONNECTIONS",
    "gateway.connections.maxPerPeer": "SCAN_GATEWAY_MAX_CONNECTIONS_PER_PEER",
    "gateway.connections.handshakeTimeout": "SCAN_GATEWAY_HANDSHAKE_TIMEOUT",
    "gateway.connections.idleTimeout": "SCAN_GATEWAY_IDLE_TIMEOUT",
    "gateway.connections.keepaliveInterval": "SCAN_GATEWAY_KEEPALIVE_INTERVAL",
    "gateway.connections.keepaliveTimeout": "SCAN_GATEWAY_KEEPALIVE_TIMEOUT",
    "gateway.streamRideOut": "SCAN_GATEWAY_STREAM_RIDE_OUT",
    "gateway.maxWatch": "SCAN_GATEWAY_MAX_WATCH",
}
# The VALUE_ENV variables the gateway reads as decimals (f64, as src/config/args.rs declares
# them): any spelling of the number parses, so Go's (`1` for 1.0, `1e+06`) is compared as a number.
DECIMAL_ENV = {"SCAN_GATEWAY_BACKGROUND_FLOOR", "SCAN_GATEWAY_CALLER_RATE"}
# Values passed only when set, verbatim, because the gateway's default is no constant the chart
# could repeat (it follows another setting): empty by default, so that default applies.
OPTIONAL_VALUE_ENV = {
    "gateway.readFreshness": "SCAN_GATEWAY_READ_FRESHNESS",
}
# Keys the gateway's config file accepts (it refuses unknown ones: deny_unknown_fields).
CONFIG_KEYS = {
    "tenant_id", "client_id", "client_secret", "authority_host", "api_base_url", "token_scope",
    "listen", "admin_listen", "quota", "max_quota_wait", "poll_interval", "upstream_timeout",
    "shutdown_grace",
}


def fail(errors: list[str]) -> int:
    for error in errors:
        print(f"  {error}")
    return 1 if errors else 0


def load_docs(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total = 0.0
    for number, unit in re.findall(r"([0-9]+) ?(ms|s|m|h|d)", text):
        total += int(number) * units[unit]
    return total


def pre_stop_seconds(container: dict) -> float:
    """What the preStop hook waits: the sleep action (Kubernetes >= 1.30), or the exec of
    `scan-gateway wait DURATION` the chart renders below 1.30."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return hook["sleep"]["seconds"]
    if "exec" in hook:
        command = hook["exec"]["command"]
        if len(command) != 3 or command[1] != "wait":
            raise ValueError(f"preStop exec {command} is not `scan-gateway wait DURATION`")
        return duration_seconds(command[2])
    return 0


def url_port(url: str, defaults: dict[str, int]) -> int:
    parsed = urllib.parse.urlsplit(url)
    return parsed.port or defaults[parsed.scheme]


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


def merged_values(chart: str, values_files: list[str]) -> dict:
    """The values a render saw: the chart's defaults, then each file over them (maps merge key
    by key, anything else replaces; null removes, as helm does)."""
    def merge(base, over):
        if not (isinstance(base, dict) and isinstance(over, dict)):
            return over
        out = dict(base)
        for key, value in over.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(base.get(key), value)
        return out

    values = yaml.safe_load((Path(chart) / "values.yaml").read_text()) or {}
    for path in values_files:
        values = merge(values, yaml.safe_load(Path(path).read_text()) or {})
    return values


def value_at(values: dict, key: str, missing=None):
    """The value at a dotted key; `missing` (when given) for one a values file removed (null)."""
    for part in key.split("."):
        if missing is not None and part not in values:
            return missing
        values = values[part]
    return values


# A decimal as the gateway's f64 parser reads it (Python's float() takes more: `1_0`, `inf`).
DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?")


def same_value(text: str | None, value, decimal: bool) -> bool:
    """Whether a rendered setting is the value: verbatim, or for a decimal setting the same
    number (Go prints 1.0 as `1` and 1000000 as `1e+06`, Python as `1.0` and `1000000`)."""
    if decimal and isinstance(value, (int, float)) and not isinstance(value, bool):
        return text is not None and DECIMAL.fullmatch(text) is not None and float(text) == value
    return text == str(value)


def values_in_env(env: dict, values: dict) -> list[str]:
    """Each VALUE_ENV variable is rendered, with the value given (the values files over the
    chart's defaults), unchanged; each OPTIONAL_VALUE_ENV one likewise when its value is set,
    and not at all when it is empty."""
    errors = []
    for key, name in VALUE_ENV.items():
        value = value_at(values, key)
        got = env.get(name, {}).get("value")
        if not same_value(got, value, name in DECIMAL_ENV):
            errors.append(f"{name} is {got!r}, but {key} is {value!r}")
    for key, name in OPTIONAL_VALUE_ENV.items():
        value = value_at(values, key, missing="")
        got = env.get(name, {}).get("value")
        if value == "" and name in env:
            errors.append(f"{name} is {got!r}, but {key} is empty (the gateway's default)")
        elif value != "" and got != str(value):
            errors.append(f"{name} is {got!r}, but {key} is {value!r}")
    return errors


def gateway_defaults(chart: str, args_rs: str) -> int:
    """The chart always passes the VALUE_ENV values, so its defaults replace the gateway's: they
    must be the same (read from the settings! declarations of src/config/args.rs). The
    OPTIONAL_VALUE_ENV values must be settings the gateway reads, empty by default so the
    gateway's own default applies."""
    declaration = re.compile(r'env = "(?P<env>[A-Z0-9_]+)".*?\n\s*pub \w+: '
                             r'Option<(?P<type>[^\n]*?)>(?: = "(?P<default>[^"]*)")?', re.S)
    text = Path(args_rs).read_text()
    found = [m.group("env", "type", "default") for m in declaration.finditer(text)]
    declared = {env: default for env, _, default in found}
    values = merged_values(chart, [])
    errors = []
    decimals = {env for env, kind, _ in found if kind == "f64"} & set(VALUE_ENV.values())
    if decimals != DECIMAL_ENV:
        errors.append(f"DECIMAL_ENV is {sorted(DECIMAL_ENV)}, but the f64 settings the chart "
                      f"passes are {sorted(decimals)}")
    for key, name in VALUE_ENV.items():
        value = value_at(values, key)
        gateway = declared.get(name)
        if gateway is None:
            errors.append(f"{name} ({key}): no default declared in {args_rs}")
        elif not same_value(gateway, value, name in DECIMAL_ENV) and not (
                isinstance(value, str) and duration_seconds(value) == duration_seconds(gateway)):
            errors.append(f"{key} defaults to {value!r}, the gateway's {name} to {gateway!r}")
    for key, name in OPTIONAL_VALUE_ENV.items():
        value = value_at(values, key)
        if name not in declared:
            errors.append(f"{name} ({key}): not a setting of {args_rs}")
        elif value != "":
            errors.append(f"{key} defaults to {value!r}: it must be empty, so that the gateway's "
                          f"own default for {name} applies")
    if not errors:
        print(f"  {len(VALUE_ENV)} values default to the gateway's own defaults; "
              f"{len(OPTIONAL_VALUE_ENV)} passed only when set, empty by default")
    return fail(errors)


def rendered(path: str, chart: str | None = None, values_files: list[str] = ()) -> int:
    """Consistency of one render; with the chart and the values files it was rendered with,
    also that the gateway receives the values given."""
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
    if chart:
        errors += values_in_env(env, merged_values(chart, values_files))

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
    pre_stop = pre_stop_seconds(container)
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
    # The kubelet's gRPC probes pass the gateway's connection caps, from the node's one address
    # and liveness and readiness at times together: each cap must let two in.
    if any("grpc" in container.get(p, {}) for p in ("startupProbe", "livenessProbe", "readinessProbe")):
        for name in ("SCAN_GATEWAY_MAX_CONNECTIONS", "SCAN_GATEWAY_MAX_CONNECTIONS_PER_PEER"):
            cap = env.get(name, {}).get("value")
            if cap is None or not cap.isdigit() or int(cap) < 2:
                errors.append(f"gRPC probes with {name} {cap}: it must be an integer of at least 2 "
                              "(the kubelet's two probes at once)")
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
        # At the usual pod count (the HPA rests at minReplicas) the budget must let one pod go,
        # or every node drain waits forever. Percentages round up, as the disruption controller.
        usual = hpas[0]["spec"]["minReplicas"] if hpas else replicas
        def scaled(value) -> int:
            if isinstance(value, str) and value.endswith("%"):
                return math.ceil(usual * int(value[:-1]) / 100)
            return int(value)
        if "minAvailable" in pdb["spec"]:
            evictable = usual - scaled(pdb["spec"]["minAvailable"])
        else:
            evictable = scaled(pdb["spec"]["maxUnavailable"])
        if evictable < 1:
            budget = {k: v for k, v in pdb["spec"].items() if k in ("minAvailable", "maxUnavailable")}
            errors.append(f"PodDisruptionBudget {budget} lets no pod of {usual} be evicted: "
                          "node drains would block")
    for policy in by_kind.get("NetworkPolicy", []):
        if not matches(policy["spec"]["podSelector"]["matchLabels"], pod_labels):
            errors.append("NetworkPolicy selects no gateway pod")
        egress_ports = {(p.get("protocol", "TCP"), p["port"]) for rule in policy["spec"]["egress"]
                        for p in rule.get("ports", [])}
        needs = [("UDP", 53), ("TCP", 53), ("TCP", 443)]
        # Redis and OTLP: the ports their URLs name (the scheme's default when none), wherever
        # the chart can read the URL (not from an existing Secret).
        redis_ref = env.get("SCAN_GATEWAY_REDIS_URL", {}).get("valueFrom", {}).get("secretKeyRef")
        own = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
        if redis_ref and redis_ref["name"] in own:
            url = base64.b64decode(own[redis_ref["name"]]["data"][redis_ref["key"]]).decode()
            needs.append(("TCP", url_port(url, {"redis": 6379, "rediss": 6379})))
        if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
            needs.append(("TCP", url_port(env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"],
                                          {"http": 80, "https": 443})))
        for needed in needs:
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
