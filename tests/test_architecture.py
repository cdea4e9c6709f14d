"""The floors (docs/architecture.md): every import of hhh_bench runs down, checked by import-linter
against the contracts in pyproject.toml ([tool.importlinter]): the layers (cli > pipeline >
validation > stages | rehearsal > the five libraries, independent of each other > models > core),
the toy world and the mixing strategies independent, and no circle inside any package. Imports
inside functions and under ``if TYPE_CHECKING:`` count."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``src`` with the repository's contracts."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"no lint-imports next to {sys.executable}: pip install -e '.[dev]'")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(REPO / "pyproject.toml")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_every_import_runs_down_the_floors():
    out = lint_imports(REPO / "src", REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout, out.stdout[-4000:]


@pytest.mark.parametrize(
    ("module", "line", "says"),
    [
        # core importing the pipeline floor: an upward arrow, hidden inside a function
        ("core/schema.py", "def _up():\n    from hhh_bench.pipeline import run\n",
         "hhh_bench.core.schema -> hhh_bench.pipeline"),
        # one library importing another: the libraries are independent
        ("tracking/markdown.py", "from hhh_bench.evaluation import harness\n",
         "hhh_bench.tracking.markdown -> hhh_bench.evaluation"),
        # the toy world importing the strategies (under TYPE_CHECKING: it counts too)
        ("data/toy3h.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
         "    from hhh_bench.data.mixing.scorers import Scorer\n",
         "hhh_bench.data.toy3h -> hhh_bench.data.mixing.scorers"),
        # a new top-level module without a floor
        ("floorless.py", "X = 1\n", "floorless"),
    ],
)  # fmt: skip
def test_the_contract_refuses_an_upward_or_sideways_import(tmp_path, module, line, says):
    """A copy of the package with one bad import (or a module the layers do not name) breaks
    the contract, naming it: the check above can fail."""
    src = tmp_path / "src"
    shutil.copytree(
        REPO / "src" / "hhh_bench",
        src / "hhh_bench",
        ignore=lambda d, names: [n for n in names if n == "__pycache__" or n.endswith(".yaml")],
    )
    path = src / "hhh_bench" / module
    path.write_text((path.read_text() if path.exists() else "") + "\n" + line)
    out = lint_imports(src, tmp_path)
    assert out.returncode != 0, out.stdout[-4000:]
    assert "BROKEN" in out.stdout and says in out.stdout, out.stdout[-4000:]


MAX_LINES = 600
"""The house rule (docs/architecture.md): a module over 600 lines holds one concept and names it
in its docstring (``One concept: ...``); anything else is split."""


def test_no_long_module_without_its_one_concept_note():
    import ast

    long = []
    for path in sorted((REPO / "src" / "hhh_bench").rglob("*.py")):
        text = path.read_text()
        if text.count("\n") <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "One concept: " not in doc:
            long.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not long, "over 600 lines without a 'One concept:' note: " + ", ".join(long)
