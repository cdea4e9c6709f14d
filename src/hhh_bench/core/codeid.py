"""Code identity: what a stage's key holds of the code that computes it.

The BLAKE3 of each source file a stage runs (hhh-bench's own modules and packages, their task
YAMLs; a plugin's modules, wherever it is installed, with the plugin's own modules they import),
hhh-bench's version and the versions of :data:`CODE_VERSIONS`. A library's files (the standard
library's, or any distribution hhh-bench's requirements reach) are never hashed: its version and
the lock stand for it. What each stage lists: docs/caching.md.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import blake3

from hhh_bench.core.environment import installed_version

CODE_VERSIONS = ("torch", "transformers", "trl", "peft", "lm_eval")
"""The libraries whose versions every stage key holds (with hhh-bench's own version)."""


CODE_SUFFIXES = (".py", ".yaml", ".yml", ".jinja", ".j2")
"""What of a package's folder a key holds as code: its Python and the task YAMLs and templates
beside it (the built-in eval tasks' ``*.yaml``)."""


def _package_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.rglob("*")
        if f.suffix in CODE_SUFFIXES and f.is_file() and "__pycache__" not in f.parts
    )


def _source_files(item: Any) -> list[Path]:
    """The source files of a module name (a package: every ``.py`` and task YAML below it), a
    module, a class or a function (its module's file and, for a class, those of its bases), or a
    path. A library's code (:func:`_is_library`) is never hashed; other code outside hhh-bench
    (a plugin's) brings the plugin's own modules it uses (:func:`_plugin_modules`), wherever the
    plugin is installed."""
    import importlib
    import importlib.util
    import inspect
    import types

    if isinstance(item, Path):
        return _package_files(item) if item.is_dir() else [item]
    if isinstance(item, str):
        if not _is_ours(item):
            if _is_library(item):
                return []
            return _plugin_files(importlib.import_module(item))
        spec = importlib.util.find_spec(item)
        if spec is None:
            raise ValueError(f"code identity: no module {item!r}")
        if spec.submodule_search_locations:
            return [f for loc in spec.submodule_search_locations for f in _package_files(Path(loc))]
        return [Path(spec.origin)] if spec.origin else []
    if isinstance(item, types.ModuleType):
        if not _is_ours(item.__name__):
            return [] if _is_library(item.__name__) else _plugin_files(item)
        f = getattr(item, "__file__", None)
        return [Path(f)] if f else []
    objs = (
        [c for c in inspect.getmro(item) if c.__module__ != "builtins"]
        if isinstance(item, type)
        else [item]
    )
    out: list[Path] = []
    for o in objs:
        name = getattr(o, "__module__", "") or ""
        if _is_ours(name):
            try:
                f = inspect.getsourcefile(o)
            except TypeError:
                f = None
            if f:
                out.append(Path(f))
            continue
        mod = sys.modules.get(name)
        if mod is not None and not _is_library(name):
            out += _plugin_files(mod)  # the plugin's own class or function, or its base's
    return out


def _is_ours(module: str) -> bool:
    return module == "hhh_bench" or module.startswith("hhh_bench.")


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _is_library(module: str) -> bool:
    """Whether a module is the standard library's or a library hhh-bench depends on (any
    distribution its requirements reach): keyed by versions and the lock, never by files. An
    installed package outside that closure is a plugin's (hashed). Without hhh-bench's own
    metadata (a bare source tree), anything installed counts as a library."""
    top = _top(module)
    if top in sys.stdlib_module_names:
        return True
    tops = _dependency_tops()
    if tops is not None:
        return top in tops
    mod = sys.modules.get(module)
    f = getattr(mod, "__file__", None) if mod is not None else None
    return f is None or _library(str(f))


@functools.lru_cache(maxsize=1)
def _dependency_tops() -> frozenset[str] | None:
    """The top-level module names of every distribution hhh-bench's requirements reach (extras
    included); None when hhh-bench is not installed (no metadata)."""
    import re
    from importlib import metadata

    from packaging.requirements import Requirement

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    try:
        metadata.distribution("hhh-bench")
    except metadata.PackageNotFoundError:
        return None
    seen: set[str] = set()
    todo = ["hhh-bench"]
    while todo:
        dist = todo.pop()
        if norm(dist) in seen:
            continue
        seen.add(norm(dist))
        try:
            requires = metadata.requires(dist) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [Requirement(r).name for r in requires]
    seen.discard("hhh-bench")
    return frozenset(
        top
        for top, dists in metadata.packages_distributions().items()
        if any(norm(d) in seen for d in dists)
    )


def _library(path: str) -> bool:
    return any(part in path for part in ("site-packages", "dist-packages", "/lib/python"))


def _local(mod: Any) -> bool:
    """A module of the user's own (a file outside any installed library or the standard
    library, and not hhh-bench's)."""
    f = getattr(mod, "__file__", None)
    return bool(f) and not _library(str(f)) and not _is_ours(mod.__name__)


