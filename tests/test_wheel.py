"""The built wheel carries everything a run needs (configs, task YAMLs): installed into a fresh
virtualenv and run from an empty folder outside the repository, ``hhh-bench`` composes the toy
experiment and writes the data stage.

The fresh virtualenv gets hhh-bench from the wheel only; its dependencies come from the test's own
environment through a ``.pth`` line (installing torch again would take minutes). That line adds
the site-packages folder as a plain path, so the editable install living there is not active:
``hhh_bench`` can only be imported from the wheel (checked below)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO


@pytest.mark.e2e
def test_installed_wheel_runs_outside_the_repository(tmp_path):
    src = tmp_path / "src_copy"  # build from a copy: the build writes build/ and egg-info
    for d in ("src", "conf"):  # conf/ is top level; setup.py's hook puts it into the wheel
        shutil.copytree(
            REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    for f in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(REPO / f, src / f)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(wheels),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("hhh_bench-*.whl")
    venv = tmp_path / "venv"
    # no pip of its own (ensurepip: ~4 s): this environment's pip installs into it (--python)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=300)  # fmt: skip
    py = venv / "bin" / "python"
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (venv / "lib" / purelib.split("/lib/")[-1] / "_test_deps.pth").write_text(
        "\n".join(dict.fromkeys(deps)) + "\n"
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)], check=True, timeout=300,
    )  # fmt: skip

    work = tmp_path / "elsewhere"  # an empty folder outside the repository
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HHH_BENCH_CONF")}
    where = subprocess.run(
        [py, "-c", "import hhh_bench, sys; print(hhh_bench.__file__)"],
        cwd=work, env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert str(venv) in where and str(REPO) not in where, where
    exe = venv / "bin" / "hhh-bench"
    cfg = subprocess.run(
        [exe, "--cfg", "job", "experiment=toy3h"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cfg.returncode == 0, cfg.stderr
    assert "merge_grid:" in cfg.stdout and "world:" in cfg.stdout
    # every shipped experiment composes from the installed wheel's conf/, in one process
    experiments = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
    compose_all = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from hhh_bench.core.paths import conf_dir\n"
        "d = conf_dir()\n"
        "assert str(d).startswith(sys.prefix), d\n"
        "for e in sys.argv[1:]:\n"
        "    with initialize_config_dir(config_dir=str(d), version_base='1.3'):\n"
        "        c = compose(config_name='config', overrides=[f'experiment={e}'])\n"
        "    print(e, c.model.name, flush=True)\n"
    )
    composed = subprocess.run(
        [py, "-c", compose_all, *experiments], cwd=work, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert composed.returncode == 0, composed.stderr[-3000:]
    assert [line.split()[0] for line in composed.stdout.splitlines()] == experiments
    small = ["data.world.n_known.train=10", "data.world.n_known.validation=4", "data.world.n_known.test=4",
             "data.world.pairs_per_dimension=20", "data.world.eval_items_per_kind=6"]  # fmt: skip
    data = subprocess.run(
        [exe, "stage=data", "logger=none", "root=runs/w", *small], cwd=work, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert data.returncode == 0, data.stderr[-3000:]
    manifests = list((work / "runs" / "w" / "data").glob("*/manifest.json"))
    assert len(manifests) == 1 and (manifests[0].parent / "prefs" / "helpful_train.jsonl").is_file()
