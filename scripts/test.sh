#!/usr/bin/env bash
# The test command: installs the third-party test tools (grpcurl, grpcio, buf, promtool,
# redis-server, helm, ...) into .tools/ and runs every test, then the Helm chart checks. Works on a fresh clone; needs cargo, python3, npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-tools.sh
cargo test --all-targets "$@"
# The Helm chart: lint, render, schema, security scan (installs its own tools into .tools/).
bash scripts/check-chart.sh
