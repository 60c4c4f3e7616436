#!/usr/bin/env bash
# Checks the Helm chart (helm/scan-gateway) and the Dockerfile with real tools, offline:
#
#   yamllint          the chart's static YAML, then every rendered manifest
#   chart_checks.py   the schema refuses unknown keys at every level; every value is documented
#                     and the README's values table is current; the values always passed as
#                     environment variables default to the gateway's own defaults (those passed
#                     only when set, to empty: the gateway's default applies); cross-resource
#                     consistency of each render (selectors, ports, probes, grace periods, env
#                     contract, ...) and the values given reaching the environment unchanged
#   helm lint         --strict, with the defaults and with each CI value set (ci/*-values.yaml)
#   helm template     each CI value set, for the oldest supported, a middle and the newest
#                     Kubernetes version, each output through kubernetes-validate --strict
#                     (CRD kinds are set apart with the reason printed: it has no schema for them)
#   helm 3            helm 3.17 lints each value set too and renders it as helm 4 does
#   preStop           below Kubernetes 1.30 an exec of the Dockerfile's ENTRYPOINT `wait Ns` (the
#                     image has no shell), from 1.30 the sleep action
#   README examples   each `helm install` of the chart README runs as pasted (helm template, with
#                     the README's variables and YAML files) and renders consistently, with
#                     --create-namespace, the pushed image and, for workload identity, a federated
#                     credential matching the ServiceAccount, for several release names
#   negative tests    every ci-invalid/*.yaml must be refused, by the schema (helm lint --strict
#                     and helm template) or by the chart's cross-value rules (helm template and
#                     install; helm lint, 3 and 4, only logs fail()), with the message its
#                     "# expect:" line names
#   alerts            promtool check/test rules on the PrometheusRule rendered from
#                     ci/monitoring-values.yaml (tests: helm/tests/alerts.test.yaml); every alert
#                     fired by a case and with a runbook in the README; every PromQL query of the
#                     alerts and the dashboard parses and names only metrics registered in src/
#   checkov           helm framework on the chart, kubernetes on every render, dockerfile on the
#                     Dockerfile; skipped checks are in helm/scan-gateway/.checkov.yaml, justified,
#                     and a second run without them proves each skip is still needed
#   hadolint          the Dockerfile
#
# Installs its tools through scripts/install-chart-tools.sh. Prints "N passed, M failed" last and
# exits non-zero on any failure. Usage: scripts/check-chart.sh [-v]   (-v: show passing output)
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 1
verbose=false
[ "${1:-}" = "-v" ] && verbose=true

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

t0=$(now)
echo "== install chart tools"
if ! bash scripts/install-chart-tools.sh; then
  echo "installing the chart tools failed"
  echo "0 passed, 1 failed"
  exit 1
fi
install_s=$(elapsed "$t0")
echo "   (tools ready in ${install_s}s)"

tools="$root/.tools"
export PATH="$tools/bin:$PATH"
export HELM_CACHE_HOME="$tools/helm/cache" HELM_CONFIG_HOME="$tools/helm/config" \
  HELM_DATA_HOME="$tools/helm/data"
python="$tools/chart-venv/bin/python"
chart=helm/scan-gateway
yamllint_config=helm/.yamllint
checks="helm/tools/chart_checks.py"
release=sg
namespace=scan-gateway
# Oldest supported (Chart.yaml kubeVersion), the version CI pins, the newest kubernetes-validate knows.
kube_versions=(1.25.0 1.32.0 1.37.0)

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
failures=()

# check NAME COMMAND...: runs COMMAND, counts it, shows its output on failure (always with -v).
check() {
  local name="$1"
  shift
  local output
  if output="$("$@" 2>&1)"; then
    passed=$((passed + 1))
    printf 'ok    %s\n' "$name"
    if $verbose && [ -n "$output" ]; then printf '%s\n' "$output" | sed 's/^/      /'; fi
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %s\n' "$name"
    [ -n "$output" ] && printf '%s\n' "$output" | sed 's/^/      /'
  fi
  return 0
}

