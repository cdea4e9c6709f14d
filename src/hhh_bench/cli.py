"""The ``hhh-bench`` command: a thin Hydra wrapper around :func:`hhh_bench.pipeline.run`.

hhh-bench --cfg job                      # print the composed config
hhh-bench stage=data data=toy3h          # one stage alone
hhh-bench experiment=toy3h               # the whole pipeline
hhh-bench -m merge=ties,tsv merge.params.scaling=0.5,1.0   # a sweep (multirun)
hhh-bench -m experiment=merge_optuna     # an Optuna search (pip install -e '.[optuna]')
hhh-bench cache verify runs/default      # a subcommand by name (SUBCOMMANDS); Hydra otherwise
hhh-bench list methods                   # what a run can name
hhh-bench merge ties.yaml out/           # a mergekit YAML, run with hhh-bench's methods
hhh-bench plan experiment=paper_llama3   # every job, cached or to run, and its cost
hhh-bench prefetch experiment=...        # what a run reads from the network, into the caches
hhh-bench export runs/toy3h              # every evaluated item, to JSONL or Parquet
hhh-bench --help                         # the subcommands, then Hydra's groups and config
hhh-bench report --help                  # a stage's usage (a stage runs as stage=report)

One concept: the command line as a user types it: what is checked before Hydra composes
(overrides, root, ``-m``), the subcommands dispatched by name, and every refusal as one line
with exit status 2 (Ctrl-C: 130) instead of a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _offline_defaults() -> None:
    # Quiet, deterministic defaults; a user's own settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_SILENT", "true")


VERBOSE_FLAGS = ("--verbose", "-v")


def _verbose() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("HHH_VERBOSE") == "1"


def console_settings(cfg) -> dict:
    """``console.verbosity`` (at least 2 under ``--verbose``) and ``console.progress`` of the
    run (docs/console.md), checked, and its root (where a log file goes if Hydra writes none)."""
    from hhh_bench.core.config import ConsoleConfig, load

    c = load(ConsoleConfig, dict(cfg.get("console") or {}), "console")
    verbosity = max(c.verbosity, 2) if _verbose() else c.verbosity
    return {"verbosity": verbosity, "progress": c.progress, "root": cfg.get("root")}


def job_name(override_dirname: str, num: int) -> str:
    """A multirun job's folder name: Hydra's ``override_dirname`` of the job (its overrides,
    ``merge=ties,merge.params.scaling=0.5``; ``root`` left out, conf/config.yaml), characters
    other than letters, digits and ``._,=+~@-`` as ``_``; a name over 96 characters is cut to 80
    and the full name's hash appended; ``job<num>`` when the job has no overrides."""
    name = re.sub(r"[^A-Za-z0-9._,=+~@-]", "_", override_dirname)
    if not name:
        return f"job{num}"
    if len(name) > 96:
        return f"{name[:80]}-{hashlib.sha256(override_dirname.encode()).hexdigest()[:12]}"
    return name


def multirun_job() -> str | None:
    """This Hydra job's name when it is a job of a multirun (``-m``), else None: its overrides
    (:func:`job_name`), the folder of its report."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return job_name(str(hc.job.override_dirname), int(hc.job.num))


MAX_SWEEP_CHECK = 256
"""A grid sweep of at most this many jobs is checked whole before its first job runs."""


def check_sweep_jobs() -> None:
    """Before the first job of a grid multirun (``-m a=1,2 b=x,y``), compose and check every
    job's config (:func:`hhh_bench.validation.validate_run`), so that a bad value in a later
    job (``scaling=0.5,nan``) stops the sweep before any job writes anything. Only discrete
    sweeps of Hydra's basic sweeper up to :data:`MAX_SWEEP_CHECK` jobs; a search (Optuna) or
    a rehearsal is left to each job's own check."""
    import itertools

    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or int(hc.job.num) != 0:
        return
    if "BasicSweeper" not in str(hc.sweeper.get("_target_", "")):
        return
    args = [a for a in sys.argv[1:] if not a.startswith("-") and "=" in a]
    args = [a for a in args if not a.lstrip("+~").startswith("hydra")]
    parsed = OverridesParser.create().parse_overrides(args)
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                return
            axes.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    jobs = list(itertools.islice(itertools.product(*axes), MAX_SWEEP_CHECK + 1))
    if len(jobs) > MAX_SWEEP_CHECK or len(jobs) < 2:
        return
    from hydra import compose

    from hhh_bench.pipeline import load_plugins
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    for i, job in enumerate(jobs):
        try:
            cfg = compose(config_name="config", overrides=list(job))
        except Exception:  # noqa: BLE001 - composing is Hydra's to refuse, in the job itself
            return
        if "rehearsal" in cfg:
            return
        try:
            load_plugins(list(cfg.get("plugins") or []))
            validate_run(to_dict(cfg))
        except ValueError as e:
            swept = " ".join(j for j, a in zip(job, axes, strict=True) if len(a) > 1)
            raise ValueError(f"sweep job {i} ({swept}): {e}; no job was run") from None


