"""The package layout shows the data path in one direction (docs/architecture.md): checked from the imports."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "rgvlm_ray"
# package -> packages it must never import (lazily or not): data flows data -> labelers -> labeling -> labelstore
# -> iql -> experiments, with label_quality (reports on label sets) beside iql; command handlers sit on top.
# The shared base at the root (config, storage, errors, ray_utils) imports no package.
PACKAGES = ("data", "labelers", "labeling", "labelstore", "iql", "label_quality", "experiments", "commands")
LATER = ("label_quality", "experiments", "commands")  # nothing upstream of these imports them
FORBIDDEN = {
    "data": ("labelers", "labeling", "labelstore", "iql", *LATER),
    "labelers": ("labeling", "labelstore", "iql", *LATER),
    "labeling": ("iql", *LATER),
    "labelstore": ("labeling", "labelers", "iql", *LATER),
    "iql": ("labelers", "labeling", *LATER),
    "label_quality": ("iql", "experiments", "commands"),
    "experiments": ("commands",),
    **{base: PACKAGES for base in ("config", "storage", "errors", "ray_utils")},
}
ROOT_MODULES = (
    6  # __init__, cli, config, errors, storage, ray_utils: the shared base; the rest lives in packages
)
MAX_LINES = 460


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every rgvlm_ray module and the rgvlm_ray modules it imports anywhere (top level or inside functions)."""
    paths = {module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from pkg import mod` imports pkg.mod; `from mod import name` imports mod
                subs = {f"{node.module}.{a.name}" for a in node.names} & paths.keys()
                found.update(subs or {node.module})
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def test_no_domain_module_imports_the_cli():
    for name, deps in imports().items():
        if not name.startswith(("rgvlm_ray.commands", "rgvlm_ray.cli")):
            assert "rgvlm_ray.cli" not in deps, f"{name} imports rgvlm_ray.cli: move its handler to commands/"


def test_packages_import_only_upstream():
    for name, deps in imports().items():
        package = name.split(".")[1] if name.count(".") >= 1 else ""
        for banned in FORBIDDEN.get(package, ()):
            bad = sorted(d for d in deps if d.startswith(f"rgvlm_ray.{banned}"))
            assert not bad, f"{name} imports {bad}: {package} must not depend on {banned}"


def test_relabeling_does_not_import_the_trainer():
    assert not {d for d in imports()["rgvlm_ray.labeling.relabel"] if d.startswith("rgvlm_ray.iql")}


def test_no_import_cycles_between_modules():
    graph = imports()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep.endswith("__init__") or graph.get(dep) is None:
                continue
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_root_holds_only_the_shared_base():
    modules = [p.stem for p in PKG.glob("*.py")]
    modules += [d.name for d in PKG.iterdir() if (d / "__init__.py").is_file() and d.name not in PACKAGES]
    assert len(modules) <= ROOT_MODULES, (
        f"{sorted(modules)} at the package root: move domain modules into a package"
    )


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines, split them by idea: {long}"