# note NAME COMMAND...: like check, but always prints the command's output (skip reasons).
note() {
  local name="$1"
  shift
  local output status
  output="$("$@" 2>&1)"
  status=$?
  if [ "$status" -eq 0 ]; then
    passed=$((passed + 1))
    printf 'ok    %s\n' "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL  %s\n' "$name"
  fi
  [ -n "$output" ] && printf '%s\n' "$output" | sed 's/^/      /'
  return 0
}

t1=$(now)

echo "== static files"
check "yamllint: Chart.yaml, values.yaml, ci/, ci-invalid/, .checkov.yaml, helm/tests/" \
  yamllint --strict -c "$yamllint_config" "$chart/Chart.yaml" "$chart/values.yaml" "$chart/ci" \
  "$chart/ci-invalid" "$chart/.checkov.yaml" "$yamllint_config" helm/tests
check "values.schema.json refuses unknown keys at every level" \
  "$python" "$checks" schema-strict "$chart/values.schema.json"
check "every value documented, README values table current" \
  "$python" "$checks" values-doc "$chart"
check "values passed to the gateway default to its own defaults (src/config/args.rs)" \
  "$python" "$checks" gateway-defaults "$chart" src/config/args.rs
check "hadolint Dockerfile" hadolint Dockerfile

echo "== helm lint --strict"
check "helm lint --strict (chart defaults)" helm lint --strict --quiet "$chart"
value_sets=("$chart"/ci/*-values.yaml)
for values in "${value_sets[@]}"; do
  check "helm lint --strict -f ci/$(basename "$values")" helm lint --strict --quiet "$chart" -f "$values"
done

# helm3_same SET VALUES: helm 3 lints the set and renders what helm 4 renders (blank lines aside).
helm3_same() {
  local values="$1" out="$work/helm3"
  helm3 lint --strict --quiet "$chart" -f "$values" || return 1
  helm3 template "$release" "$chart" --namespace "$namespace" --kube-version 1.32.0 \
    -f "$values" | grep -v '^$' >"$out-3.yaml" || return 1
  helm template "$release" "$chart" --namespace "$namespace" --kube-version 1.32.0 \
    -f "$values" | grep -v '^$' >"$out-4.yaml" || return 1
  diff -u "$out-4.yaml" "$out-3.yaml"
}
for values in "${value_sets[@]}"; do
  check "helm 3.17 lint --strict + same render: ci/$(basename "$values")" helm3_same "$values"
done

echo "== helm template | kubernetes-validate --strict | yamllint | consistency"
mkdir -p "$work/checkov"
# render_and_validate SET VALUES KUBE: helm template, set CRD kinds apart (printing why),
# kubernetes-validate the rest; fails on any error or on a kind it has no schema for.
render_and_validate() {
  local set="$1" values="$2" kube="$3"
  local out="$work/$set-$kube"
  helm template "$release" "$chart" --namespace "$namespace" --kube-version "$kube" \
    -f "$values" >"$out.yaml" || return 1
  "$python" "$checks" split "$out.yaml" "$out.core.yaml" "$out.crd.yaml" || return 1
  local report
  report="$(kubernetes-validate --strict --kubernetes-version "$kube" --quiet "$out.core.yaml" 2>&1)"
  local status=$?
  [ -n "$report" ] && printf '%s\n' "$report"
  # A WARN means a kind without a schema: it was not validated, so it must not pass silently.
  if [ "$status" -ne 0 ] || grep -q '^WARN' <<<"$report"; then return 1; fi
}
for values in "${value_sets[@]}"; do
  set_name="$(basename "$values" -values.yaml)"
  for kube in "${kube_versions[@]}"; do
    if [ "$kube" = 1.32.0 ]; then
      note "template + kubernetes-validate --strict -k $kube: $set_name" \
        render_and_validate "$set_name" "$values" "$kube"
    else
      check "template + kubernetes-validate --strict -k $kube: $set_name" \
        render_and_validate "$set_name" "$values" "$kube"
    fi
  done
  rendered="$work/$set_name-1.32.0.yaml"
  if [ -s "$rendered" ]; then
    check "yamllint rendered: $set_name" yamllint --strict -c "$yamllint_config" "$rendered"
    check "consistency: $set_name" "$python" "$checks" rendered "$rendered" "$chart" "$values"
    cp "$rendered" "$work/checkov/$set_name.yaml"
  fi
done

echo "== preStop below and from Kubernetes 1.30"
# prestop SECONDS: render for 1.29 and 1.30 with preStopSleepSeconds SECONDS, check the hooks.
prestop() {
  local kube
  for kube in 1.29.0 1.30.0; do
    helm template "$release" "$chart" --namespace "$namespace" --kube-version "$kube" \
      -f "$chart/ci/minimal-values.yaml" --set preStopSleepSeconds="$1" >"$work/prestop-$kube.yaml" || return 1
    "$python" "$checks" rendered "$work/prestop-$kube.yaml" "$chart" "$chart/ci/minimal-values.yaml" || return 1
  done
  "$python" "$checks" prestop "$work/prestop-1.29.0.yaml" "$work/prestop-1.30.0.yaml" Dockerfile "$1"
}
check "preStop: exec 'scan-gateway wait 3s' on 1.29, sleep action on 1.30" prestop 3
check "preStop: none with preStopSleepSeconds 0, on 1.29 and 1.30" prestop 0

echo "== README install examples"
check "every install example of the chart README renders as pasted" \
  "$python" "$checks" readme-examples "$chart" helm 1.32.0

echo "== alerts and dashboard (ci/monitoring-values.yaml)"
# The rules as the chart renders them (the ci loop above, release sg in scan-gateway), so the
# tests cover the template: its selector, labels and annotations.
monitoring_render="$work/monitoring-1.32.0.yaml"
alert_tests=helm/tests/alerts.test.yaml
promtool_rules() {
  mkdir -p "$work/alerts" && cp "$alert_tests" "$work/alerts/" || return 1
  "$python" "$checks" rules-file "$monitoring_render" "$work/alerts/rules.yaml" || return 1
  promtool check rules "$work/alerts/rules.yaml" || return 1
  (cd "$work/alerts" && promtool test rules "$(basename "$alert_tests")")
}
check "promtool check + test rules: the rendered alerts ($alert_tests)" promtool_rules
check "every alert fired by a test case and with a runbook in the README" \
  "$python" "$checks" alerts-covered "$monitoring_render" "$alert_tests" "$chart/README.md"
check "alerts and dashboard: PromQL parses, names only metrics registered in src/" \
  "$python" "$checks" metrics src "$chart" "$monitoring_render" promtool

echo "== bad values are refused"
# refused FILE: the file must fail helm template (schema or cross-value rule) with the message of
# its "# expect:" line; a schema error ("refused-by: schema") must fail helm lint --strict too.
refused() {
  local file="$1" expect layer output
  expect="$(sed -n 's/^# expect: //p' "$file")"
  layer="$(sed -n 's/^# refused-by: \([a-z]*\).*/\1/p' "$file")"
  if [ -z "$expect" ] || [ -z "$layer" ]; then
    echo "$file needs '# expect: REGEX' and '# refused-by: schema|template' lines"
    return 1
  fi
  if output="$(helm template "$release" "$chart" -f "$file" 2>&1)"; then
    echo "helm template accepted it"
    return 1
  fi
  if ! grep -Eq -- "$expect" <<<"$output"; then
    printf 'helm template refused it, but not with /%s/:\n%s\n' "$expect" "$output"
    return 1
  fi
  if [ "$layer" = schema ]; then
    if output="$(helm lint --strict "$chart" -f "$file" 2>&1)"; then
      echo "helm lint --strict accepted it"
      return 1
    fi
    if ! grep -Eq -- "$expect" <<<"$output"; then
      printf 'helm lint refused it, but not with /%s/:\n%s\n' "$expect" "$output"
      return 1
    fi
  fi
  printf '%s\n' "$(grep -E -m1 -o -- "$expect.*" <<<"$output" | cut -c1-150)"
}
for file in "$chart"/ci-invalid/*.yaml; do
  layer="$(sed -n 's/^# refused-by: \([a-z]*\).*/\1/p' "$file")"
  check "refused by the ${layer:-?}: ci-invalid/$(basename "$file")" refused "$file"
