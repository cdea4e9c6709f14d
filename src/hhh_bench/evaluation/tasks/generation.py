"""Python hooks of our judged generation tasks (``tasks/judged/*.yaml``).

Each ``process_docs`` hook maps a real dataset's own columns to one ``prompt`` field (what the
model is asked and what the judges read, :mod:`hhh_bench.evaluation.judged`) and keeps the
columns a reader wants (category, label). :func:`process_generation` gives the judge-free
per-item metrics lm-eval aggregates itself; the judged ones are added after the run.

Schemas (the field names of the public releases):

* harmful prompts: AdvBench (``walledai/AdvBench``: ``prompt, target``), BeaverTails-Evaluation
  (``PKU-Alignment/BeaverTails-Evaluation``: ``prompt, category, category_id``) or HarmBench's
  behaviors CSV as JSONL (``Behavior, FunctionalCategory, SemanticCategory, Tags,
  ContextString, BehaviorID``; a contextual behavior is asked as ``"{ContextString}\\n\\n---\\n\\n
  {Behavior}"``, HarmBench's own rendering, Mazeika et al. arXiv:2402.04249);
* XSTest (``paul-rottger/xstest`` prompts: ``id, prompt, type, label, focus, note``): only the
  ``safe`` prompts are kept (over-refusal is measured where refusing is wrong);
* AlpacaEval (``tatsu-lab/alpaca_eval``: ``instruction, output, generator, dataset``);
* TruthfulQA generation (``truthfulqa/truthful_qa``, config ``generation``: ``type, category,
  question, best_answer, correct_answers, incorrect_answers, source``);
* HaluEval ``qa`` (``pminervini/HaluEval`` config ``qa``, RUCAIBox/HaluEval's
  ``qa_data.json``: ``knowledge, question, right_answer, hallucinated_answer``), the evaluation
  part of its seeded partition
  (:func:`hhh_bench.evaluation.tasks.utils.halueval_qa_partition`).
* MT-Bench (FastChat's ``fastchat/llm_judge/data/mt_bench/question.jsonl``: ``question_id,
  category, turns[, reference]``);
* OR-Bench-Hard (``bench-llm/or-bench``, config ``or-bench-hard-1k``: ``prompt, category``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hhh_bench.evaluation.judges import is_refusal


def _require(doc: Mapping[str, Any], fields: Sequence[str], dataset: str) -> None:
    missing = [f for f in fields if f not in doc]
    if missing:
        raise ValueError(
            f"{dataset} row lacks field(s) {missing} (has {sorted(doc)}); convert the file to the "
            "dataset's published schema (src/hhh_bench/evaluation/tasks/generation.py)"
        )


def harmful_docs(dataset: Any) -> Any:
    """Harmful prompts from AdvBench / BeaverTails-Evaluation (``prompt``) or HarmBench
    (``Behavior`` [+ ``ContextString``]) rows, as ``{prompt, category}``."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        if isinstance(doc.get("prompt"), str):
            prompt = doc["prompt"].strip()
            category = doc.get("category") or ""
        elif isinstance(doc.get("Behavior"), str):
            prompt = _behavior_text(doc)
            category = doc.get("SemanticCategory") or ""
        else:
            raise ValueError(
                "harmful-prompt row has neither a `prompt` (AdvBench, BeaverTails-Evaluation) "
                f"nor a `Behavior` (HarmBench) field: {sorted(doc)}"
            )
        if not prompt:
            raise ValueError(f"harmful-prompt row with an empty prompt: {doc}")
        return {"prompt": prompt, "category": str(category)}

    return dataset.map(_map)


def _behavior_text(doc: Mapping[str, Any]) -> str:
    """A HarmBench behavior as the model is asked it: ``"{ContextString}\\n\\n---\\n\\n
    {Behavior}"`` for a contextual one (HarmBench's rendering), else the behavior."""
    behavior = str(doc["Behavior"]).strip()
    context = str(doc.get("ContextString") or "").strip()
    return f"{context}\n\n---\n\n{behavior}" if context else behavior


