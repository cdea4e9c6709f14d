"""``hhh-bench list [WHAT]``: what a run can name (experiments, config groups and their options,
merge methods, mixing strategies, dataset sources and adapters), with each one's first line of
documentation, so a user does not have to read the source tree to write an override.

Plugins (``--plugin my_pkg.methods``, the config's ``plugins=[...]``) are imported first, so
their registrations are listed beside the built-in ones."""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence

import yaml

from hhh_bench.core.paths import NOT_CHOICES, conf_dir


def _first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _yaml_comment(path, limit: int = 100) -> str:
    """The first sentence of a config file's leading comment (how every option describes
    itself), up to the first command line it shows, cut at ``limit`` characters."""
    words = []
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s.startswith("#") or s.startswith("#   ") or s.startswith("# fetch:"):
            break
        if not s.startswith("# @package"):
            words.append(s.lstrip("#").strip())
    text = " ".join(w for w in words if w)
    for end in (". ", ": "):
        text = text.split(end)[0]
    text = text.rstrip(".:")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def groups() -> list[tuple[str, str]]:
    """Every config group and its options (``_``-prefixed files are shared parts, not options;
    ``conf/source/`` is listed by ``list sources``: no group a run chooses)."""
    root = conf_dir()
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in NOT_CHOICES):
        options = sorted(f.stem for f in d.glob("*.yaml") if not f.stem.startswith("_"))
        if options:
            out.append((d.name, ", ".join(options)))
    return out


def experiments() -> list[tuple[str, str]]:
    return [(f.stem, _yaml_comment(f)) for f in sorted((conf_dir() / "experiment").glob("*.yaml"))]


def methods() -> list[tuple[str, str]]:
    """Each method's one-line summary, then its own parameters with their defaults (the common
    ones, scaling, weights, seed, compute_dtype and device, are every method's)."""
    from hhh_bench.merging import CommonParams, describe_method, get_method, list_methods
    from hhh_bench.merging.params import describe_params

    common = {row["name"] for row in describe_params(CommonParams)}
    out = []
    for name in list_methods():
        method = get_method(name)
        own = [
            f"{r['name']}={r['default']}" for r in describe_method(name) if r["name"] not in common
        ]
        note = method.summary or _first_line(method)
        out.append((name, f"{note} [{', '.join(own) or 'common parameters only'}]"))
    return out


def strategies() -> list[tuple[str, str]]:
    from hhh_bench.data.mixing import get_strategy, list_strategies

    return [(s, _first_line(get_strategy(s).fn)) for s in list_strategies()]


def sources() -> list[tuple[str, str]]:
    from hhh_bench.data.sources import list_sources

    out = []
    for name in list_sources():
        path = conf_dir() / "source" / f"{name}.yaml"
        cfg = yaml.safe_load(path.read_text()) or {}
        out.append((name, f"[{cfg.get('dimension')}] {_yaml_comment(path)}"))
    return out


def adapters() -> list[tuple[str, str]]:
    from hhh_bench.data.sources import get_adapter, list_adapters

    return [(a, _first_line(get_adapter(a))) for a in list_adapters()]


LISTS: dict[str, tuple[str, Callable[[], list[tuple[str, str]]]]] = {
    "experiments": ("experiments (experiment=NAME)", experiments),
    "groups": ("config groups and their options (GROUP=OPTION)", groups),
    "methods": ("merge methods (merge=NAME, or merge.method=NAME)", methods),
    "strategies": ("data-mixture strategies (mix=NAME)", strategies),
    "sources": ("dataset sources (data.sources=[NAME, ...])", sources),
    "adapters": ("dataset adapters (a source's adapter:)", adapters),
}


def main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="hhh-bench list",
        description="List what a run can name: " + ", ".join(LISTS) + " (default: all).",
    )
    ap.add_argument("what", nargs="*", metavar="WHAT", help="one or more of: " + ", ".join(LISTS))
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="import MODULE first (its registrations are listed too); repeatable")  # fmt: skip
    args = ap.parse_args(list(argv))
    unknown = [w for w in args.what if w not in LISTS]
    if unknown:
        ap.error(f"unknown list {unknown[0]!r}; choose from {', '.join(LISTS)}")
    for module in args.plugin:
        try:
            importlib.import_module(module)
        except ImportError as e:
            print(f"hhh-bench list: error: --plugin {module!r} cannot be imported ({e})",
                  file=sys.stderr)  # fmt: skip
            return 2
        except Exception as e:  # noqa: BLE001 - the user's module failed: named, exit 2
            from hhh_bench.pipeline import plugin_error

            print(f"hhh-bench list: error: --plugin {module!r}: importing it failed: "
                  f"{plugin_error(e)}", file=sys.stderr)  # fmt: skip
            return 2
    for i, what in enumerate(args.what or list(LISTS)):
        title, fn = LISTS[what]
        rows = fn()
        print(("\n" if i else "") + f"{title}:")
        width = max((len(n) for n, _ in rows), default=0)
        for name, note in rows:
            print(f"  {name:<{width}}  {note}".rstrip())
    return 0