done

echo "== checkov (helm, kubernetes, dockerfile)"
# The helm framework renders the chart with ci/minimal-values.yaml (the defaults plus the values
# the chart requires: it refuses to render without them); the kubernetes framework reads every
# render above; the dockerfile framework reads a copy of the Dockerfile placed beside them.
cp Dockerfile "$work/checkov/Dockerfile"
checkov_values="$chart/ci/minimal-values.yaml"
run_checkov() {
  checkov --config-file "$chart/.checkov.yaml" --skip-download --framework helm kubernetes dockerfile \
    -d "$chart" -d "$work/checkov" --var-file "$checkov_values" --compact --quiet \
    -o cli -o json --output-file-path "console,$work/checkov-report.json" >"$work/checkov.log" 2>&1
  local status=$?
  sed -n '/scan results:/,$p' "$work/checkov.log" | grep -v '^$'
  # checkov's helm framework silently scans nothing when `helm template` writes to stderr:
  # require every framework to have seen resources and failed none.
  "$python" - "$work/checkov-report.json" <<'EOF' || return 1
import json, sys
reports = json.load(open(sys.argv[1]))
reports = reports if isinstance(reports, list) else [reports]
summary = {r["check_type"]: r["summary"] for r in reports}
problems = []
for framework, least in (("helm", 5), ("kubernetes", 30), ("dockerfile", 1)):
    s = summary.get(framework)
    if s is None:
        problems.append(f"{framework}: no results (nothing scanned)")
    elif s["resource_count"] < least or s["failed"] or s["parsing_errors"]:
        problems.append(f"{framework}: {s}")
    else:
        print(f"{framework}: {s['resource_count']} resources, {s['passed']} checks passed")
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
EOF
  return "$status"
}
check "checkov (skips justified in .checkov.yaml)" run_checkov

