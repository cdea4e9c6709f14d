"""requirements.lock agrees with pyproject.toml and the Makefile (no network, well under 2 s).

``make demo`` and ``make test`` install torch first (the Makefile's TORCH_SPEC), then the lock with
``pip install --require-hashes``, then the project with ``--no-deps``: a requirement of
pyproject.toml that the lock does not satisfy would go missing or unchecked, so it fails here
first. ``make lock`` rewrites the lock (docs/reproduce.md).
"""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO

LOCK = REPO / "requirements.lock"
# torch's build (CPU, CUDA) is the Makefile's TORCH_SPEC: its line pins the version, with no hashes
UNHASHED = {"torch"}
_HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def parse_lock(text: str) -> dict[str, dict]:
    """{canonical name: {"line", "version", "hashes", "via"}} of a pip-compile lock file."""
    entries: dict[str, dict] = {}
    current = None
    logical: list[str] = []
    for raw in text.splitlines() + [""]:
        if logical and not logical[-1].endswith("\\"):
            joined = " ".join(part.rstrip("\\").strip() for part in logical)
            logical = []
            spec, *hashes = joined.split(" --hash=")
            spec = re.sub(r"\s+#.*$", "", spec).strip()
            req = Requirement(spec)
            name = canonicalize_name(req.name)
            assert name not in entries, f"{name} is pinned twice in {LOCK.name}"
            pins = [s for s in req.specifier if s.operator == "=="]
            assert len(pins) == 1 and len(req.specifier) == 1, f"not pinned with ==: {spec}"
            current = entries[name] = {
                "line": spec,
                "version": Version(pins[0].version),
                "hashes": [h for h in hashes if _HASH.fullmatch("--hash=" + h.strip())],
                "bad_hashes": [h for h in hashes if not _HASH.fullmatch("--hash=" + h.strip())],
                "via": set(),
            }
        if not raw.strip():
            continue
        if raw.startswith((" ", "\t")) and not raw.strip().startswith("--hash"):
            # pip-compile's annotation: "# via x" or "#   x" under "# via"
            m = re.match(r"#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*$", raw.strip())
            if current is not None and m and m.group(1) != "via":
                current["via"].add(canonicalize_name(m.group(1)))
            continue
        if raw.startswith("#"):
            continue
        assert logical or not raw[0].isspace(), f"a line outside any requirement: {raw.strip()}"
        logical.append(raw)
    return entries


@pytest.fixture(scope="module")
def lock() -> dict[str, dict]:
    assert LOCK.is_file(), "requirements.lock is missing: `make lock` writes it"
    return parse_lock(LOCK.read_text())


def project_requirements() -> list[Requirement]:
    """The runtime dependencies and the dev extra of pyproject.toml (what the lock covers)."""
    import tomllib  # Python 3.11+, as the lock is

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(s) for s in specs]


def unsatisfied(lock: dict[str, dict], reqs: list[Requirement]) -> list[str]:
    out = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate():
            continue
        entry = lock.get(canonicalize_name(req.name))
        if entry is None:
            out.append(f"{req}: not in the lock")
        elif not req.specifier.contains(entry["version"], prereleases=True):
            out.append(f"{req}: the lock pins {entry['version']}")
    return out


def test_every_requirement_of_pyproject_is_satisfied_by_a_pin(lock):
    assert unsatisfied(lock, project_requirements()) == []


def test_every_line_is_pinned_and_hashed_but_torchs(lock):
    assert len(lock) > 50
    assert [n for n, e in lock.items() if e["bad_hashes"]] == []
    missing = sorted(n for n, e in lock.items() if not e["hashes"] and n not in UNHASHED)
    assert missing == [], f"lines without hashes: {missing}"
    for name in UNHASHED:
        assert lock[name]["hashes"] == [], f"{name}'s build is TORCH_SPEC's: its line has no hashes"
        assert lock[name]["version"].local is None, lock[name]["line"]


def test_torchs_pin_is_the_makefiles(lock):
    makefile = (REPO / "Makefile").read_text()
    m = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M)
    assert m and lock["torch"]["version"] == Version(m.group(1))
    assert re.search(r"^TORCH_SPEC \?= torch==\$\(TORCH_VERSION\)$", makefile, re.M)
    # the .venv recipe: torch first, then the lock with hashes, then the project alone; re-made
    # when the lock or pyproject.toml changes
    recipe = re.search(r"^\$\(STAMP\): (.*)\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe and set(recipe.group(1).split()) >= {"pyproject.toml", "$(LOCK)"}
    steps = recipe.group(2)
    torch_at = steps.index("$(TORCH_SPEC)")
    assert torch_at < steps.index("--require-hashes -r $(LOCK)") < steps.index("--no-deps -e .")
    assert "-e '.[dev]'" not in steps


def test_nothing_in_the_lock_is_unrequired(lock):
    """Every pin is reached from pyproject.toml through pip-compile's ``# via`` annotations."""
    roots = {canonicalize_name(r.name) for r in project_requirements()}
    reached = set()
    frontier = [n for n in lock if n in roots]
    while frontier:
        name = frontier.pop()
        if name in reached:
            continue
        reached.add(name)
        frontier += [n for n, e in lock.items() if name in e["via"] and n not in reached]
    assert sorted(set(lock) - reached) == []


def test_the_installed_packages_are_the_locks(lock):
    """In a venv built from the lock, every pin is what is installed, and every dependency of an
    installed locked package (torch's own excepted: TORCH_SPEC's) is locked and satisfied."""
    installed = {}
    for name in lock:
        try:
            installed[name] = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            installed[name] = None
    differ = {n: str(v) for n, v in installed.items() if v != lock[n]["version"]}
    torch = installed.get("torch")
    if torch is not None and Version(torch.public) == lock["torch"]["version"]:
        differ.pop("torch")  # 2.13.0+cpu is torch==2.13.0
    if differ:
        pytest.skip(f"this venv is not built from the lock ({len(differ)} differ, e.g. {differ})")
    problems = []
    for name in lock:
        if name in UNHASHED:
            continue
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            problems += unsatisfied(lock, [req])
    assert problems == []


def test_a_wrong_pin_is_caught():
    """The checks above can fail: a pin below pyproject.toml's range, and a line without hashes."""
    reqs = project_requirements()
    good = LOCK.read_text()
    bad = re.sub(r"^numpy==\S+", "numpy==1.26.4", good, flags=re.M)
    assert bad != good
    [problem] = unsatisfied(parse_lock(bad), reqs)
    assert problem.startswith("numpy") and problem.endswith("the lock pins 1.26.4")
    hashed = re.compile(r"^(tqdm==\S+) \\\n(?:\s+--hash=\S+ \\\n)*\s+--hash=\S+\n", re.M)
    unhashed = hashed.sub(r"\1\n", good)
    assert unhashed != good and parse_lock(unhashed)["tqdm"]["hashes"] == []
