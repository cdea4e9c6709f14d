"""A build hook, nothing else (the project's metadata is in pyproject.toml): the Hydra configs live
in the top-level ``conf/`` (docs/architecture.md), and the wheel ships them inside the package as
``hhh_bench/conf/``, where :func:`hhh_bench.core.paths.conf_dir` finds them in an installed copy."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class BuildPyWithConf(build_py):
    """``build_py`` that also copies ``conf/**/*.yaml`` into ``<build_lib>/hhh_bench/conf/``."""

    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "hhh_bench" / "conf"
        for src in sorted(CONF.rglob("*.yaml")):
            dest = target / src.relative_to(CONF)
            self.mkpath(str(dest.parent))
            self.copy_file(str(src), str(dest))


setup(cmdclass={"build_py": BuildPyWithConf})
