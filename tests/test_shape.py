"""The package's shape: no import cycle among its modules.

Every import counts, also those under ``if TYPE_CHECKING:`` and inside
functions: a cycle there still means two modules that cannot be read (or
moved) one without the other. Importing ``asgi_redis.a.b`` also runs the
subpackage ``asgi_redis.a``; the root package's ``__init__`` (which only
re-exports the layers) is left out, or every module would depend on it, and
so is the edge from a module to its own packages (they are loaded before it).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asgi_redis"
ROOT = "asgi_redis"


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def _imports(name, path, is_package, modules):
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        for target in targets:
            if target not in modules:
                continue
            found.add(target)
            parent = target.rpartition(".")[0]
            while parent and parent != ROOT:  # importing a.b.c runs a.b's __init__ first
                found.add(parent)
                parent = parent.rpartition(".")[0]
    # a module's own packages are loaded before it runs: no edge back to them
    own = {".".join(name.split(".")[:n]) for n in range(1, name.count(".") + 1)}
    return found - own - {name, ROOT}


def import_graph():
    modules = _modules()
    return {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}


def find_cycle(graph):
    """One import cycle as a list of module names, or None."""
    state = {}
    stack = []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_among_package_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# the documented ``python -m`` commands, kept as few-line shims over asgi_redis.tools
_COMMAND_SHIMS = {f"{ROOT}.__main__", f"{ROOT}.bench", f"{ROOT}.modern.bench", f"{ROOT}.modern.pubsub_bench"}


def test_library_modules_never_import_tooling():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith(f"{ROOT}.tools") or name in _COMMAND_SHIMS:
            continue
        assert not [t for t in targets if t.startswith(f"{ROOT}.tools")], name


def test_the_engine_and_layers_name_no_key_or_script():
    """Keys and scripts are the layout's: the engine, Sentinel and local layers never touch them."""
    engine = [f"receive/{path.name}" for path in (PACKAGE / "receive").glob("*.py")]
    forbidden_texts = ("scripts.SEND", "scripts.POP", "scripts.TAKE_BODY", "scripts.GROUP_",
                       "scripts.CHANNEL_STATS", ":group:", "self.prefix +")
    for relative in ["core.py", "sentinel.py", "local.py", *engine]:
        text = (PACKAGE / relative).read_text()
        for forbidden in forbidden_texts:
            assert forbidden not in text, f"{relative} holds {forbidden!r}"
