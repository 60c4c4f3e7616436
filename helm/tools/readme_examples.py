"""The chart README's install examples, run as a reader would paste them (chart_checks.py
readme-examples).

The README holds one sh block made only of variable assignments (REGISTRY=..., the reader's
values). Each sh block with a `helm install` runs in bash after that block, in a directory
holding the README's named YAML files (blocks whose first line is `# name.yaml`), with `helm`
turned into `helm template` and `kubectl`, `az` and `docker` recorded instead of run. Every
`helm install` must render, and its render must pass the consistency checks, use
`--create-namespace` and the image the README's `docker push` pushed; where workload identity
is on, the block must create a federated credential whose subject is the rendered
ServiceAccount and whose audience is api://AzureADTokenExchange. Each block runs again with
other release names and namespaces, so an example that only holds for the default names fails.
Every other YAML block (a fragment) is rendered on top of the first example.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from consistency import load_docs, rendered

BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*(\s+#.*)?$")
NAMED_FILE = re.compile(r"^# ([\w.-]+\.ya?ml)$")
AUDIENCE = "api://AzureADTokenExchange"
# The README's own names first, then names an example must not depend on (one contains the
# chart name: the full name is then the release name alone).
NAME_VARIANTS = [{}, {"RELEASE": "prod"}, {"RELEASE": "team-scan-gateway", "NAMESPACE": "security"}]

# helm becomes helm template (recording its arguments and output); the commands that would
# reach a cluster, Azure or a registry are recorded only.
HARNESS = r"""
set -u
cd "$WORK"
__n=0
helm() {
  if [ "$1" != install ]; then echo "helm $1: only helm install is rendered" >&2; return 1; fi
  shift
  __n=$((__n + 1))
  printf '%s\n' "$@" >"$WORK/.args-$__n"
  if "$HELM_BIN" template "$@" --kube-version "$KUBE" >"$WORK/.render-$__n.yaml" 2>"$WORK/.render-$__n.err"
  then echo ok >>"$WORK/.status"; else echo fail >>"$WORK/.status"; fi
}
kubectl() { printf 'kubectl %s\n' "$*" >>"$WORK/.calls"; }
az() { printf '%s\n' "$@" >"$WORK/.az-$((__n + 1))"; }
docker() { if [ "$1" = push ]; then printf '%s\n' "$2" >>"$WORK/.pushed"; fi; }
"""


def blocks(readme: str) -> list[tuple[str, str, str]]:
    """(language, text, heading) of every fenced block."""
    found = []
    for match in BLOCK.finditer(readme):
        # Headings outside the fenced blocks (a YAML comment is no heading).
        headings = re.findall(r"^#+ (.+)$", BLOCK.sub("", readme[: match.start()]), re.M)
        found.append((match.group(1), match.group(2), headings[-1] if headings else ""))
    return found


def run_block(work: Path, script: str, helm_bin: str, kube: str) -> subprocess.CompletedProcess:
    for leftover in work.glob(".*"):
        if leftover.is_file():
            leftover.unlink()
    (work / ".status").touch()
    env = dict(os.environ, WORK=str(work), HELM_BIN=helm_bin, KUBE=kube)
    return subprocess.run(["bash", "-c", HARNESS + script], env=env, text=True,
                          capture_output=True, timeout=120)


def consistency(path: Path) -> str | None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = rendered(str(path))
    return out.getvalue() if status else None


def federated_subjects(work: Path, n: int) -> list[dict]:
    """The federated credentials `az ... federated-credential create` got before install n."""
    credentials = []
    for index in range(1, n + 1):
        path = work / f".az-{index}"
        if not path.exists():
            continue
        args = path.read_text().splitlines()
        if "federated-credential" not in args or "create" not in args:
            continue
        parameters = args[args.index("--parameters") + 1] if "--parameters" in args else ""
        if parameters.startswith("@"):
            parameters = (work / parameters[1:]).read_text()
        credentials.append(json.loads(parameters))
    return credentials


def check_install(work: Path, n: int, pushed: list[str], where: str) -> list[str]:
    errors = []
    args = (work / f".args-{n}").read_text().splitlines()
    render = work / f".render-{n}.yaml"
    if (work / ".status").read_text().splitlines()[n - 1] != "ok":
        return [f"{where}: helm install does not render:\n{(work / f'.render-{n}.err').read_text()}"]
    if "--create-namespace" not in args:
        errors.append(f"{where}: helm install without --create-namespace")
    problems = consistency(render)
    if problems:
        errors.append(f"{where}: the render is inconsistent:\n{problems}")
    docs = load_docs(str(render))
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    pod = deploy["spec"]["template"]
    image = pod["spec"]["containers"][0]["image"]
    if image not in pushed:
        errors.append(f"{where}: image {image} is not the one the README pushes ({pushed})")
    if pod["metadata"]["labels"].get("azure.workload.identity/use") == "true":
        account = (pod["spec"]["serviceAccountName"], deploy["metadata"]["namespace"])
        subject = f"system:serviceaccount:{account[1]}:{account[0]}"
        credentials = federated_subjects(work, n)
        if not credentials:
            errors.append(f"{where}: workload identity without a federated credential command")
        for credential in credentials:
            if credential.get("subject") != subject:
                errors.append(f"{where}: federated credential subject {credential.get('subject')!r}"
                              f", but the pods run as {subject!r}")
            if credential.get("audiences") != [AUDIENCE]:
                errors.append(f"{where}: federated credential audiences {credential.get('audiences')}"
                              f", not [{AUDIENCE!r}]")
            if not str(credential.get("issuer", "")).startswith("https://"):
                errors.append(f"{where}: federated credential without an https issuer")
    return errors


def readme_examples(chart: str, helm_bin: str, kube: str) -> int:
    chart_dir = Path(chart).resolve()
    helm_bin = shutil.which(helm_bin) or helm_bin
    helm_bin = str(Path(helm_bin).resolve())
    readme = (chart_dir / "README.md").read_text()
    found = blocks(readme)
    errors: list[str] = []
    variables = [text for lang, text, _ in found if lang == "sh" and all(
        ASSIGNMENT.match(line) for line in text.splitlines() if line and not line.startswith("#"))]
    if len(variables) != 1:
        errors.append(f"README: expected one sh block of variable assignments, found {len(variables)}")
        return report(errors)
    installs = [(text, heading) for lang, text, heading in found
                if lang == "sh" and re.search(r"^helm install ", text, re.M)]
    pushes = [text for lang, text, _ in found if lang == "sh" and re.search(r"^docker push ", text, re.M)]
    named = {}
    fragments = []
    for lang, text, heading in found:
        if lang != "yaml":
            continue
        name = NAMED_FILE.match(text.splitlines()[0]) if text else None
        if name:
            named[name.group(1)] = text
        else:
            fragments.append((text, heading))
    if not installs:
        errors.append("README: no helm install example found")
    if not pushes:
        errors.append("README: no docker push of the image found")
    if errors:
        return report(errors)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # The examples name the chart ./helm/scan-gateway, from the repository root.
        (work / "helm").symlink_to(chart_dir.parent)
        for name, text in named.items():
            (work / name).write_text(text + "\n")
        renders = 0
        base_args: list[str] | None = None
        for overrides in NAME_VARIANTS:
            prelude = variables[0] + "\n" + "".join(f"{k}={shlex.quote(v)}\n" for k, v in overrides.items())
            run_block(work, prelude + "\n".join(pushes), helm_bin, kube)
            pushed = (work / ".pushed").read_text().split() if (work / ".pushed").exists() else []
            label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "the README's names"
            for text, heading in installs:
                result = run_block(work, prelude + text, helm_bin, kube)
                count = len(re.findall(r"^helm install ", text, re.M))
                ran = len((work / ".status").read_text().splitlines())
                where = f"'{heading}' ({label})"
                if ran != count:
                    errors.append(f"{where}: {count} helm install, {ran} ran:\n{result.stderr}")
                    continue
                for n in range(1, count + 1):
                    errors += check_install(work, n, pushed, where)
                    renders += 1
                    if base_args is None:
                        base_args = (work / f".args-{n}").read_text().splitlines()
        fragment_renders = 0
        for index, (text, heading) in enumerate(fragments):
            path = work / f"fragment-{index}.yaml"
            path.write_text(text + "\n")
            out = work / f"fragment-{index}.render.yaml"
            with out.open("w") as sink:
                result = subprocess.run([helm_bin, "template", *(base_args or []), "-f", path.name,
                                         "--kube-version", kube], cwd=work, stdout=sink,
                                        stderr=subprocess.PIPE, text=True)
            if result.returncode:
                errors.append(f"'{heading}': YAML fragment does not render on top of the first "
                              f"example:\n{result.stderr}")
                continue
            problems = consistency(out)
            if problems:
                errors.append(f"'{heading}': YAML fragment renders inconsistently:\n{problems}")
            fragment_renders += 1
    if not errors:
        print(f"  {len(installs)} install examples rendered {renders} times ({len(NAME_VARIANTS)} "
              f"sets of names), {fragment_renders} YAML fragments on top of the first; files: "
              f"{', '.join(sorted(named))}")
    return report(errors)


def report(errors: list[str]) -> int:
    for error in errors:
        print(f"  {error}")
    return 1 if errors else 0
