"""``hhh-bench prefetch [OVERRIDES...]``: bring everything a run reads from the network into
this machine's caches, at the pinned revisions, so that the run itself needs no network.

One concept: a run's remote resources, listed, checked and fetched.

A run reads from the network: hub models (``model.path``, ``merge.base``/``merge.models``,
every judge of ``eval.judges``, the reward model of a mixture scored with ``scorer:
reward_model``), hub datasets (the data sources without a local ``path``), lm-eval's built-in
tasks' datasets (``eval.include_defaults``; the rehearsal's stand-ins replace them) and NLTK
data (IFEval's ``punkt_tab``). The suite's own data files (``eval.data_files``) are local
files: listed and checked, fetched by hand (conf/eval/harness_3h.yaml says how). Run it on a
machine with network access and the same ``HF_HOME``/``HF_DATASETS_CACHE``/``NLTK_DATA`` as
the compute nodes (a shared filesystem), then run offline (``HF_HUB_OFFLINE=1``): a resource
still missing is named by the run's own checks before any work. ``--check`` only lists what is
present and what is missing (exit status 1 when something is missing). docs/reproduce.md,
"Offline compute nodes".
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODEL_FILES = ["*.safetensors", "*.json", "tokenizer*", "*.jinja", "*.model", "*.txt"]
"""What a model download takes: weights in safetensors only (never a pickle), configs,
tokenizer files; a model whose own code is trusted (``trust_remote_code``) adds ``*.py``."""
BUILTIN_TASKS = ("truthfulqa_mc2", "ifeval", "mmlu", "arc_challenge", "toxigen")
"""lm-eval's built-in tasks the real suite can name (their datasets come from the hub)."""


@dataclasses.dataclass
class Resource:
    """One thing a run reads from the network."""

    kind: str  # model | dataset | lm-eval task | nltk | file
    ident: str
    revision: str | None
    where: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def label(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.kind} {self.ident}{rev} ({self.where})"


def resources(cfg: Mapping[str, Any]) -> list[Resource]:
    """Every remote resource of the prepared run config ``cfg`` (a plain mapping), each once."""
    from hhh_bench.core.hubref import is_hub_id, split_ref
    from hhh_bench.pins import hub_sources, merge_refs
    from hhh_bench.validation import NLTK_DATA_OF_TASKS

    out: list[Resource] = []

    def model(where: str, ident: Any, revision: Any = None, remote_code: bool = False) -> None:
        if not isinstance(ident, str):
            return
        ident, pinned = split_ref(ident)
        if is_hub_id(ident):
            out.append(Resource("model", ident, revision or pinned, where,
                                {"trust_remote_code": bool(remote_code)}))  # fmt: skip

    m = cfg.get("model") or {}
    if m.get("kind") == "hub":
        model("model.path", m.get("path"), m.get("revision"), bool(cfg.get("trust_remote_code")))
    for where, ident, rev in merge_refs(cfg.get("merge")):
        model(where, ident, rev)
    for name, j in ((cfg.get("eval") or {}).get("judges") or {}).items():
        if isinstance(j, Mapping) and not j.get("endpoint"):  # an API judge downloads nothing
            model(f"eval.judges.{name}", j.get("model"), j.get("revision"),
                  bool(j.get("trust_remote_code")))  # fmt: skip
    mixes = [("mix", cfg.get("mix"))]
    mixes += [(f"pipeline.mixtures[{i}]", e) for i, e in
              enumerate((cfg.get("pipeline") or {}).get("mixtures") or [])]  # fmt: skip
    for where, e in mixes:
        if isinstance(e, Mapping) and e.get("scorer") == "reward_model":
            a = e.get("scorer_args") or {}
            model(f"{where}.scorer_args", a.get("model"), a.get("revision"),
                  bool(a.get("trust_remote_code")))  # fmt: skip
    data = cfg.get("data") or {}
    for where, src in hub_sources(data):
        out.append(Resource("dataset", src["hub_id"], src.get("revision"), where,
                            {"source": src, "cache_dir": data.get("cache_dir")}))  # fmt: skip
    e = cfg.get("eval") or {}
    tasks = {t for ts in (e.get("dimensions") or {}).values() for t in (ts or {})}
    tasks |= {c.get("task") for c in (e.get("columns") or {}).values() if isinstance(c, Mapping)}
    for t in sorted(tasks & set(NLTK_DATA_OF_TASKS)):  # before the tasks: IFEval's module
        package, path = NLTK_DATA_OF_TASKS[t]  # downloads punkt_tab when imported without it
        out.append(Resource("nltk", package, None, f"eval: {t}", {"path": path}))
    standins = bool((cfg.get("rehearsal") or {}).get("eval_standins"))
    if e.get("include_defaults") and not standins:
        for t in sorted(tasks & set(BUILTIN_TASKS)):
            out.append(Resource("lm-eval task", t, None, f"eval: {t}"))
    for name, path in (e.get("data_files") or {}).items():
        out.append(Resource("file", str(path), None, f"eval.data_files.{name}"))
    seen, unique = set(), []
    for r in out:
        if (r.kind, r.ident, r.revision) not in seen:
            seen.add((r.kind, r.ident, r.revision))
            unique.append(r)
    return unique


