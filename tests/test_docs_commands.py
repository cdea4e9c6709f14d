"""Every ``hhh-bench`` command in the README's and docs' bash blocks composes and passes the
run's validation (unknown keys, knobs, the merge method, every grid point) as written: the
plugin examples with the module and task folder of ``tests/assets/plugins``, a multirun sweep
as each of its jobs. The heavier stated effects (rows, tables) are the e2e tests' job:
tests/test_extending.py runs the extension examples through the pipeline."""

from __future__ import annotations

import itertools
import re
import shlex
import sys

import pytest

from conftest import REPO, compose
from hhh_bench.cli import SUBCOMMANDS, VERBOSE_FLAGS

PLUGIN_DIR = REPO / "tests" / "assets" / "plugins"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def doc_commands() -> list[tuple[str, str]]:
    """(file name, command) for each hhh-bench command in a ```bash block (continuations
    joined, comments cut); commands with a ``...`` placeholder or a cluster launcher are left
    out (those need a cluster: tests/test_cluster.py composes them)."""
    out = []
    for path in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for cmd in block.replace("\\\n", " ").splitlines():
                cmd = re.sub(r"(^|\s+)#.*$", "", cmd).strip()
                if "hhh-bench" not in cmd and "-m hhh_bench" not in cmd:
                    continue
                if "..." in cmd or "hydra/launcher" in cmd:
                    continue
                if re.search(rf"hhh[-_]bench ({'|'.join(SUBCOMMANDS)})\b", cmd):
                    continue  # a subcommand, not the Hydra form: its own tests run it
                    # (tests/test_verified_cache.py::test_cache_verify_and_gc_from_the_command_line)
                out.append((path.name, cmd))
    return out


def jobs(cmd: str) -> tuple[dict[str, str], list[list[str]]]:
    """The environment assignments and the override lists of the jobs ``cmd`` runs."""
    words = shlex.split(cmd)
    env = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    start = next(i for i, w in enumerate(words) if w.endswith("hhh-bench") or w == "hhh_bench")
    args = [w for w in words[start + 1 :] if w not in ("-m", "--multirun", *VERBOSE_FLAGS)]
    multirun = "-m" in words[start + 1 :] or "--multirun" in words[start + 1 :]
    if "--cfg" in args:
        args = [a for a in args if a not in ("--cfg", "job")]
    if not multirun:
        return env, [args]
    choices = [a.split("=", 1)[1].split(",") if "," in a and "[" not in a else [None] for a in args]
    out = []
    for combo in itertools.product(*choices):
        out.append(
            [
                a if c is None else f"{a.split('=', 1)[0]}={c}"
                for a, c in zip(args, combo, strict=True)
            ]
        )
    return env, out


COMMANDS = doc_commands()


def test_the_docs_have_commands():
    names = {f for f, _ in COMMANDS}
    assert {"README.md", "extending.md", "training.md"} <= names and len(COMMANDS) >= 12


@pytest.mark.parametrize("doc, cmd", COMMANDS, ids=[f"{f}:{c[:60]}" for f, c in COMMANDS])
def test_doc_command_composes_and_validates(doc, cmd, monkeypatch, tmp_path):
    from hhh_bench.data.mixing import registry as mixing_registry
    from hhh_bench.merging import base as merging_base
    from hhh_bench.pipeline import load_plugins
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    env, job_list = jobs(cmd)
    if "PYTHONPATH" in env:
        monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.chdir(PLUGIN_DIR)  # `eval.include_paths=[my_hhh_tasks]` is a relative folder
    saved = mixing_registry.STRATEGIES.snapshot(), merging_base.METHODS.snapshot()
    try:
        for overrides in job_list:
            cfg = compose([*overrides, f"root={tmp_path}"])
            load_plugins(list(cfg.get("plugins") or []))
            groups = validate_run(to_dict(cfg))
            if "merge.method=median_tv" in overrides:  # RESM's option knobs left out
                assert set(groups["merge"].params) <= {
                    "scaling", "weights", "seed", "compute_dtype", "device"
                }  # fmt: skip
    finally:
        mixing_registry.STRATEGIES.restore(saved[0])
        merging_base.METHODS.restore(saved[1])
        sys.modules.pop("my_hhh_ext", None)


def test_a_knob_the_method_does_not_know_is_still_an_error():
    from hhh_bench.stages.common import to_dict
    from hhh_bench.validation import validate_run

    with pytest.raises(ValueError, match="density"):
        validate_run(
            to_dict(compose(["merge.method=task_arithmetic", "+merge.params.density=0.3"]))
        )