def check_sweep_mode() -> None:
    """A config whose Hydra sweeper searches something (``experiment=merge_optuna``: the Optuna
    sweeper and its search space; or any ``hydra.sweeper.params``), run without ``-m``: Hydra
    would run one job with the default knobs and search nothing. Raise ``ValueError`` saying to
    add ``-m`` (with the command to type); nothing outside a Hydra app (tests, scripts)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:
        return
    sweeper = hc.get("sweeper") or {}
    target = str(sweeper.get("_target_") or "")
    space = [str(k) for k in sweeper.get("params") or {}]
    if target.endswith(".BasicSweeper") and not space:
        return
    what = target.rsplit(".", 1)[-1] + (f" over {', '.join(space)}" if space else "")
    typed = " ".join(str(o) for o in hc.overrides.task)
    raise ValueError(
        f"this config is a sweep ({what}): without -m Hydra runs one job with the default knobs "
        f"and searches nothing; add -m: hhh-bench -m {typed}"
    )


def check_empty_dict_overrides(cfg) -> None:
    """:func:`hhh_bench.pipeline.check_dict_overrides` of this Hydra job's overrides."""
    from hydra.core.hydra_config import HydraConfig

    from hhh_bench.pipeline import check_dict_overrides

    if not HydraConfig.initialized():
        return
    check_dict_overrides(cfg, [str(o) for o in HydraConfig.get().overrides.task])


UNREAD_BY_EVAL = ("merge", "merge_engine", "mix", "train")
"""Config groups ``stage=eval`` does not read: it evaluates θ0, or the model ``+eval.model``
names, as it is."""