def present(r: Resource) -> bool:
    """Whether ``r`` is on this machine (the caches, the file system), checked offline."""
    if r.kind == "model":
        from hhh_bench.core.hubref import cached_config

        return cached_config(r.ident, r.revision) is not None
    if r.kind == "file":
        return Path(r.ident).is_file()
    if r.kind == "nltk":
        import nltk

        try:
            nltk.data.find(r.extra["path"])
        except LookupError:
            return False
        return True
    with _offline():
        try:
            _get(r)
        except Exception:  # noqa: BLE001 - any failure to read it offline: not there
            return False
    return True


def fetch(r: Resource) -> None:
    """Bring ``r`` into this machine's caches (network needed); a local file cannot be."""
    if r.kind == "model":
        from huggingface_hub import snapshot_download

        patterns = MODEL_FILES + (["*.py"] if r.extra.get("trust_remote_code") else [])
        snapshot_download(r.ident, revision=r.revision, allow_patterns=patterns)
    elif r.kind == "nltk":
        import nltk

        target = os.environ.get("NLTK_DATA", "").split(os.pathsep)[0] or None
        if not nltk.download(r.ident, download_dir=target, quiet=True, raise_on_error=True):
            raise OSError(f"nltk.download({r.ident!r}) failed")
    elif r.kind == "file":
        raise OSError(
            f"{r.where}={r.ident} is a local file: export it at a pinned revision on a machine "
            "with network (conf/eval/harness_3h.yaml, above data_files)"
        )
    else:
        _get(r)


def _get(r: Resource) -> None:
    """Load a dataset or an lm-eval task's dataset (downloading what the cache lacks)."""
    if r.kind == "dataset":
        from hhh_bench.data.sources.loader import load_raw

        load_raw(r.extra["source"], r.extra.get("cache_dir") or "")
    else:
        from lm_eval.tasks import TaskManager, get_task_dict

        get_task_dict([r.ident], TaskManager())


class _offline:
    """The offline variables set (and honoured by the libraries that read them at import)."""

    def __enter__(self) -> None:
        from hhh_bench.data.sources.loader import respect_offline_env

        self.saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        self.ctx = respect_offline_env()
        self.ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.ctx.__exit__(*exc)
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="hhh-bench prefetch",
        description="Fetch every model, dataset, judge and auxiliary resource a run needs into "
        "this machine's caches, at the pinned revisions, so that the run needs no network "
        "(run it where there is network, with the compute nodes' HF_HOME and NLTK_DATA). "
        "docs/reproduce.md, 'Offline compute nodes'.",
    )
    ap.add_argument(
        "overrides", nargs="*", help="the run's overrides (experiment=paper_llama3 ...)"
    )
    ap.add_argument("--check", action="store_true",
                    help="only list what is here and what is missing (exit 1 if anything is)")  # fmt: skip
    args = ap.parse_args(argv)
    from hhh_bench.pipeline import compose_run
    from hhh_bench.stages.common import to_dict

    try:
        wanted = resources(to_dict(compose_run(args.overrides)))
    except (ValueError, OSError) as e:
        print(f"hhh-bench prefetch: error: {e}", file=sys.stderr)
        return 2
    missing, failed = [], []
    for r in wanted:
        # an lm-eval task whose NLTK data is not here is not loaded (it would download it)
        blocked = r.kind == "lm-eval task" and any(x.kind == "nltk" for x in missing + failed)
        here = False if blocked else present(r)
        if args.check or here:
            print(f"{'present' if here else 'missing'}  {r.label()}")
            if not here:
                missing.append(r)
            continue
        try:
            fetch(r)
        except Exception as e:  # noqa: BLE001 - named, the others still fetched
            failed.append(r)
            print(
                f"FAILED   {r.label()}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
        else:
            print(f"fetched  {r.label()}")
    cmd = " ".join(["hhh-bench prefetch", *args.overrides])
    if missing:
        print(f"{len(missing)} of {len(wanted)} missing: on a machine with network, run `{cmd}`")
        return 1
    if failed:
        print(f"hhh-bench prefetch: error: {len(failed)} of {len(wanted)} could not be fetched "
              "(above)", file=sys.stderr)  # fmt: skip
        return 2
    print(f"{len(wanted)} resource(s) in place: the run needs no network (HF_HUB_OFFLINE=1)")
    return 0
