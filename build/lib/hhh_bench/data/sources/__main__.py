"""``python -m hhh_bench.data.sources``: list the source configs, or fetch sources into a cache.

    python -m hhh_bench.data.sources list
    python -m hhh_bench.data.sources fetch hh_rlhf_helpful pku_saferlhf_harmless --cache-dir DIR

``fetch`` runs on a machine with network access; copy ``DIR`` to the offline machine and point
the data config's ``cache_dir`` at it.
"""

from __future__ import annotations

import argparse
import sys

from hhh_bench.data.sources import list_sources, load_source, load_source_config


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m hhh_bench.data.sources", description=__doc__)
    parser.add_argument("--conf-dir", default=None, help="the conf/ folder (default: the repo's)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list source configs with their hub id and revision")
    fetch = sub.add_parser("fetch", help="download and adapt sources into a datasets cache")
    fetch.add_argument("names", nargs="+", help="source names (conf/source/<name>.yaml)")
    fetch.add_argument("--cache-dir", required=True, help="the datasets cache folder to fill")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name in list_sources(args.conf_dir):
            c = load_source_config(name, args.conf_dir)
            print(
                f"{name:28s} {c['dimension']:9s} {c['hub_id']}@{c['revision']} split={c['split']}"
            )
        return 0
    for name in args.names:
        rows, stats = load_source(load_source_config(name, args.conf_dir), args.cache_dir)
        print(
            f"{name}: {stats['rows_in']} raw rows -> {len(rows)} pairs (dropped {stats['dropped']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
