"""Real preference sets: one adapter per dataset family, one ``conf/source/<name>.yaml`` per source.

The registry maps an adapter name (``adapter:`` in a source config) to a pure function from raw
rows to canonical rows (:mod:`hhh_bench.core.schema`); :func:`load_source` loads a source's split
through ``datasets`` (or a local raw file) and runs its adapter; :func:`build_preference_sets`
turns a ``kind: sources`` data config into per-dimension sets with the leakage guards applied.

    >>> from hhh_bench.data.sources import list_adapters, list_sources, load_source_config
    >>> cfg = load_source_config("hh_rlhf_helpful")            # doctest: +SKIP
    >>> rows, stats = load_source(cfg, cache_dir=".cache/hf_datasets")  # doctest: +SKIP

Importing this package registers every adapter (the family modules below).
"""

from hhh_bench.data.sources import (  # noqa: F401  (imported for their registrations)
    beavertails,
    halueval,
    helpsteer,
    hh_rlhf,
    pku_saferlhf,
    ultrafeedback,
)
from hhh_bench.data.sources.base import (
    STANDARD_REASONS,
    AdapterStats,
    adapter_options,
    get_adapter,
    list_adapters,
    register_source,
    run_adapter,
)
from hhh_bench.data.sources.build import (
    build_preference_sets,
    build_preference_splits,
    resolve_source_entries,
    source_counts_table,
    split_holdout,
)
from hhh_bench.data.sources.loader import (
    SOURCE_KEYS,
    SourceConfigError,
    SourceUnavailableError,
    cap_rows,
    default_conf_dir,
    fetch_commands,
    list_sources,
    load_raw,
    load_source,
    load_source_config,
    validate_source_config,
)

__all__ = [
    "SOURCE_KEYS",
    "STANDARD_REASONS",
    "AdapterStats",
    "SourceConfigError",
    "SourceUnavailableError",
    "adapter_options",
    "build_preference_sets",
    "build_preference_splits",
    "cap_rows",
    "default_conf_dir",
    "fetch_commands",
    "get_adapter",
    "list_adapters",
    "list_sources",
    "load_raw",
    "load_source",
    "load_source_config",
    "register_source",
    "resolve_source_entries",
    "run_adapter",
    "source_counts_table",
    "split_holdout",
    "validate_source_config",
]
