"""The shape of the tree, read with `ast`: one way through it, no cycles, no reaching around.

Each package (room) says in its docstring what it holds and, on a line of its own,
"May import: a, b, c." (or "anything", or "nothing of the box"); this test holds every
module of the room to that line, so the docstring cannot drift from the code. A module
whose own docstring has such a line is held to it instead (the small rooms directly in
aibox/: config, secrets, usage, ...). A room may always import itself and its own
sub-rooms, the standard library and third-party packages.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("aibox", "agents", "connectors", "models")
MAY_IMPORT = re.compile(r"May import: ([^\n]+)")
MODULE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for top in PACKAGES for p in sorted((ROOT / top).rglob("*.py"))}


def imports(name: str) -> Iterator[str]:
    """Every module name an import statement in `name` refers to, TYPE_CHECKING ones included."""
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def box_imports(name: str) -> set[str]:
    """The box's own modules that `name` imports (a name imported from a module counts as the module)."""
    found = set()
    for target in imports(name):
        while target and target not in modules():
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def room_of(name: str) -> str:
    """The nearest package that holds the module (a package is its own room; a folder
    without `__init__.py`, like the migrations, belongs to the package above it)."""
    room = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
    while room not in modules():
        room = room.rpartition(".")[0]
    return room


def rule(name: str) -> re.Match | None:
    doc = ast.get_docstring(ast.parse(modules()[name].read_text(encoding="utf-8"))) or ""
    return MAY_IMPORT.search(doc)


def allowed(room: str) -> list[str] | None:
    """The prefixes the room's (or module's) docstring allows; None for "anything"."""
    match = rule(room)
    assert match, f"{modules()[room].relative_to(ROOT)}: the docstring needs a line 'May import: ...'"
    listed = re.sub(r"\([^)]*\)", "", match.group(1)).strip().rstrip(".").strip()
    if listed == "anything":
        return None
    if listed == "nothing of the box":
        return []
    prefixes = [p.strip() for p in listed.split(",")]
    unreadable = [p for p in prefixes if not MODULE.match(p)]
    assert not unreadable, f"{room}: 'May import:' lists {unreadable}, which are not module names"
    return prefixes


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def test_no_import_cycles() -> None:
    graph = {name: box_imports(name) for name in modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_only_the_cli_imports_the_daemon() -> None:
    offenders = [n for n in modules() if "aibox.daemon" in box_imports(n) and not within(n, "aibox.cli")]
    assert offenders == []


def test_product_code_never_imports_tests() -> None:
    offenders = [n for n in modules() if any(within(t, "tests") for t in imports(n))]
    assert offenders == []


def test_every_room_says_what_it_holds_and_keeps_to_what_it_may_import() -> None:
    rooms = sorted({room_of(n) for n in modules()})
    assert {"aibox", "aibox.api", "aibox.router", "agents", "connectors", "models", "models.speculative"} <= set(rooms)
    broken = []
    for name in modules():
        room = name if rule(name) else room_of(name)
        prefixes = allowed(room)
        if prefixes is None:
            continue
        for target in box_imports(name):
            if not within(target, room) and not any(within(target, p) for p in prefixes):
                broken.append(f"{name} imports {target}, which {room} may not")
    assert broken == []


def test_the_rule_catches_a_room_reaching_up() -> None:
    """The checks above must be able to fail: the connectors room may not import the agents."""
    assert allowed("connectors") is not None
    assert not any(within("agents.runner", p) for p in allowed("connectors") or [])
