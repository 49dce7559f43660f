"""The house's shape, checked from the source: imports point one way (root modules, then the stage
packages in the order below), the library never imports Prefect, no module reaches into another's
private names, and no module of vae/ outgrows a screenful of purpose."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vae", "flows")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import statement in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in _imports(path):
            # `from vae.registry import runs` imports the module vae.registry.runs.
            candidates = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules] or [target]
            graph[name].update(c for c in candidates if c in modules and c != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_have_no_circles():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_planted_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_library_never_imports_prefect_or_flows():
    offenders = [
        f"{path.relative_to(ROOT)} imports {target}"
        for path in (ROOT / "vae").rglob("*.py")
        for target, _ in _imports(path)
        if target.split(".")[0] in ("prefect", "flows")
    ]
    # The CLI starts flows; it is the one door from the library's side (see README, Architecture).
    assert [o for o in offenders if not o.startswith("vae/cli")] == []


def test_no_private_names_cross_modules():
    offenders = [
        f"{path.relative_to(ROOT)}: {target}.{name}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for target, names in _imports(path)
        if target.split(".")[0] in PACKAGES
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert offenders == []


# What each of vae's packages may import of vae (besides itself), as each package's docstring says.
# "root" is vae's top-level modules: config, paths, errors, integrity, user_code, cluster.
STAGES = {
    "root": set(),
    "data": {"root"},
    "models": {"root"},
    "train": {"root", "data", "models"},
    "evaluate": {"root", "data", "models"},
    "registry": {"root", "data", "models", "evaluate"},
    "jobs": {"root", "data", "models", "evaluate", "registry"},
    "tune": {"root", "data", "models", "train", "evaluate", "registry"},
}
# Root modules that reach into a stage, each for a torch-free reason: config reads the likelihood
# names from their table and checks source URLs as ingestion will; vae.serving is the name that
# models registered before the sub-packages import; `python -m vae` is the CLI.
ROOT_EXCEPTIONS = {
    ("vae.config", "vae.models.likelihood_kinds"),
    ("vae.config", "vae.data.urls"),
    ("vae.serving", "vae.registry.serving"),
    ("vae.__main__", "vae.cli"),
}
MAX_LINES = 500


ROOT_PACKAGES = {"config"}  # vae.config is one root module split into files


def _stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] not in ROOT_PACKAGES and (ROOT / "vae" / parts[1]).is_dir():
        return parts[1]
    return "root"


def _owner(module: str) -> str:
    """The root module a module belongs to: vae.config.* is vae.config."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1] in ROOT_PACKAGES else module


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        if source.startswith("vae") and _stage(source) != "cli"
        for target in targets
        if target.startswith("vae")
        and _stage(target) != _stage(source)
        and _stage(target) not in STAGES[_stage(source)]
        and (_owner(source), target) not in ROOT_EXCEPTIONS
    )


def test_stage_packages_import_only_the_stages_before_them():
    assert _upward_imports(_graph()) == []


def test_the_stage_rule_finds_a_planted_upward_import():
    planted = {"vae.data.sources": {"vae.registry.runs"}, "vae.registry.runs": {"vae.data.sources"}}
    assert _upward_imports(planted) == ["vae.data.sources -> vae.registry.runs"]


def test_every_stage_package_says_what_it_does_and_may_import():
    for stage in STAGES:
        if stage == "root":
            continue
        doc = ast.get_docstring(ast.parse((ROOT / "vae" / stage / "__init__.py").read_text())) or ""
        assert "May import" in doc, f"vae/{stage}/__init__.py: its docstring must say what it may import"


def test_no_module_of_the_library_is_over_a_screenful_of_purpose():
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "vae").rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_flows_are_thin():
    """A module of flows/ that defines a flow stays a screenful; its Prefect plumbing (results, deployments,
    the local server, artifacts) lives beside it, and the work in vae/."""
    long = {
        str(path.relative_to(ROOT)): lines
        for path in (ROOT / "flows").glob("*.py")
        if "@flow" in (text := path.read_text()) and (lines := len(text.splitlines())) > 60
    }
    assert long == {}
