"""The package's layers, checked statically: no import circles, nothing imports a higher layer,
no private name crosses a module boundary, and adding a path method takes one registry line.

The layer picture (``docs/architecture.md``): each layer may import only the layers listed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "neuronpath"

# layer -> the layers it may import (besides itself)
ALLOWED = {
    "base": set(),  # errors.py, version.py, draws.py, pathformat.py, options.py
    "engine": {"base"},
    "io": {"base"},
    "models": {"base", "engine", "io"},
    "methods": {"base", "engine"},
    "analysis": {"base"},
    "report": {"base"},
    "experiments": {"base", "engine", "io", "models", "methods", "analysis", "report"},
    "cli": {"base", "engine", "io", "models", "methods", "analysis", "report", "experiments"},
    "api": {"base", "engine", "io", "models", "methods", "analysis", "report", "experiments"},
}
BASE_MODULES = {
    "neuronpath.errors",
    "neuronpath.version",
    "neuronpath.draws",
    "neuronpath.pathformat",
    "neuronpath.options",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module == "neuronpath":
        return "api"
    if module in BASE_MODULES:
        return "base"
    if module == "neuronpath.cli":
        return "cli"
    return module.split(".")[1]


def is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()


def module_exists(module: str) -> bool:
    path = PACKAGE.parent / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[str, list[str]]]:
    """(imported neuronpath module, names taken from it) for every import in the file,
    including imports inside functions; relative imports resolved."""
    module = module_name(path)
    package = module if is_package(module) else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("neuronpath")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("neuronpath"):
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if module_exists(f"{target}.{n}")]
            found += [(f"{target}.{n}", []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                found.append((target, rest))
    return found


def import_graph() -> dict[str, dict[str, list[str]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        edges: dict[str, list[str]] = {}
        for target, names in imports_of(path):
            edges.setdefault(target, []).extend(names)
        graph[module_name(path)] = edges
    return graph


def find_cycle(graph: dict[str, object]) -> list[str] | None:
    """One import circle of ``graph`` (module -> imported modules), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


def test_every_module_belongs_to_a_known_layer():
    unknown = {m for m in import_graph() if layer_of(m) not in ALLOWED}
    assert not unknown, f"modules outside the layer picture: {sorted(unknown)}"


def test_no_import_circles():
    graph = {m: [t for t in edges if t != m] for m, edges in import_graph().items()}
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_no_import_from_a_higher_layer():
    wrong = []
    for module, edges in import_graph().items():
        layer = layer_of(module)
        for target in edges:
            other = layer_of(target)
            if other != layer and other not in ALLOWED[layer]:
                wrong.append(f"{module} ({layer}) imports {target} ({other})")
    assert not wrong, "\n".join(wrong)


def test_no_private_names_cross_modules():
    wrong = [
        f"{module} imports {name} from {target}"
        for module, edges in import_graph().items()
        for target, names in edges.items()
        for name in names
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
    ]
    assert not wrong, "\n".join(wrong)


def test_a_new_path_method_is_one_registry_entry(monkeypatch, vit64, batch64):
    """A method registered by name is accepted by find_paths and listed by the CLI."""
    from neuronpath.methods import find_paths, registry
    from neuronpath.methods.base import MethodOutput, PathMethod
    from neuronpath.models.huggingface import from_hf_model

    last = PathMethod(
        "last-neuron",
        "the last neuron of every layer (a test method)",
        lambda adapter, pixels, clean, config, k, options: MethodOutput(
            torch.full((clean.labels.shape[0], adapter.num_layers, k), clean.acts[0].shape[-1] - 1)
        ),
    )
    monkeypatch.setitem(registry.REGISTRY, last.name, last)
    x, y = batch64
    result = find_paths(from_hf_model(vit64), x, y, methods=["jas", "last-neuron"])
    assert (result.paths["last-neuron"] == 11).all()
    assert result.scores["last-neuron"].shape == (3,)


def test_find_help_lists_every_registered_method():
    from neuronpath.methods import REGISTRY

    text = subprocess.run(
        [sys.executable, "-m", "neuronpath.cli", "find", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    text = "".join(text.split())  # argparse wraps lines at spaces and at hyphens
    for name, method in REGISTRY.items():
        assert f"{name}:{''.join(method.summary.split())}" in text


def _layout_block(path: Path, heading: str) -> list[str]:
    text = path.read_text()
    start = text.index("```", text.index(heading)) + 3
    return text[start : text.index("```", start)].strip("\n").splitlines()


def test_docs_architecture_lists_every_module_of_the_tree():
    listed, folder = set(), ""
    for line in _layout_block(ROOT / "docs" / "architecture.md", "## One line per module")[1:]:
        indent, name = len(line) - len(line.lstrip()), line.split()[0]
        if name.endswith("/"):
            folder = name
        elif name.endswith(".py"):
            listed.add((folder if indent > 2 else "") + name)
    tree = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE
    }
    assert listed == tree
