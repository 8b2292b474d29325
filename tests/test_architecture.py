"""The house's shape: no product module is part of an import cycle, counting the imports
inside functions too (the ones ``lint-imports`` and a plain import never notice, and
the usual way to hide a circle); the upstream contract in ``.importlinter`` names every
first-party module it does not allow; and ``docs/architecture.md``'s package picture is
the one ``docs/packages.py`` draws from the code today.
"""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recorder", "hw", "sync", "provisioning")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def product_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the product packages, by dotted name."""
    out = {}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            out[module_name(p, root)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from . import x`` inside a package)."""
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, list[int]]]:
    """``{importer: {imported module: [line numbers]}}`` over ``modules``, from every
    ``import`` and ``from ... import`` statement anywhere in each file (module level,
    functions, methods, ``if`` blocks). An import of a name from a package that is a
    submodule (``from recorder.evidence import keys``) is an edge to the submodule."""
    graph: dict[str, dict[str, list[int]]] = {}
    for mod, path in modules.items():
        edges: dict[str, list[int]] = {}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in modules else base)
            for t in targets:
                # the deepest product module the name falls in (import a.b.c -> a.b.c)
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != mod and node.lineno not in edges.get(t, []):
                    edges.setdefault(t, []).append(node.lineno)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's
    algorithm, iterative so a deep graph cannot hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in graph:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def describe(comp: list[str], graph, modules) -> str:
    """One cycle's imports as ``file:line importer -> imported`` lines."""
    members = set(comp)
    lines = []
    for a in comp:
        for b, at in sorted(graph[a].items()):
            if b in members:
                rel = modules[a].relative_to(ROOT)
                lines.append(f"  {rel}:{','.join(map(str, at))}  {a} -> {b}")
    return "\n".join(lines)


# -- the finder on small trees of its own (so it can fail) ----------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return {module_name(p, tmp_path): p for p in sorted(tmp_path.rglob("*.py"))}


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    mods = _tree(tmp_path, {
        "recorder/__init__.py": "",
        "recorder/a.py": "from recorder import b\n",
        "recorder/b.py": "def f():\n    from recorder.c import g\n    return g\n",
        "recorder/c.py": "import recorder.a\ndef g():\n    pass\n",
        "recorder/d.py": "from recorder.a import x\n",       # into the circle, not in it
    })
    g = import_graph(mods)
    assert g["recorder.b"] == {"recorder.c": [2]}
    assert cycles(g) == [["recorder.a", "recorder.b", "recorder.c"]]


def test_relative_imports_and_names_from_a_package(tmp_path):
    mods = _tree(tmp_path, {
        "sync/__init__.py": "",
        "sync/up/__init__.py": "from .store import S\nfrom . import ops\n",
        "sync/up/store.py": "from ..proto import P\n",
        "sync/up/ops.py": "from sync.up import store\nfrom sync.up import S\n",
        "sync/proto.py": "P = 1\n",
    })
    g = import_graph(mods)
    assert g["sync.up"] == {"sync.up.store": [1], "sync.up.ops": [2]}
    assert g["sync.up.store"] == {"sync.proto": [1]}
    assert g["sync.up.ops"] == {"sync.up.store": [1], "sync.up": [2]}
    assert cycles(g) == [["sync.up", "sync.up.ops"]]


def test_no_import_cycle_in_the_product():
    modules = product_modules()
    graph = import_graph(modules)
    found = cycles(graph)
    assert not found, "import cycles (function-level imports included):\n" + "\n\n".join(
        describe(c, graph, modules) for c in found)


# -- the upstream's "only" contract covers every module it does not allow -------------------
UPSTREAM_ALLOWED = {
    "recorder", "recorder.evidence", "recorder.errors", "recorder.fsutil",
    "recorder.timebase", "recorder.config", "recorder.privacy", "recorder.logsetup",
    "recorder.sqlfields", "recorder.threads", "recorder.runpaths",
    "sync", "sync.protocol", "sync.signed_commands", "sync.authz", "sync.linkstate",
    "sync.upstream", "hw",
    "hw.errors", "recorder.configtxn", "recorder.maintenance",
}


def _contract(section: str) -> dict[str, list[str]]:
    cp = configparser.ConfigParser()
    cp.read(ROOT / ".importlinter")
    c = cp[f"importlinter:contract:{section}"]
    return {k: c[k].split() for k in c}


def test_the_upstream_contract_names_every_module_it_does_not_allow():
    forbidden = _contract("upstream-only-shared")["forbidden_modules"]
    missing = []
    for mod in product_modules():
        allowed = any(mod == a or mod.startswith(a + ".") for a in UPSTREAM_ALLOWED
                      if a not in ("recorder", "sync", "hw"))
        named = any(mod == f or mod.startswith(f + ".") for f in forbidden)
        if not (allowed or named or mod in ("recorder", "sync", "hw")):
            missing.append(mod)
    assert not missing, ("modules sync.upstream may not import but .importlinter's "
                         f"upstream-only-shared contract does not forbid: {missing}")


def test_every_contract_names_modules_that_exist():
    """A contract naming a module that is gone checks nothing."""
    cp = configparser.ConfigParser()
    cp.read(ROOT / ".importlinter")
    modules = set(product_modules())
    for sec in cp.sections():
        if not sec.startswith("importlinter:contract:"):
            continue
        c = cp[sec]
        names = []
        for key in ("source_modules", "forbidden_modules"):
            names += c.get(key, "").split()
        for line in c.get("layers", "").splitlines():
            names += [n.strip() for n in line.split("|") if n.strip()]
        gone = [n for n in names if n not in modules]
        assert not gone, f"{sec} names modules that do not exist: {gone}"


# -- the package picture in docs/architecture.md is current ---------------------------------
def test_the_package_picture_is_current():
    r = subprocess.run([sys.executable, str(ROOT / "docs" / "packages.py"), "--check"],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


ROOMS = ("recorder.capture", "recorder.calls", "recorder.storage", "recorder.evidence",
         "recorder.runtime", "recorder.cli", "hw", "sync", "sync.upstream", "provisioning")


@pytest.mark.parametrize("pkg", ROOMS)
def test_each_package_says_what_it_answers(pkg):
    """The picture quotes each package's question from its ``__init__`` docstring."""
    init = ROOT / pkg.replace(".", "/") / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "Answers:" in doc, f"{init.relative_to(ROOT)} does not say what it answers"
