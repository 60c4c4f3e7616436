#!/usr/bin/env python3
"""Refuses an import circle between the modules of a crate's src/.

Each file is a module (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`). A file depends on the
modules its paths name: `use crate::..`, `use super::..`, `self::..` and inline `crate::x::y`.
Files of one folder (a `mod.rs`, its siblings) may import each other, where it reads
naturally; so a circle is judged between folders and top-level files, and any fails.

Usage: check-module-graph.py [--print] SRC_DIR [SRC_DIR ...]
"""
import os
import re
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] == "mod" or rel == ["lib"] or rel == ["main"]:
        rel = rel[:-1]
    return tuple(rel)


def node_of(src, path):
    """The unit a circle is judged between: a top-level file, or a folder (its files together)."""
    rel = os.path.relpath(path, src)
    folder = os.path.dirname(rel)
    if not folder:
        return module_of(src, path)
    return tuple(folder.split(os.sep))


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    # String literals can hold `crate::` in messages; drop their contents.
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e]."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [tree]
    prefix, body = tree[:brace], tree[brace + 1 : tree.rfind("}")]
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "{"
        depth -= ch == "}"
        cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        if p.strip():
            out += [prefix + e for e in expand(p)]
    return out


def paths_in(text):
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        for p in expand(m.group(1)):
            yield re.sub(r"\s+", "", p.split(" as ")[0])
    for m in re.finditer(r"(?<![\w:])(\w+(?:::\w+)+)", text):
        yield m.group(1)


def resolve(path, here, modules):
    segs = path.split("::")
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        # Inside `a/b.rs`, `self` is a::b and `super` is a; inside `a/mod.rs`, `super` is the parent of a.
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif here + (segs[0],) in modules:
        base = here  # a child module named relative to this one (`use endpoint::Token`)
    else:
        return None
    target = base
    for s in segs:
        if target + (s,) in modules:
            target = target + (s,)
        else:
            break
    return target


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def check(src, show):
    files = []
    for root, _, names in os.walk(src):
        files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
    modules = {module_of(src, f): f for f in files}
    graph = {}
    for mod, f in modules.items():
        with open(f, encoding="utf-8") as fh:
            text = strip_comments(fh.read())
        deps = set()
        for p in paths_in(text):
            t = resolve(p, mod, modules)
            if t is not None and t != mod and t != ():
                deps.add(t)
        graph[mod] = deps
    if show:
        for mod in sorted(graph):
            print("::".join(mod) or "crate", "->", ", ".join(sorted("::".join(d) for d in graph[mod])))
    nodes = {}
    for mod, deps in graph.items():
        here = node_of(src, modules[mod])
        nodes.setdefault(here, set()).update(
            n for n in (node_of(src, modules[d]) for d in deps) if n != here
        )
    bad = [sorted(c) for c in sccs(nodes) if len(c) > 1]
    for comp in bad:
        names = ", ".join("::".join(n) for n in comp)
        print(f"{src}: import circle between {names}; the imports that close it:", file=sys.stderr)
        for mod in sorted(graph):
            here = node_of(src, modules[mod])
            if here not in comp:
                continue
            for d in sorted(graph[mod]):
                there = node_of(src, modules[d])
                if there != here and there in comp:
                    print(f"  {modules[mod]} -> {'::'.join(d)}", file=sys.stderr)
    return not bad, len(modules)


def main(argv):
    show = "--print" in argv
    dirs = [a for a in argv if a != "--print"] or ["src"]
    ok = True
    for d in dirs:
        good, n = check(d, show)
        ok &= good
        if good:
            print(f"{d}: {n} modules, no import circle")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