# stale_skips: checkov without the skip list must fail exactly on skipped checks, each at least once.
# (checkov reads .checkov.yaml from a scanned directory by itself: scan a copy of the chart without it.)
stale_skips() {
  rm -rf "$work/noskip" && mkdir -p "$work/noskip" && cp -r "$chart" "$work/noskip/" &&
    rm "$work/noskip/$(basename "$chart")/.checkov.yaml" || return 1
  checkov --skip-download --framework helm kubernetes dockerfile \
    -d "$work/noskip/$(basename "$chart")" -d "$work/checkov" --var-file "$checkov_values" \
    --quiet -o json >"$work/checkov-noskip.json" 2>"$work/checkov-noskip.log"
  "$python" - "$chart/.checkov.yaml" "$work/checkov-noskip.json" <<'EOF'
import json, sys, yaml
skips = set(yaml.safe_load(open(sys.argv[1]))["skip-check"])
text, reports, decoder, at = open(sys.argv[2]).read(), [], json.JSONDecoder(), 0
while text[at:].strip():  # checkov may print several JSON documents
    at += len(text[at:]) - len(text[at:].lstrip())
    value, length = decoder.raw_decode(text[at:])
    reports += value if isinstance(value, list) else [value]
    at += length
failing = {c["check_id"] for r in reports for c in r["results"]["failed_checks"]}
stale, unlisted = sorted(skips - failing), sorted(failing - skips)
for check in stale:
    print(f"{check} is skipped but passes: remove it from .checkov.yaml")
for check in unlisted:
    print(f"{check} fails")
if not stale and not unlisted:
    print(f"each of the {len(skips)} skipped checks still fails without its skip: {', '.join(sorted(skips))}")
sys.exit(1 if stale or unlisted else 0)
EOF
}
check "checkov: every skip still needed" stale_skips

checks_s=$(elapsed "$t1")
echo
echo "tools ${install_s}s, checks ${checks_s}s, total $(elapsed "$t0")s"
if [ "$failed" -gt 0 ]; then
  printf 'failed: %s\n' "${failures[@]}"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