def _plugin_modules(root: Any) -> list[Any]:
    """A plugin module and, transitively, the modules it uses that are the plugin's own: of its
    top-level package (an installed plugin's), or the user's own files beside it (a helper
    module); never hhh-bench's (its keys list those), a library's or the standard library's
    (in a key through their versions: :data:`CODE_VERSIONS`)."""
    import types

    top, seen, todo = _top(root.__name__), [root], [root]
    while todo:
        mod = todo.pop()
        names = set(_imported_names(mod))
        for v in list(vars(mod).values()):
            name = v.__name__ if isinstance(v, types.ModuleType) else getattr(v, "__module__", None)
            if isinstance(name, str):
                names.add(name)
        for name in sorted(names):
            used = sys.modules.get(name)
            if used is None or used in seen or _is_ours(used.__name__):
                continue
            if _top(name) in sys.stdlib_module_names:
                continue
            if _top(name) == top or (_local(used) or not _is_library(name)):
                seen.append(used)
                todo.append(used)
    return seen


def _imported_names(mod: Any) -> list[str]:
    """The modules a module's source imports (``from helper import FACTOR`` names ``helper``,
    which its namespace does not show), relative imports resolved against its package."""
    import ast

    f = getattr(mod, "__file__", None)
    try:
        tree = ast.parse(Path(f).read_text()) if f else None
    except (OSError, SyntaxError, ValueError):
        tree = None
    if tree is None:
        return []
    package = getattr(mod, "__package__", None) or ""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                out += [".".join(parts[: i + 1]) for i in range(len(parts))]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level > 1 else base
                stem = ".".join([*base, node.module] if node.module else base)
            else:
                stem = node.module or ""
            if stem:
                out.append(stem)
                out += [f"{stem}.{a.name}" for a in node.names]  # submodules imported by name
    return out


_PLUGIN_NAMES: dict[Path, str] = {}
"""A plugin file's name in a key, from its module's name (``my_plugin/ops/scale.py``), never
from where it is."""


def _plugin_files(mod: Any) -> list[Path]:
    """The files of a plugin's modules (:func:`_plugin_modules`); a plugin that is a package
    brings every code file of its top-level package."""
    out: dict[Path, str] = {}
    for m in _plugin_modules(mod):
        top = sys.modules.get(_top(m.__name__))
        folders = getattr(top, "__path__", None) if top is not None else None
        if folders:
            for folder in folders:
                for f in _package_files(Path(folder)):
                    out[f] = f"{top.__name__}/{f.relative_to(folder).as_posix()}"
        elif getattr(m, "__file__", None):
            out[Path(m.__file__)] = Path(m.__file__).name  # a module of its own: helper.py
        out.update(_not_yet_imported(m))
    for path, name in out.items():
        _PLUGIN_NAMES[path.resolve()] = name
    return list(out)


def _not_yet_imported(mod: Any) -> dict[Path, str]:
    """The user's own modules ``mod``'s source imports that are not imported yet (an import
    inside a function, run only when the plugin is called), found without importing them."""
    import importlib.util

    out: dict[Path, str] = {}
    for name in _imported_names(mod):
        if name in sys.modules or _is_ours(name) or _top(name) in sys.stdlib_module_names:
            continue
        if "." in name and name.rsplit(".", 1)[0] not in sys.modules:
            continue  # find_spec would import its parent package
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = getattr(spec, "origin", None) if spec is not None else None
        if origin and origin.endswith(".py") and not _library(origin):
            out[Path(origin)] = name.replace(".", "/") + ".py"
    return out


@functools.lru_cache(maxsize=4096)
def _resolved(path: Path) -> Path:
    """``path.resolve()``, once per process per path: a stage key names about a hundred source
    files, and resolving each anew on every key cost a cached rerun ~10 ms per evaluated model."""
    return path.resolve()


def _code_name(path: Path) -> str:
    """A source file's name in a key: from ``hhh_bench/`` on for ours, from its module's name for
    a plugin's (``my_plugin/ops/scale.py``: where the plugin is does not count)."""
    resolved = _resolved(path)
    if resolved in _PLUGIN_NAMES:
        return _PLUGIN_NAMES[resolved]
    parts = resolved.parts
    if "hhh_bench" in parts:
        i = len(parts) - 1 - parts[::-1].index("hhh_bench")
        return "/".join(parts[i:])
    return path.name


_CODE_MEMO: dict[tuple[str, int, int], str] = {}


def _file_blake3(path: Path) -> str:
    st = path.stat()
    k = (str(path), st.st_size, st.st_mtime_ns)
    if k not in _CODE_MEMO:
        _CODE_MEMO[k] = blake3.blake3(path.read_bytes()).hexdigest()
    return _CODE_MEMO[k]


def code_identity(*items: Any) -> dict[str, Any]:
    """What a stage's key holds of the code that computes it: the BLAKE3 of each source file of
    ``items`` (module names, packages, modules, classes, functions; a plugin's module included),
    hhh-bench's version and the versions of :data:`CODE_VERSIONS`."""
    from hhh_bench import __version__

    files: dict[str, str] = {}
    for item in items:
        for f in _source_files(item):
            files[_code_name(f)] = _file_blake3(f)
    versions = {name: installed_version(name) for name in CODE_VERSIONS}
    return {"hhh_bench": __version__, "versions": versions, "files": dict(sorted(files.items()))}
