"""The architecture as a test: no import cycle among hotserve's modules, and no import from a
lower layer (repository, runtimes, core, batching, observability) into a higher one
(protocols, server). Imports inside functions and under TYPE_CHECKING count too: a lazy
import is still a dependency."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "hotserve"

# layer -> layers it must never import
FORBIDDEN = {
    "observability": {"core", "repository", "runtimes", "batching", "protocols", "server", "learning", "compress",
                      "cluster"},
    "repository": {"core", "runtimes", "batching", "protocols", "server", "cluster"},
    "runtimes": {"core", "repository", "batching", "protocols", "server", "cluster"},
    "batching": {"core", "protocols", "server", "cluster"},
    "core": {"protocols", "server", "cluster"},
    "protocols": {"server", "cluster"},
    # A fleet uses core's and repository's public interfaces like any user; the server wires it in.
    "cluster": {"server", "protocols", "runtimes", "batching"},
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.endswith("_pb2") or p.endswith("_pb2_grpc") for p in parts):
            continue
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    deps: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            targets = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith(PACKAGE):
                deps.add(t)
    return deps


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_no_import_cycles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's algorithm, iterative enough for this size
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_layers_point_downward():
    problems = []
    for module, deps in _graph().items():
        layer = _layer(module)
        for dep in deps:
            if _layer(dep) in FORBIDDEN.get(layer, set()):
                problems.append(f"{module} imports {dep}")
    assert not problems, "\n".join(sorted(problems))


def test_graph_sees_lazy_imports():
    graph = _graph()
    assert len(graph) > 50
    assert "hotserve.runtimes.tensorflow" in graph["hotserve.runtimes.registry"]  # imported inside a function


def test_the_supervisor_imports_no_serving_stack():
    """The supervisor (and every CLI call) builds the whole command line and the worker pool;
    what it imports stays in its RSS. asyncio, ssl and hashlib came with two constants it
    needed (now in hotserve.envvars), urllib with the admin client (now imported when it
    calls): 27.7 -> 20.8 MiB."""
    probe = ("import sys, hotserve.cli, hotserve.admin_client, hotserve.server.workers, hotserve.core.config, "
             "hotserve.observability.logs, hotserve.batching.parameters, hotserve.server.shape\n"
             "heavy = [m for m in ('asyncio', 'ssl', 'hashlib', 'urllib.request', 'numpy', 'onnxruntime') if m in sys.modules]\n"
             "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"the supervisor's imports pull in {out.stdout.strip()}"
