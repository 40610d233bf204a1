"""The package layering of docs/architecture.md, checked on every module's imports (read with `ast`).

A package may import only packages below it in LAYERS; `data_prep` sits beside the stack and takes
from jaxlm only DATA_PREP_MAY_IMPORT; jaxlm never imports data_prep; no two files and no two
packages import each other, directly or round a longer circle. Imports inside functions count
(they hide an edge, they do not remove it), and so do relative imports.
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Iterator, NamedTuple, Optional

from tests import helpers

REPO = pathlib.Path(helpers.REPO)

# Lowest first. Each entry is one layer: the jaxlm modules or packages it holds. docs/architecture.md
# draws the same order (checked below).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("config", ("jaxlm.schema", "jaxlm.config", "jaxlm.extras", "jaxlm.storage")),
    ("model", ("jaxlm.model",)),
    ("parallel", ("jaxlm.parallel",)),
    ("data", ("jaxlm.data",)),
    ("train", ("jaxlm.train",)),
    ("interop", ("jaxlm.interop",)),
    ("eval", ("jaxlm.eval",)),
    ("rl", ("jaxlm.rl",)),
    ("plan", ("jaxlm.plan",)),
    ("commands", ("jaxlm.main", "jaxlm.sample", "jaxlm.export", "jaxlm.sweep", "jaxlm.humaneval")),
]
# The only jaxlm modules data_prep may import: the record format and the chat template its
# instruction records are written with, the shared text hashing, the hashed n-gram classifier built
# on it, and the typed-config builder. They import nothing else from jaxlm, so data_prep never pulls in the
# training stack.
DATA_PREP_MAY_IMPORT = ("jaxlm.data.format", "jaxlm.data.chat", "jaxlm.data.texthash", "jaxlm.data.text_classifier",
                        "jaxlm.schema")
ROOTS = ("jaxlm", "data_prep")


class Edge(NamedTuple):
    source: str  # importing module, dotted
    target: str  # imported project module, dotted
    where: str  # path:line of the import statement


def _module_name(path: pathlib.Path, repo: pathlib.Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(repo: pathlib.Path = REPO) -> dict[str, pathlib.Path]:
    return {_module_name(p, repo): p for root in ROOTS for p in sorted((repo / root).rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges(modules: dict[str, pathlib.Path], repo: pathlib.Path = REPO) -> Iterator[Edge]:
    for module, path in modules.items():
        rel = path.relative_to(repo)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                # `from pkg import sub` imports the submodule pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                if target.split(".")[0] in ROOTS:
                    yield Edge(module, target, f"{rel}:{node.lineno}")


def _layer(module: str) -> Optional[int]:
    for rank, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return rank
    return None


def _package(module: str) -> str:
    """The unit the package-level checks use: jaxlm.<first part>, or data_prep."""
    parts = module.split(".")
    return parts[0] if parts[0] == "data_prep" else ".".join(parts[:2])


def _layering_violations(modules: dict[str, pathlib.Path], repo: pathlib.Path = REPO) -> list[str]:
    problems = []
    for module in modules:
        if module.startswith("jaxlm.") and _layer(module) is None:
            problems.append(f"{modules[module].relative_to(repo)}: {module} is in no layer; add its package to "
                            "LAYERS in tests/unit/test_layering.py and to the drawing in docs/architecture.md")
    for e in _edges(modules, repo):
        src_root, dst_root = e.source.split(".")[0], e.target.split(".")[0]
        if src_root == "data_prep":
            if dst_root == "jaxlm" and e.target not in DATA_PREP_MAY_IMPORT:
                problems.append(f"{e.where}: data_prep -> {e.target}: data_prep may import from jaxlm only "
                                f"{', '.join(DATA_PREP_MAY_IMPORT)}")
            continue
        if dst_root == "data_prep":
            problems.append(f"{e.where}: {e.source} -> {e.target}: jaxlm never imports data_prep")
            continue
        if e.source in DATA_PREP_MAY_IMPORT and e.target not in DATA_PREP_MAY_IMPORT + ("jaxlm", "jaxlm.data"):
            problems.append(f"{e.where}: {e.source} -> {e.target}: a module data_prep imports must not "
                            "import the rest of jaxlm")
        src, dst = _layer(e.source), _layer(e.target)
        if src is None or dst is None:  # the bare `jaxlm` package, or a module reported above
            continue
        if dst > src:
            below = ", ".join(name for name, _ in LAYERS[:src]) or "nothing"
            problems.append(f"{e.where}: {LAYERS[src][0]} -> {LAYERS[dst][0]} ({e.source} imports {e.target}); "
                            f"{LAYERS[src][0]} may import only {below}")
    return problems


def _cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _cycle_report(kind: str, graph: dict[str, dict[str, str]]) -> list[str]:
    problems = []
    for component in _cycles(graph):
        members = set(component)
        edges = [f"{a} -> {b} ({where})" for a in component for b, where in sorted(graph[a].items())
                 if b in members]
        problems.append(f"{kind} circle {' / '.join(component)}: " + "; ".join(edges))
    return problems


def _graphs(modules: dict[str, pathlib.Path], repo: pathlib.Path = REPO) -> tuple[dict, dict]:
    files: dict[str, dict[str, str]] = {}
    packages: dict[str, dict[str, str]] = {}
    for e in _edges(modules, repo):
        target = e.target if e.target in modules else None
        if target is None:  # `import jaxlm.x.name` where name is no module: the module that holds it
            target = next((m for m in (e.target.rsplit(".", k)[0] for k in (1, 2)) if m in modules), None)
        if target is None or target == e.source:
            continue
        files.setdefault(e.source, {}).setdefault(target, e.where)
        a, b = _package(e.source), _package(target)
        if a != b and b != "jaxlm":
            packages.setdefault(a, {}).setdefault(b, e.where)
    return files, packages


def test_the_checker_finds_upward_edges_and_circles(tmp_path):
    # A made-up tree with one of each mistake: the checker must name every one, with file:line.
    files = {
        "jaxlm/__init__.py": "",
        "jaxlm/config.py": "",
        "jaxlm/parallel/__init__.py": "",
        "jaxlm/parallel/mesh.py": "from . import pipeline\n",
        "jaxlm/parallel/pipeline.py": "import math\n\ndef f():\n    from ..train import loss\n    from .mesh import x\n",
        "jaxlm/train/__init__.py": "",
        "jaxlm/train/loss.py": "from jaxlm.config import Config\n",
        "jaxlm/eval/__init__.py": "",
        "jaxlm/eval/contamination.py": "from data_prep.stages import minhash\n",
        "jaxlm/newpkg/__init__.py": "",
        "data_prep/__init__.py": "",
        "data_prep/stages/__init__.py": "",
        "data_prep/stages/minhash.py": "from jaxlm.data.texthash import fmix64\nfrom jaxlm.train import loss\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    modules = _modules(tmp_path)
    problems = _layering_violations(modules, tmp_path)
    assert "jaxlm/parallel/pipeline.py:4: parallel -> train (jaxlm.parallel.pipeline imports jaxlm.train.loss); " \
           "parallel may import only config, model" in problems
    assert "jaxlm/eval/contamination.py:1: jaxlm.eval.contamination -> data_prep.stages.minhash: jaxlm never " \
           "imports data_prep" in problems
    assert any(p.startswith("data_prep/stages/minhash.py:2: data_prep -> jaxlm.train.loss") for p in problems)
    assert any(p.startswith("jaxlm/newpkg/__init__.py: jaxlm.newpkg is in no layer") for p in problems)
    assert len(problems) == 4  # texthash is allowed; config is below train
    file_graph, package_graph = _graphs(modules, tmp_path)
    [circle] = _cycle_report("file", file_graph)
    assert circle.startswith("file circle jaxlm.parallel.mesh / jaxlm.parallel.pipeline: ")
    assert "jaxlm.parallel.pipeline -> jaxlm.parallel.mesh (jaxlm/parallel/pipeline.py:5)" in circle
    assert _cycles({"a": {"b": "x:1"}, "b": {"c": "x:2"}, "c": {"a": "x:3"}, "d": {"a": "x:4"}}) == [["a", "b", "c"]]
    assert _layer("jaxlm.parallel.mesh") < _layer("jaxlm.train.loop") < _layer("jaxlm.plan.auto")
    assert _layer("jaxlm.config") == 0 and _layer("jaxlm.sweep.runner") == len(LAYERS) - 1


def test_docs_draw_the_same_order():
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    order = " -> ".join(name for name, _ in LAYERS)
    assert order in text, f"docs/architecture.md should state the layering as `{order}`"
    for _, members in LAYERS:
        for member in members:
            assert re.search(rf"\b{re.escape(member.split('.', 1)[1])}\b", text), member


def test_packages_import_only_layers_below_them_and_nothing_forms_a_circle():
    modules = _modules()
    assert "jaxlm.train.loop" in modules and "data_prep.pipeline" in modules
    files, packages = _graphs(modules)
    problems = (_layering_violations(modules) + _cycle_report("package", packages)
                + _cycle_report("file", files))
    assert not problems, "layering broken (docs/architecture.md):\n  " + "\n  ".join(problems)
