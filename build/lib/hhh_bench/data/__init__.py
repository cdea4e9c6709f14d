"""3H preference data: the schema, the toy 3H world, real-set adapters, noise and mixing."""

from hhh_bench.data.schema import (
    DIMENSIONS,
    PreferenceRow,
    SchemaError,
    load_preferences,
    make_row,
    read_jsonl,
    validate_row,
    validate_rows,
    write_jsonl,
)

__all__ = [
    "DIMENSIONS",
    "PreferenceRow",
    "SchemaError",
    "load_preferences",
    "make_row",
    "read_jsonl",
    "validate_row",
    "validate_rows",
    "write_jsonl",
]
