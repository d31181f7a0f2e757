"""The project's shape, checked from the source (docs/architecture.md).

The import graph of ``crypto``, ``policies``, ``service`` and ``bench`` is built with :mod:`ast`
from every import statement, those inside functions and under ``if TYPE_CHECKING:`` included
(an import that only a type checker runs still ties the two modules together for a reader).
The tests fail on:

- any import cycle;
- any import from the core (``crypto``, ``policies``) into the shell (``service``) or ``bench``;
- any module over :data:`MAX_LINES` lines outside ``tests/`` and ``bench/``, unless its docstring
  says it is one cohesive specification (the sentence ``One cohesive specification:``) or it is
  listed in :data:`KNOWN_DEBTS` with the reason it is still long (printed with ``-rA`` / ``-s``).

No module is imported: the tests read files only, so they run in a few hundred milliseconds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crypto", "policies", "service", "bench")
CORE = ("crypto", "policies")
SHELL = ("service", "bench")
MAX_LINES = 500  # lines per module, outside tests/ and bench/
SPECIFICATION_MARK = "One cohesive specification:"

# Modules still over MAX_LINES, each with the reason. Remove an entry when its module is split.
KNOWN_DEBTS: dict[str, str] = {
    "crypto/sealed.py": "the manifest, the envelope and the seal/open recipes in one module "
    "(its file-system work has left for service/files.py); split the manifest from the recipes",
}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield from _resolve(alias.name, known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                yield from _resolve(submodule if submodule in known else module, known)


def _resolve(module: str, known: set[str]) -> Iterator[str]:
    # `import a.b.c` ties to the deepest project module named (outside packages are ignored).
    while module and module not in known:
        module = module.rpartition(".")[0]
    if module:
        yield module


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: {target for target in _imports(name, path, known) if target != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for target in successors:
                if target not in index:
                    index[target] = low[target] = counter
                    counter += 1
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def test_the_graph_is_built_from_every_package() -> None:
    graph = _graph()
    assert {name.split(".")[0] for name in graph} == set(PACKAGES)
    # an import inside a function counts (service.app imports the logging setup lazily)
    assert "service.logs" in graph["service.app"]


def test_the_cycle_finder_finds_a_loop() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]


def test_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, [" <-> ".join(sorted(c)) for c in cycles]


def test_every_arrow_points_from_shell_to_core() -> None:
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in _graph().items()
        if source.split(".")[0] in CORE
        for target in targets
        if target.split(".")[0] in SHELL
    )
    assert not wrong, wrong


def test_api_and_console_are_siblings() -> None:
    """The composition root composes the two HTTP surfaces; neither imports the other, and only
    the root and the CLI (which starts the server) import the root."""
    graph = _graph()
    crossing = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if (source.startswith("service.console") and target.startswith("service.api"))
        or (source.startswith("service.api") and target.startswith("service.console"))
        or (target == "service.app" and not source.startswith(("service.cli", "bench")))
    )
    assert not crossing, crossing


def test_modules_are_small_or_say_why() -> None:
    over: list[str] = []
    debts: list[str] = []
    for path in _modules().values():
        relative = path.relative_to(ROOT).as_posix()
        if relative.startswith(("tests/", "bench/")):
            continue
        lines = len(path.read_text().splitlines())
        if lines <= MAX_LINES or SPECIFICATION_MARK in _docstring(path):
            continue
        if relative in KNOWN_DEBTS:
            debts.append(f"{relative} ({lines} lines): {KNOWN_DEBTS[relative]}")
        else:
            over.append(f"{relative}: {lines} lines")
    for debt in debts:
        print("known debt:", debt)
    assert not over, over


def test_known_debts_are_still_debts() -> None:
    """A module split below the limit must leave the list, so that the list stays true."""
    stale = [
        relative
        for relative in KNOWN_DEBTS
        if not (ROOT / relative).exists()
        or len((ROOT / relative).read_text().splitlines()) <= MAX_LINES
    ]
    assert not stale, stale
