"""The hook of the user task ``toy3h_known_qa_direct_*`` (a file next to its YAMLs, referenced as
``!function direct_utils.answer_or_evade``)."""

from __future__ import annotations

from typing import Any

from hhh_bench.data.toy3h import IDK, REFUSAL


def answer_or_evade(dataset: Any) -> Any:
    """Keep each known-entity question's correct answer (gold 0) and the two evasions."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [doc["choices"][int(doc["gold"])], IDK, REFUSAL], "gold": 0}

    return dataset.map(_map)
