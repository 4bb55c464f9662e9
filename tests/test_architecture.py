"""The import rules of the layout (docs/architecture.md): every import between the project's modules runs down the
table of layers below, and no module imports itself back through others (no import circle).

The check reads the source with `ast` (no module is imported): every `import` and `from ... import`, also those
inside functions (a lazy import is still a dependency), except under `if TYPE_CHECKING:`. A module belongs to the
layer of the longest prefix in LAYERS that names it. Within a layer any import is allowed (circles are still
found); across layers only downwards. The plug-in registries are the one place that finds modules by name
(`importlib`): the launcher registry loads the launcher modules, and `config.fleet` finds the registry that way,
so the machine models the launchers build on import no launcher.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "db", "trainer", "kernels")

#: low to high: a module may import its own layer and the layers above it in this list, never one below
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("kernels",)),
    ("trainer", ("trainer",)),
    ("database", ("db",)),
    ("records", ("orchestrator", "orchestrator.records", "orchestrator.procs", "orchestrator.gpu",
                 "orchestrator.config", "orchestrator.config.errors", "orchestrator.config.validation",
                 "orchestrator.config.yaml_source", "orchestrator.config.expressions", "orchestrator.config.images")),
    ("log adapters and injectors", ("orchestrator.parsers", "orchestrator.injection")),
    ("config models", ("orchestrator.config.fleet", "orchestrator.config.study")),
    ("launchers and samplers", ("orchestrator.launchers", "orchestrator.samplers", "orchestrator.warm")),
    ("config files", ("orchestrator.config.fleet_file",)),
    ("studies (Optuna) and jobs", ("orchestrator.study", "orchestrator.jobs",
                                   "orchestrator.provenance")),
    ("fleet state and scheduling", ("orchestrator.fleet", "orchestrator.claims", "orchestrator.liveness")),
    ("analysis", ("orchestrator.analysis", "orchestrator.certify")),
    ("study run", ("orchestrator.run", "orchestrator.extra_runs")),
    ("export", ("orchestrator.export", "orchestrator.record")),
    ("command line", ("orchestrator.cli", "orchestrator.scaffold", "orchestrator.__main__")),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports (the deepest module an import names)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _layer(name: str) -> int:
    best, rank = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), index
    assert rank is not None, f"module {name} is in no layer of tests/test_architecture.py: add it to LAYERS"
    return rank


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    assert len(modules) > 100  # the check reads the real tree
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_import_runs_down_the_layers(graph):
    against = [f"{name} ({LAYERS[_layer(name)][0]}) imports {target} ({LAYERS[_layer(target)][0]})"
               for name, targets in sorted(graph.items()) for target in sorted(targets)
               if _layer(target) > _layer(name)]
    assert not against, "imports against the flow:\n" + "\n".join(against)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circles(graph):
    circles = _circles(graph)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_check_finds_a_circle_and_an_import_against_the_flow():
    """The checks themselves can fail: a made-up circle is found, and a made-up upward import is ranked so."""
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("orchestrator.records") < _layer("orchestrator.launchers.local") < _layer("orchestrator.run.controller")
    assert _layer("orchestrator.cli.main") > _layer("orchestrator.export.report") > _layer("orchestrator.analysis.pick")


def test_optuna_internals_stay_in_the_study_package():
    """Optuna's private API (a storage, a study's or a trial's private attributes, private modules) is used only in
    orchestrator/study/ and orchestrator/samplers/: an Optuna upgrade breaks those two packages and nothing else."""
    private = ("._storage", "._study_id", "._trial_id", "optuna.storages._", "optuna._", "optuna.samplers._",
               "optuna.trial._", "optuna.study._", '"fixed_params"')
    found = []
    for name, path in sorted(_modules().items()):
        if name.startswith(("orchestrator.study.", "orchestrator.samplers")) or not name.startswith("orchestrator"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(mark in line for mark in private):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "Optuna internals outside orchestrator/study and orchestrator/samplers:\n" + "\n".join(found)