def check_unread_overrides(cfg) -> None:
    """``stage=eval`` with an override of a group it does not read (``merge=ties``,
    ``train.beta=0.5``): the run would evaluate θ0 (or ``+eval.model``) under a command that
    reads as evaluating a merge (battery 13, F2). Raise ``ValueError`` naming the override and
    the stages that read it."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or cfg.get("stage") != "eval":
        return
    for line in (str(o) for o in HydraConfig.get().overrides.task):
        key = line.lstrip("+~").split("=", 1)[0]
        group = key.split(".", 1)[0]
        if group in UNREAD_BY_EVAL:
            what = (f"+eval.model={cfg.eval.model}" if cfg.eval.get("model")
                    else "θ0 (the base model)")  # fmt: skip
            raise ValueError(
                f"{line}: stage=eval does not read the {group} settings; it evaluates {what} "
                "as it is. To evaluate a merge, run stage=merge then stage=eval "
                "+eval.model=<root>/merge/<key> (or stage=all); to score a merge on the "
                "selection split, stage=merge_eval"
            )


def task(cfg) -> float | None:
    """What one Hydra job runs: the pipeline, returning its objective (``stage=merge_eval``'s
    selection score) so a sweeper such as Optuna can optimize it; None for other stages.

    A bad input (a wrong path, value, file or model) ends the run with its message on stderr and
    exit status 2, no traceback (the traceback goes to the job's log file; ``--verbose`` or
    ``HYDRA_FULL_ERROR=1`` shows it); so does a sweep's config run without ``-m``
    (:func:`check_sweep_mode`), before any stage. The console: :func:`hhh_bench.core.console.session`."""
    import sqlite3

    from hhh_bench.core import console
    from hhh_bench.evaluation.serving import ServerError
    from hhh_bench.pipeline import run

    # a server that cannot serve, a backend's package missing: said in one line too
    bad_input = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, OSError,
                 sqlite3.Error, ServerError, ImportError)  # fmt: skip
    try:
        check_sweep_mode()
        check_empty_dict_overrides(cfg)
        check_unread_overrides(cfg)
        check_sweep_jobs()
        settings = console_settings(cfg)
    except ValueError as e:
        if _verbose():
            raise
        print(f"hhh-bench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    with console.session(**settings):
        try:
            objective = run(cfg, job=multirun_job()).get("objective")
        except bad_input as e:
            if _verbose():
                raise
            console.log.error("the run stopped", exc_info=True)  # the log file only
            console.error(f"hhh-bench: error: {e}")
            console.error("(full traceback: rerun with --verbose)")
            raise SystemExit(2) from None
    return None if objective is None else float(objective)


@dataclass(frozen=True)
class Subcommand:
    """A subcommand of ``hhh-bench`` by name: ``run`` takes the arguments after the name and
    returns an exit status; it parses them itself (argparse), ``--help`` included."""

    name: str
    summary: str
    run: Callable[[list[str]], int]

    def __call__(self, argv: list[str]) -> int:
        return int(self.run(argv) or 0)


# Each subcommand's module is imported only when it runs (a plain import, so that the layer
# contract, pyproject.toml [tool.importlinter], sees the arrow).
def _cache(argv: list[str]) -> int:
    from hhh_bench.cachetool import main as cache_main

    return cache_main(argv)


def _list(argv: list[str]) -> int:
    from hhh_bench.listing import main as list_main

    return list_main(argv)


def _run_overrides(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """A subcommand that takes a run's overrides (``plan``, ``prefetch``): they are checked as
    the Hydra form checks them (a folder of conf/ that is no group, Hydra's syntax) first."""
    overrides = [a for a in argv if not a.startswith("-")]
    check_not_groups(overrides)
    check_overrides(overrides)
    _offline_defaults()
    return main(argv)


def _plan(argv: list[str]) -> int:
    from hhh_bench.planning import main as plan_main

    check_root(argv)  # a root the run would refuse (a regular file): refused here too
    return _run_overrides(plan_main, argv)


def _export(argv: list[str]) -> int:
    from hhh_bench.exporting import main as export_main

    return export_main(argv)


def _prefetch(argv: list[str]) -> int:
    from hhh_bench.prefetching import main as prefetch_main

    return _run_overrides(prefetch_main, argv)


def _merge(argv: list[str]) -> int:
    from hhh_bench.mergeyaml import main as merge_main

    _offline_defaults()
    return merge_main(argv)


SUBCOMMANDS: dict[str, Subcommand] = {
    s.name: s
    for s in (
        Subcommand("cache", "verify or clean a run root's stage cache", _cache),
        Subcommand(
            "list", "list experiments, config groups, merge methods, strategies, sources", _list
        ),
        Subcommand("merge", "run a mergekit YAML: hhh-bench merge CONFIG.yaml OUT_DIR", _merge),
        Subcommand("plan", "list a run's jobs, which are cached, and what the others cost", _plan),
        Subcommand(
            "export", "write a run's evaluated items (prompts, answers, judges) to a file", _export
        ),
        Subcommand(
            "prefetch", "fetch what a run reads from the network into the caches", _prefetch
        ),
    )
}
"""Subcommands by name (``hhh-bench cache verify ROOT``), each with its own ``--help``; any other
first argument is the Hydra form (``hhh-bench experiment=toy3h stage=...``), the default. Add one
with its ``Subcommand`` here (docs/architecture.md: the cli floor)."""


def usage() -> str:
    """The overview ``hhh-bench --help`` prints above Hydra's own help."""
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [
        "usage: hhh-bench [--verbose] [GROUP=OPTION ...] [KEY=VALUE ...]   (the Hydra form)",
        "       hhh-bench -m KEY=V1,V2 ...                                 (a sweep)",
        "       hhh-bench SUBCOMMAND [--help] ...",
        "",
        "subcommands:",
        *(f"  {n:<{width}}  {s.summary}" for n, s in SUBCOMMANDS.items()),
        "",
        "--verbose: full tracebacks on errors and more on the console. The Hydra form's own help:",
        "",
    ]
    return "\n".join(lines)


STAGE_HELP = {
    "data": "build the preference data (`data`: the toy world, or the public sets) into <root>/data/",
    "base": "the base model θ0 (`model`: built and SFT'd on the toy world, or a checkpoint)",
    "train": "train one model from θ0 on data.dimensions with `train` (DPO, DPO + LoRA or SFT)",
    "merge": "merge the trained specialists with `merge` (its method and knobs)",
    "merge_eval": "merge with `merge` and score it on eval.select_split (what a sweeper optimizes)",
    "eval": "evaluate θ0, or the model given as +eval.model=FOLDER, on eval.report_split",
    "report": "write the report (report.md, figures, W&B tables) from <root>/results.jsonl",
    "diagnose": "task-vector diagnostics of the merge's inputs (`merge`'s RESM/TSV-M knobs)",
    "all": "the whole pipeline: every seed's stages, then the report (the default stage)",
}
"""What each stage (``stage=``, :data:`hhh_bench.pipeline.STAGES`) does: the usage printed for a
stage typed as a subcommand (:func:`bare_word`)."""


def bare_word(argv: list[str]) -> int | None:
    """``hhh-bench WORD ...`` where WORD is neither a subcommand nor an override (``report``):
    Hydra would stop on it with its OverrideParseException (a traceback under ``--verbose``).
    A stage's name with ``--help``/``-h`` prints that stage's usage in the Hydra form (0); any
    bare word otherwise is one line on stderr (2): the stage's command, or the closest name.
    None when the first argument (after ``-v``) is no bare word."""
    import difflib

    args = [a for a in argv if a not in VERBOSE_FLAGS]
    if not args or args[0][:1] in "-+~" or "=" in args[0] or args[0] in SUBCOMMANDS:
        return None
    word, rest = args[0], args[1:]
    wants_help = any(a in ("-h", "--help") for a in rest)
    if word in STAGE_HELP and wants_help:
        print(
            f"usage: hhh-bench stage={word} [root=RUN_ROOT] [GROUP=OPTION ...] [KEY=VALUE ...]\n\n"
            f"stage {word}: {STAGE_HELP[word]}.\n\n"
            f"A stage runs in the Hydra form (stage={word}), not as a subcommand.\n"
            f"  {f'hhh-bench stage={word} --cfg job':<36}  # the config it would run with\n"
            f"  {'hhh-bench --help':<36}  # the config groups and the subcommands"
        )
        return 0
    subcommands = ", ".join(SUBCOMMANDS)
    if word in STAGE_HELP:
        typed = " ".join([f"stage={word}", *(a for a in rest if a not in ("-h", "--help"))])
        why = f"{word!r} is a stage, not a subcommand: hhh-bench {typed}"
    else:
        close = difflib.get_close_matches(word, [*SUBCOMMANDS, *STAGE_HELP], n=1, cutoff=0.6)
        why = f"{word!r} is neither a subcommand nor an override (KEY=VALUE)" + (
            f"; did you mean {close[0]}?" if close else ""
        )
    print(f"hhh-bench: error: {why} (subcommands: {subcommands})", file=sys.stderr)
    return 2


NOT_GROUPS = {
    "accelerate": (
        "accelerate is no config group of hhh-bench: the train stage launches multi-GPU "
        "training itself with one of the files in accelerate/, e.g. `hhh-bench ... "
        "train.num_processes=8 train.accelerate_config=accelerate/fsdp.yaml`; one run by hand: "
        "`accelerate launch --config_file accelerate/fsdp.yaml -m hhh_bench stage=train ...` "
        "(docs/training.md)"
    ),
    "source": (
        "source is no config group you choose: the files in conf/source/ are the public "
        "datasets a data option draws from (data.sources, e.g. in conf/data/paper_3h.yaml); "
        "`hhh-bench list sources` lists them, and data=paper_3h uses them"
    ),
}
"""Names a user may take for config groups, and what they are instead: an override naming one
(``+accelerate=fsdp``, ``accelerate.x=1``) stops with this line, exit status 2, before Hydra
runs (Hydra would only say it cannot find the config)."""


def check_not_groups(argv: list[str]) -> None:
    """Exit 2 with :data:`NOT_GROUPS`' line when an override of ``argv`` names one."""
    for arg in argv:
        name = re.split(r"[=.@]", arg.lstrip("+~"), maxsplit=1)[0]
        if name in NOT_GROUPS:
            print(f"hhh-bench: error: {arg}: {NOT_GROUPS[name]}", file=sys.stderr)
            raise SystemExit(2)


def check_overrides(argv: list[str]) -> None:
    """Exit 2 naming the override of ``argv`` that is not Hydra's syntax (``seeds=[0,1``): Hydra
    says only what it could not parse (``no viable alternative at input '[0,1'``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as e:
            why = str(e).splitlines()[0]
            print(
                f"hhh-bench: error: {arg!r} is not a valid override ({why}); the syntax: "
                "https://hydra.cc/docs/advanced/override_grammar/basic/ (quote values with "
                "brackets, commas or spaces)",
                file=sys.stderr,
            )
            raise SystemExit(2) from None


class HeldStderr:
    """``sys.stderr`` while Hydra composes the config: what is written is held until a job
    starts (then it and everything after pass through), so that Hydra's own refusal of a
    mistyped key can be said in one line (:func:`unknown_key_line`)."""

    def __init__(self, real: Any) -> None:
        self.real, self.held, self.open = real, [], False

    def write(self, text: str) -> int:
        if self.open:
            return self.real.write(text)
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        if self.open:
            self.real.flush()

    def take(self) -> str:
        text, self.held = "".join(self.held), []
        return text

    def release(self) -> None:
        if not self.open:
            self.open = True
            text = self.take()
            if text:
                self.real.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def unknown_key_line(hydra_text: str, argv: list[str]) -> str | None:
    """One line for Hydra's five about an override of a key the config lacks (``Key 'x' is not
    in struct``): the key, the closest existing one, and ``+`` for a new key on purpose; None
    for any other refusal (Hydra's text is then shown as it is)."""
    from hhh_bench.pipeline import unknown_key_message

    message = unknown_key_message(hydra_text, argv)
    return None if message is None else f"hhh-bench: error: {message}\n"


def untraced(text: str) -> str:
    """Hydra's refusal of a command line as one line: a Python traceback it printed (an
    override Hydra's own code trips on, ``data=null``) reduced to its last line."""
    if "Traceback (most recent call last)" not in text or _verbose():
        return text
    last = [x for x in text.strip().splitlines() if x.strip()][-1].strip()
    return refused_line(last)


def refused_line(detail: str) -> str:
    """The one line of a command line Hydra refused before any job (its own error)."""
    return f"hhh-bench: error: the command line was refused before any job: {detail}\n"


def check_root(argv: list[str]) -> None:
    """Exit 2 naming ``root=...`` of ``argv`` when it cannot be a run's root (a regular file, a
    path under one, a folder this user cannot write to): Hydra creates its log folder there
    before any job, and would stop with a traceback."""
    from hhh_bench.validation import writable_folder

    for arg in argv:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key == "name" and ("/" in value or value.strip() in ("", ".", "..")):
            print(
                f"hhh-bench: error: {arg!r}: name must be one folder name (it names the run's "
                "folder, runs/<name>); give root= for a folder elsewhere",
                file=sys.stderr,
            )
            raise SystemExit(2)
        bare = value[1:-1] if len(value) > 1 and value[0] == value[-1] in "'\"" else value
        if sep and key == "root" and bare.strip() and bare != bare.strip():
            print(
                f"hhh-bench: error: {arg!r}: root begins or ends with a space; name the folder "
                "the run writes to without one (root=runs/my_experiment)",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if sep and key == "root" and not bare.strip():  # root='' too (battery 13, F10)
            print(
                f"hhh-bench: error: {arg!r}: root is empty; name the folder the run writes to "
                "(root=runs/my_experiment), or leave root out for the experiment's default",
                file=sys.stderr,
            )
            raise SystemExit(2)
        if sep and key == "root" and value and not any(c in value for c in "${},[]"):
            try:
                check_root_value(value.strip("'\""))
                writable_folder(value, "root")
            except ValueError as e:
                print(f"hhh-bench: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None


def check_multirun_first(argv: list[str]) -> None:
    """Exit 2 when ``-m``/``--multirun`` follows an override: Hydra's parser then reads the
    overrides after it as stray arguments and prints its usage block."""
    for i, arg in enumerate(argv):
        if arg in ("-m", "--multirun") and any("=" in a for a in argv[:i]):
            typed = " ".join([arg, *argv[:i], *argv[i + 1 :]])
            print(
                f"hhh-bench: error: {arg} must come before the overrides: hhh-bench {typed}",
                file=sys.stderr,
            )
            raise SystemExit(2)


def check_root_value(value: str) -> None:
    """``root`` is no path starting with ``~`` (not expanded here: it would make a folder named
    ``~``), and lies inside no finished stage output (a folder holding ``key.json`` or
    ``checksums.json``: writing there would change a cached output, which its next reuse then
    refuses)."""
    from pathlib import Path

    if value.startswith("~"):
        raise ValueError(
            f"root={value!r}: '~' is not expanded here (it would make a folder named '~' in the "
            f"current folder); write the full path, e.g. root={Path(value).expanduser()}"
        )
    from hhh_bench.core.stagecache import held_by_a_run

    why = held_by_a_run(value)
    if why is not None:
        raise ValueError(
            f"root={value!r} {why}: a run writing there would change it or mix its outputs "
            "with that run's; give a root outside any run's stage folders"
        )


def main() -> None:
    """Entry point of the console script and of ``python -m hhh_bench``: Ctrl-C ends it with
    one line and the shell's status for an interrupt (130), not a traceback."""
    _interrupt_everywhere()
    try:
        _main()
    except BrokenPipeError:  # `hhh-bench ... | head`: the reader left; nothing more to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(141) from None
    except KeyboardInterrupt:
        if _verbose():
            raise
        _interrupted()
    except SystemExit as e:
        if _INTERRUPTED and not e.code:
            _interrupted()
        raise
    if _INTERRUPTED:  # a Ctrl-C whose KeyboardInterrupt a library swallowed (raised in its
        _interrupted()  # clean-up, in an event loop's task): still an interrupt, never status 0


def _interrupted() -> None:
    _silence_progress_bars()
    print(
        "\nhhh-bench: interrupted; the stages that finished are cached, and rerunning the "
        "same command resumes from them",
        file=sys.stderr,
    )
    raise SystemExit(130) from None


_INTERRUPTED = False
"""Whether SIGINT reached :func:`_raise_interrupt` in this process."""


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGINT's handler: a ``KeyboardInterrupt`` wherever the main thread is (as Python's own),
    and remembered (:data:`_INTERRUPTED`: the run then ends as interrupted, even where a
    library caught the exception)."""
    global _INTERRUPTED
    _INTERRUPTED = True
    raise KeyboardInterrupt


def _interrupt_everywhere() -> None:
    """Ctrl-C raises ``KeyboardInterrupt`` inside an event loop too. Python's own handler lets
    ``asyncio.run`` (lm-eval's API models, ``eval.backend=server``) put its handler in place,
    which cancels the running task instead: a request loop that takes the cancellation as a
    failed request went on, and the run ended with status 0 after Ctrl-C (seen in CI). A
    handler of our own, equal in effect, is left alone by asyncio."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        signal.signal(signal.SIGINT, _raise_interrupt)


def _silence_progress_bars() -> None:
    """Progress bars a Ctrl-C left open (a library's, or the base SFT's) would print their last
    state when they are collected, after the interrupt line: they are silenced first."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        bar.disable = True  # close() and __del__ then print nothing


_HELD: HeldStderr | None = None
"""Hydra's stderr held back until a job starts (:func:`_main`); None in a launcher's job process."""
_ENTERED = False
"""Whether a Hydra job started in this process."""


def _job(cfg: Any) -> float | None:
    """The Hydra task function: module level, so that a launcher running jobs in other
    processes (submitit: ``hydra/launcher=local`` or ``slurm``) pickles it by name, not with
    this process's open streams."""
    global _ENTERED
    _ENTERED = True
    if _HELD is not None:
        _HELD.release()
    return task(cfg)


def _main() -> None:
    while len(sys.argv) > 2 and sys.argv[1] in VERBOSE_FLAGS and sys.argv[2] in SUBCOMMANDS:
        os.environ["HHH_VERBOSE"] = "1"  # `hhh-bench -v list`: the flag before the subcommand
        del sys.argv[1]
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        raise SystemExit(SUBCOMMANDS[sys.argv[1]](sys.argv[2:]))
    code = bare_word(sys.argv[1:])
    if code is not None:
        raise SystemExit(code)
    check_not_groups(sys.argv[1:])
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(usage())
    import hydra

    from hhh_bench.core.paths import conf_dir

    _offline_defaults()
    for flag in VERBOSE_FLAGS:  # ours, not Hydra's: tracebacks on errors, console.verbosity 2
        while flag in sys.argv:
            sys.argv.remove(flag)
            os.environ["HHH_VERBOSE"] = "1"

    check_overrides(sys.argv[1:])
    check_multirun_first(sys.argv[1:])
    check_root(sys.argv[1:])
    global _HELD
    held = _HELD = HeldStderr(sys.stderr)
    try:
        config_path = str(conf_dir())
    except FileNotFoundError as e:  # battery 14, F11: HHH_BENCH_CONF without config.yaml
        where = (
            f"HHH_BENCH_CONF={os.environ['HHH_BENCH_CONF']}: "
            if "HHH_BENCH_CONF" in os.environ
            else ""
        )
        print(f"hhh-bench: error: {where}{e}", file=sys.stderr)
        raise SystemExit(2) from None
    _app = hydra.main(version_base="1.3", config_path=config_path, config_name="config")(_job)

    def run_app() -> None:
        real, sys.stderr = sys.stderr, held  # type: ignore[assignment]
        try:
            _app()
        except SystemExit as e:
            # Hydra's own refusal of the command line (an unknown option, key or override
            # syntax), printed by Hydra before any job: a bad input like any other, exit 2
            if e.code == 1 and not _ENTERED:
                text = held.take()
                print(unknown_key_line(text, sys.argv[1:]) or untraced(text), end="", file=real)
                raise SystemExit(2) from None
            raise
        except Exception as e:  # Hydra refused the overrides before any job (data=null, ...)
            if _ENTERED or _verbose():
                raise
            held.take()
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(refused_line(f"{type(e).__name__}: {first}"), end="", file=real)
            raise SystemExit(2) from None
        finally:
            held.release()
            sys.stderr = real

    if not any(a in ("-h", "--help") for a in sys.argv[1:]):
        run_app()
        return
    import contextlib
    import io

    text = io.StringIO()
    try:
        with contextlib.redirect_stdout(text):
            run_app()
    finally:  # Hydra's help less the folders of conf/ that are no choice (NOT_GROUPS)
        print("".join(line for line in text.getvalue().splitlines(keepends=True)
                      if line.split(":", 1)[0] not in NOT_GROUPS), end="")  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
