"""The package's shape: layers that import downward only, no import cycle, no private cross-module import.

Read from the source (ast), every import counts, including those inside functions: a deferred
import of a heavy library is fine, but it cannot hide a cycle or an upward import here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rethink_dist"

# Bottom to top; a module may import its own layer and the layers below it. (docs/layout.md draws it.)
LAYERS = [
    ("facts", ("__init__", "errors", "architectures", "protocol", "external", "defaults", "config", "records", "corruption", "files",
               "stopping")),
    ("data and models", ("data", "models", "theory")),
    ("the trial loop", ("train", "metrics")),
    ("results", ("tracking", "parquet", "memorization", "report")),
    ("where trials run", ("sweep",)),
    ("commands", ("commands", "cli")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, (_, names) in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"module {module} is in no layer: add it to LAYERS (and docs/layout.md)")


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or '', line) for every project import in ``module``."""
    path = MODULES[module]
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "rethink_dist"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "rethink_dist":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, "", node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for m in MODULES:
        targets = set()
        for target, _, _ in _imports(m):
            while target not in MODULES and "." in target:  # an attribute path: its module
                target = target.rsplit(".", 1)[0]
            if target != m:
                targets.add(target)
        graph[m] = targets
    return graph


def test_every_module_has_a_layer():
    for m in MODULES:
        _layer(m)


def test_imports_go_down_the_layers_only():
    upward = []
    for m in MODULES:
        for target, _, line in _imports(m):
            if target in MODULES and _layer(target) > _layer(m):
                upward.append(f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} ({LAYERS[_layer(m)][0]}) imports "
                              f"{target} ({LAYERS[_layer(target)][0]})")
    assert not upward, "imports up the layers:\n" + "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_private_name_imported_from_another_module():
    private = [f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name} from {target}"
               for m in MODULES for target, name, line in _imports(m)
               if name.startswith("_") and target != m]
    assert not private, "\n".join(private)


@pytest.mark.parametrize("source, expected", [
    ("from rethink_dist.sweep.plan import load_sweep\n", "upward"),
    ("from rethink_dist.train import _derive_seed\n", "private"),
])
def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch, source, expected):
    """A module of the facts layer that imports upward, or a private name, is reported."""
    bad = PACKAGE / "_layers_probe.py"
    monkeypatch.setitem(MODULES, "rethink_dist._layers_probe", bad)
    monkeypatch.setattr(Path, "read_text", _reader(bad, source))
    LAYERS[0] = (LAYERS[0][0], LAYERS[0][1] + ("_layers_probe",))
    try:
        check = test_imports_go_down_the_layers_only if expected == "upward" else \
            test_no_private_name_imported_from_another_module
        with pytest.raises(AssertionError, match="_layers_probe"):
            check()
    finally:
        LAYERS[0] = (LAYERS[0][0], LAYERS[0][1][:-1])


def _reader(bad: Path, source: str):
    real = Path.read_text

    def read_text(self, *a, **k):
        return source if self == bad else real(self, *a, **k)

    return read_text