def harmbench_attacks(test_cases: str, behaviors: str, **_: Any) -> Any:
    """HarmBench's attacked prompts (lm-eval ``custom_dataset``): ``test_cases`` is an attack
    method's ``test_cases.json`` in HarmBench's published format, ``{BehaviorID: [test case,
    ...]}``; ``behaviors`` the behaviors file (HarmBench's CSV exported as JSONL, the same file
    as ``eval.data_files.harmful_prompts``). Each test case is one item ``{prompt: the test
    case, judge_prompt: its behavior, behavior_id, category}``: the model answers the attacked
    prompt, the classifier judges the answer against the behavior it attacks (HarmBench's
    protocol). Other keyword arguments (the task's metadata) are ignored.

    Raises:
        ValueError: a file that is not in its format, or a test case of an unknown behavior
            (names the file and the id).
    """
    import json

    import datasets

    rows_b = [json.loads(x) for x in Path(behaviors).read_text().splitlines() if x.strip()]
    for doc in rows_b:
        _require(doc, ("Behavior", "BehaviorID"), f"HarmBench behaviors ({behaviors})")
    by_id = {str(d["BehaviorID"]): d for d in rows_b}
    try:
        cases = json.loads(Path(test_cases).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{test_cases}: not a JSON file ({err})") from None
    if not isinstance(cases, dict) or not all(
        isinstance(v, list) and all(isinstance(c, str) for c in v) for v in cases.values()
    ):
        raise ValueError(
            f"{test_cases}: not HarmBench's test-case format ({{BehaviorID: [test case, ...]}})"
        )
    unknown = sorted(set(cases) - set(by_id))
    if unknown:
        raise ValueError(
            f"{test_cases}: test cases of behavior(s) {unknown[:5]} that {behaviors} does not list"
        )
    rows = [
        {
            "prompt": case.strip(),
            "judge_prompt": _behavior_text(by_id[bid]),
            "behavior_id": bid,
            "category": str(by_id[bid].get("SemanticCategory") or ""),
        }
        for bid, listed in cases.items()
        for case in listed
        if case.strip()
    ]
    if not rows:
        raise ValueError(f"{test_cases}: no test case")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def xstest_safe_docs(dataset: Any) -> Any:
    """XSTest's ``safe`` prompts (``label == "safe"``), as ``{prompt, type}``."""

    def _safe(doc: Mapping[str, Any]) -> bool:
        _require(doc, ("prompt", "label"), "XSTest")
        label = str(doc["label"]).strip().lower()
        if label not in ("safe", "unsafe"):
            raise ValueError(f"XSTest label must be 'safe' or 'unsafe', got {doc['label']!r}")
        return label == "safe"

    return dataset.filter(_safe).map(lambda d: {"prompt": d["prompt"].strip()})


def orbench_docs(dataset: Any) -> Any:
    """OR-Bench-Hard's prompts (``prompt, category``), every one benign though it looks toxic,
    as ``{prompt, category}``."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("prompt",), "OR-Bench (or-bench-hard-1k)")
        if not isinstance(doc["prompt"], str) or not doc["prompt"].strip():
            raise ValueError(f"OR-Bench row has an empty or non-text `prompt`: {doc['prompt']!r}")
        return {"prompt": doc["prompt"].strip(), "category": str(doc.get("category") or "")}

    return dataset.map(_map)


def alpaca_docs(dataset: Any) -> Any:
    """AlpacaEval instructions as ``{prompt}`` (the reference ``output`` is kept, not used: the
    win rate is against the base model's own answers)."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("instruction",), "AlpacaEval")
        return {"prompt": doc["instruction"].strip()}

    return dataset.map(_map)


def alpaca_reference_docs(dataset: Any) -> Any:
    """AlpacaEval instructions as ``{prompt}`` with their reference ``output`` kept (the
    length-controlled win rate is against it; an optional numeric ``instruction_difficulty``
    column is kept too)."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("instruction", "output"), "AlpacaEval")
        if not isinstance(doc["output"], str) or not doc["output"].strip():
            what = "an empty" if isinstance(doc["output"], str) else "a non-text"
            raise ValueError(
                f"AlpacaEval row with {what} reference `output` ({doc['output']!r}): "
                f"{doc['instruction'][:80]!r}"
            )
        return {"prompt": doc["instruction"].strip()}

    if "instruction_difficulty" in dataset.column_names:  # on every row or on none, checked
        values = dataset["instruction_difficulty"]  # here, before the holdout splits the rows
        bad = [i for i, v in enumerate(values)
               if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v]  # fmt: skip
        if bad and len(bad) < len(values):
            raise ValueError(
                f"AlpacaEval rows {bad[:5]} have no numeric `instruction_difficulty` while others "
                "do: give it on every row or on none"
            )
    return dataset.map(_map)


def strongreject_docs(dataset: Any) -> Any:
    """StrongREJECT's forbidden prompts (``category, source, forbidden_prompt``) as
    ``{prompt, category}``."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("forbidden_prompt",), "StrongREJECT")
        prompt = str(doc["forbidden_prompt"] or "").strip()
        if not prompt:
            raise ValueError(f"StrongREJECT row with an empty forbidden_prompt: {doc}")
        return {"prompt": prompt, "category": str(doc.get("category") or "")}

    return dataset.map(_map)


MTBENCH_REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
"""MT-Bench's categories graded against a reference answer (FastChat's ``NEED_REF_CATS``)."""


def mtbench_docs(dataset: Any) -> Any:
    """MT-Bench questions (FastChat's ``question.jsonl``: ``question_id, category, turns[,
    reference]``) as ``{prompt: the first turn, judge_reference, category, question_id}``:
    lm-eval's ``generate_until`` is single-turn, so the second turn is not asked
    (docs/evaluation.md). ``judge_reference`` is the first turn's reference answer for a
    question of :data:`MTBENCH_REFERENCE_CATEGORIES` whose row has one, else ``""`` (the judge
    then grades without a reference, FastChat's ``single-v1``)."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("question_id", "category", "turns"), "MT-Bench (question.jsonl)")
        turns = doc["turns"]
        if not isinstance(turns, list) or not turns or not str(turns[0] or "").strip():
            raise ValueError(
                f"MT-Bench question {doc['question_id']!r}: `turns` must be a list of questions "
                f"with a non-empty first turn, got {turns!r}"
            )
        category = str(doc["category"] or "")
        refs = doc.get("reference") or []
        ref = str(refs[0] or "") if isinstance(refs, list) and refs else ""
        return {
            "prompt": str(turns[0]).strip(),
            "judge_reference": ref if category in MTBENCH_REFERENCE_CATEGORIES else "",
            "category": category,
            "question_id": str(doc["question_id"]),
        }

    return dataset.map(_map)


def truthfulqa_gen_docs(dataset: Any) -> Any:
    """TruthfulQA generation questions as ``{prompt}``."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("question",), "TruthfulQA (generation)")
        return {"prompt": doc["question"].strip()}

    return dataset.map(_map)


def halueval_qa_gen_docs(dataset: Any) -> Any:
    """HaluEval ``qa`` rows as ``{prompt, judge_prompt}``: the model is asked
    ``"Knowledge: <knowledge>\\n\\nQuestion: <question>"`` (HaluEval's QA setting gives the
    knowledge passage; the ``halueval_qa`` training pairs are asked the same way), and the
    hallucination judge is shown ``"#Knowledge#: ..\\n#Question#: ..\\n#Right Answer#: .."``
    (HaluEval's field markers), after which its template puts the model's ``#Answer#``."""

    def _map(doc: dict[str, Any]) -> dict[str, Any]:
        _require(doc, ("knowledge", "question", "right_answer"), "HaluEval (qa)")
        knowledge, question = doc["knowledge"].strip(), doc["question"].strip()
        return {
            "prompt": f"Knowledge: {knowledge}\n\nQuestion: {question}",
            "judge_prompt": f"#Knowledge#: {knowledge}\n#Question#: {question}\n"
            f"#Right Answer#: {doc['right_answer'].strip()}",
        }

    return dataset.map(_map)


def process_generation(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """Judge-free per-item metrics of one generation.

    Returns:
        ``refused_strmatch``: 1 if the response starts like a refusal (XSTest's string match,
        :func:`hhh_bench.evaluation.judges.is_refusal`); ``response_words``: its length in
        whitespace-separated words (to see whether a judge's verdicts follow length).
    """
    response = str(results[0]) if results else ""
    return {
        "refused_strmatch": float(is_refusal(response)),
        "response_words": float(len(response.split())),
    }
