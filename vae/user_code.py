"""Users' code named by import path in pipelines.yaml (`package.module:attr`): found, imported and
shipped with the model. Torch-free, so reading pipelines.yaml (vae.config) can check it.

A module in a file beside pipelines.yaml is found (its folder joins the search path, after sys.path's
own entries). Every way an import path can fail is one ConfigError line naming it. What the model
imports travels with it: to Ray workers (the folders of `code_dirs`, recorded in the checkpoint) and
into the registered MLflow model (`code_paths`), so serving needs only the registered model.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from vae.errors import ConfigError


def add_search_paths(paths: Iterable[str]) -> None:
    """Let this process import users' modules from `paths` (folders that exist), after sys.path's own."""
    for path in paths:
        if path not in sys.path and Path(path).is_dir():
            sys.path.append(path)


def resolve_factory(spec: Any, field: str = "network") -> Callable[..., Any]:
    """The callable `spec.factory` names, imported; one ConfigError line for every way it can fail."""
    module_name, _, attribute = spec.factory.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"{field} '{spec.factory}': module '{exc.name}' not found (expected a module beside "
                "pipelines.yaml or an installed package)"
            ) from None
        raise ConfigError(f"{field} '{spec.factory}': importing '{module_name}' raised {one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a user's module that raises on import is one line
        raise ConfigError(f"{field} '{spec.factory}': importing '{module_name}' raised {one_line(exc)}") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field} '{spec.factory}': module '{module_name}' has no attribute '{attribute}'")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{field} '{spec.factory}': {type(target).__name__} is not callable "
            "(expected a function or nn.Module class returning a network)"
        )
    return target


def one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def check_importable(specs: dict[str, Any], folder: Path, where: str) -> None:
    """Every spec imports and is callable, a module in `folder` (beside pipelines.yaml) found too."""
    add_search_paths([str(folder)])
    for field, spec in specs.items():
        try:
            resolve_factory(spec, field)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def code_paths(specs: Iterable[Any]) -> list[str]:
    """The files or package folders of the users' modules `config` imports (not vae's own, not
    installed packages): what the registered MLflow model carries (code_paths)."""
    found: list[str] = []
    for spec in specs:
        top = spec.factory.partition(":")[0].split(".")[0]
        module = sys.modules.get(top) or importlib.import_module(top)
        origin = Path(getattr(module, "__file__", "") or "")
        if not origin.name or top == "vae" or any(part in ("site-packages", "dist-packages") for part in origin.parts):
            continue
        path = str(origin.parent if origin.name == "__init__.py" else origin)
        if path not in found:
            found.append(path)
    return found


def code_dirs(specs: Iterable[Any]) -> list[str]:
    """The folders a process adds to its search path to import the users' modules (code_paths' parents)."""
    return sorted({str(Path(path).parent) for path in code_paths(specs)})
