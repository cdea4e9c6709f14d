"""The console of a run: one line per job, one live progress line on a terminal, everything else
in the run's log file (docs/console.md).

One concept: the console of a run (job lines, the live line, the log file).

What goes where, by ``console.verbosity`` (``hhh-bench -v`` raises it to 2):

- stdout: the log file's path (first line); one line per job, ``[k/N] stage name: ran 12.3 s |
  1:05 elapsed, ETA 3:40`` (or ``cached``); the few events a user must see (a stage computed
  first because the asked one needs it, a cached output recomputed); the cache summary; the
  results table; the answer, last. On a terminal (and not in CI), one live line below them,
  redrawn in place: the job and step running, elapsed, ETA. Never a carriage return otherwise.
- stderr: errors, and hhh-bench's own warnings.
- the log file (Hydra's ``<root>/hydra/<time>/cli.log``; ``<root>/logs/<time>.log`` where Hydra
  writes none): every console line, hhh-bench's INFO lines, the libraries' logs and warnings,
  what they print, and the final state of each of their progress bars (one line, no redraws).

Verbosity: 0 the table and the answer only (and errors, warnings); 1 (default) the above; 2 also
hhh-bench's INFO lines on the console; 3 also the libraries' own output, their progress bars
included, as they write it (nothing is redirected).

Outside :func:`session` (a notebook, a test calling :func:`hhh_bench.pipeline.run`), the lines go
to the current ``sys.stdout`` and nothing is redirected. Standard library only, no hhh_bench
imports: every layer may print through it.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import io
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

QUIET, NORMAL, VERBOSE, EVERYTHING = 0, 1, 2, 3
PROGRESS = ("auto", "always", "never")
log = logging.getLogger("hhh_bench.core.console")
"""Every console line is also logged here (to the log file only, never echoed)."""

LIBRARY_LOGGERS = (
    "py.warnings", "transformers", "datasets", "lm_eval", "lm-eval", "accelerate", "trl", "peft",
    "torch", "huggingface_hub", "urllib3", "filelock", "wandb", "absl", "nltk", "sqlitedict",
)  # fmt: skip


def in_ci() -> bool:
    """Whether a CI service runs us (``CI`` set to anything but ``0``/``false``/empty)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def clock(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``."""
    s = int(round(max(seconds, 0.0)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Job:
    """One job of a run: a stage's unit of work (a training and its evaluations, one merge
    method's search, ...), made of the cached stage runs (steps) it calls."""

    stage: str
    name: str = ""
    started: float = field(default_factory=time.time)
    ran: int = 0
    reused: int = 0
    notes: list[str] = field(default_factory=list)
    doing: str = ""
    """What it does now (a configuration of a search): the live line only."""

    @property
    def label(self) -> str:
        return f"{self.stage} {self.name}".strip()


@dataclass
class _State:
    verbosity: int = NORMAL
    live: bool = False
    out: TextIO | None = None  # None: sys.stdout at each write
    err: TextIO | None = None
    total: int | None = None
    planned: list[tuple[str, str]] = field(default_factory=list)
    done: int = 0
    t0: float = field(default_factory=time.time)
    seconds: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    finished: list[tuple[str, str]] = field(default_factory=list)
    job: Job | None = None
    step: str = ""
    step_started: float = 0.0
    shown: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)


_S = _State()


def _out() -> TextIO:
    return _S.out or sys.stdout


def _err() -> TextIO:
    return _S.err or sys.stderr


def subprocess_streams() -> tuple[Any, Any]:
    """The console's own stdout and stderr (not the log file the process's are pointed at) for a
    subprocess to write its console lines to; None for one without a file descriptor (a test's
    captured stream): the subprocess then inherits the process's."""

    def fd(stream: TextIO) -> TextIO | None:
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            return None
        stream.flush()
        return stream

    return fd(_out()), fd(_err())


def reset() -> None:
    """Forget the jobs and the plan (a new run; the stream settings are kept)."""
    with _S.lock:
        _S.total, _S.planned, _S.done, _S.t0 = None, [], 0, time.time()
        _S.seconds, _S.finished, _S.job, _S.step = {}, [], None, ""


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Nothing printed on the console inside (``hhh-bench plan``'s dry run of the stages, a
    lookup of what is cached), and no job counted: the ``[k/N]`` lines after it go on from
    where they were; the log file still gets every line."""
    with _S.lock:
        saved, _S.verbosity = _S.verbosity, -1
        counted = (_S.done, list(_S.finished), dict(_S.seconds))
    try:
        yield
    finally:
        with _S.lock:
            _S.verbosity = saved
            _S.done, _S.finished, _S.seconds = counted


def plan(jobs: Sequence[tuple[str, str]]) -> None:
    """The jobs (``(stage, name)``) this run will print, in any order: ``N`` of ``[k/N]`` and
    what the ETA adds up (:func:`_eta`)."""
    with _S.lock:
        _S.planned, _S.total, _S.t0 = list(jobs), len(jobs), time.time()


# ---------------------------------------------------------------------------------------------
# writing


def _write(stream: TextIO, text: str) -> None:
    with _S.lock:
        _clear()
        try:
            stream.write(text + "\n")
            stream.flush()
        except BrokenPipeError:  # `hhh-bench ... | head`: the reader left; the run goes on,
            _gone(stream)  # its lines still in the log file
            return
        _draw()


def _gone(stream: TextIO) -> None:
    """A console stream whose reader left (a closed pipe): written to ``os.devnull`` from now on."""
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the run
    if stream is _out():
        _S.out = devnull
    if stream is _err():
        _S.err = devnull


def say(text: str = "", *, level: int = NORMAL) -> None:
    """A line (or lines) for the user on stdout, shown from ``console.verbosity >= level``; every
    line also goes to the log file."""
    if text:
        log.info("%s", text)
    if _S.verbosity >= level:
        _write(_out(), text)


def error(text: str) -> None:
    """An error line on stderr (and in the log file)."""
    log.error("%s", text)
    _write(_err(), text)


def _counter() -> str:
    k = _S.done + 1
    if _S.total is None:
        return f"[{k}]"
    n = max(_S.total, k)
    return f"[{k:>{len(str(n))}}/{n}]"


def _kind(job: tuple[str, str]) -> tuple[str, str]:
    """A job without its seed (``train specialists, seed 1`` -> ``train specialists``): what
    the jobs of every seed share."""
    return job[0], re.sub(r"(,\s*)?\bseed \d+$", "", job[1])


def _eta() -> float | None:
    """Seconds left: each planned job not yet finished at the mean time of the jobs of its kind
    (:func:`_kind`) run so far, else of its stage, else of every job but data and report runs
    (None: none of those ran yet); the running job less its time so far."""
    if _S.total is None:
        return None
    left = list(_S.planned)
    for j in _S.finished:
        if j in left:
            left.remove(j)
    by_kind: dict[tuple[str, str], list[float]] = {}
    by_stage: dict[str, list[float]] = {}
    for job, v in _S.seconds.items():
        by_kind.setdefault(_kind(job), []).extend(v)
        by_stage.setdefault(job[0], []).extend(v)
    work = [s for stage, v in by_stage.items() if stage not in ("data", "report") for s in v]
    if not work:
        return None
    mean = sum(work) / len(work)
    running = (_S.job.stage, _S.job.name) if _S.job is not None else None
    total = 0.0
    for job in left:
        same = by_kind.get(_kind(job)) or by_stage.get(job[0])
        guess = sum(same) / len(same) if same else mean
        if job == running:
            guess, running = max(guess - (time.time() - _S.job.started), 0.0), None
        total += guess
    return total


def _timing() -> str:
    elapsed = time.time() - _S.t0
    eta = _eta()
    finished = _S.total is not None and _S.done >= _S.total
    if eta is None or finished:
        return f"{clock(elapsed)} elapsed"
    return f"{clock(elapsed)} elapsed, ETA {clock(eta)}"


def _finish(stage: str, name: str, label: str, outcome: str, seconds: float, ran: bool) -> None:
    with _S.lock:
        line = f"{_counter()} {label}: {outcome} | "
        _S.done += 1
        _S.finished.append((stage, name))
        if ran:
            _S.seconds.setdefault((stage, name), []).append(seconds)
        say(line + _timing())


# ---------------------------------------------------------------------------------------------
# jobs and steps


@contextlib.contextmanager
def job(stage: str, name: str = "") -> Iterator[Job]:
    """One job: its steps (cached stage runs) are counted, not printed, and one line says how it
    went when it ends (``ran 12.3 s`` or ``cached``, its notes, elapsed, ETA). A job inside a job
    is part of the outer one."""
    if _S.job is not None:
        yield _S.job
        return
    j = Job(stage, name)
    with _S.lock:
        _S.job = j
        _draw()
    try:
        yield j
    finally:
        with _S.lock:
            _S.job = None
    seconds = time.time() - j.started
    outcome = f"ran {seconds:.1f} s" if j.ran else "cached"  # cached: every step reused
    outcome += "".join(f"; {n}" for n in j.notes)
    _finish(stage, name, j.label, outcome, seconds, ran=j.ran > 0)


def note(text: str) -> None:
    """Add ``text`` to the current job's line (the configuration a search chose, ...)."""
    if _S.job is not None:
        _S.job.notes.append(text)
    else:
        say(text)


def detail(text: str) -> None:
    """What the current job does now (a configuration of a search): the live line only."""
    with _S.lock:
        if _S.job is not None:
            _S.job.doing = text
        _draw()


def step_started(what: str) -> None:
    """A cached stage run starts computing (the live line shows it)."""
    with _S.lock:
        _S.step, _S.step_started = what, time.time()
        _draw()


def step_done(
    what: str, *, cached: bool, seconds: float | None = None, where: str | Path | None = None,
    note: str = "",
) -> None:  # fmt: skip
    """A cached stage run finished (``cached``: reused). Inside a job it counts towards the job;
    alone (a single stage asked for) it is a job of its own and prints its line. ``seconds``:
    None, the time since :func:`step_started` of ``what`` (else 0)."""
    with _S.lock:
        if seconds is None:
            seconds = time.time() - _S.step_started if _S.step == what else 0.0
        _S.step = ""
        j = _S.job
        if j is not None:
            if cached:
                j.reused += 1
            else:
                j.ran += 1
            _draw()
            return
    outcome = "cached" if cached else f"ran {seconds:.1f} s"
    extra = ", ".join(str(x) for x in (note, where) if x)
    stage, _, name = what.partition(" ")
    _finish(stage, name, what, outcome + (f", {extra}" if extra else ""), seconds, not cached)


def params_text(params: Mapping[str, Any]) -> str:
    """Settings in a line: ``density=0.5 scaling=1``; a mapping value (shares) as ``helpful
    0.5/honest 0.25/harmless 0.25``, a list as ``[0.75,1.5,0.75]``."""

    def one(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    def value(v: Any) -> str:
        if isinstance(v, Mapping):
            return "/".join(f"{k} {one(x)}" for k, x in v.items())
        if isinstance(v, list | tuple):
            return "[" + ",".join(one(x) for x in v) + "]"
        return one(v)

    return " ".join(f"{k}={value(v)}" for k, v in params.items())


# ---------------------------------------------------------------------------------------------
# the live line (a terminal only)


def _status() -> str:
    j = _S.job
    parts = [_counter()]
    if j is not None:
        parts.append(j.label)
        if j.doing:
            parts.append(j.doing)
    if _S.step:
        parts.append(f"{_S.step} {clock(time.time() - _S.step_started)}")
    return " · ".join([" ".join(parts[:2]), *parts[2:]]) + f" · {_timing()}"


def _draw() -> None:
    if not _S.live or (_S.job is None and not _S.step):
        return
    width = max(shutil.get_terminal_size((100, 20)).columns - 1, 20)
    out = _out()
    out.write("\r\x1b[K" + _status()[:width])
    out.flush()
    _S.shown = True


def _clear() -> None:
    if _S.shown:
        out = _out()
        out.write("\r\x1b[K")
        out.flush()
        _S.shown = False


def _ticker(stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with _S.lock:
            _draw()


# ---------------------------------------------------------------------------------------------
# the session: streams, handlers, the log file

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class LogStream(io.TextIOBase):
    """A text stream that writes each finished line to a logger (the log file): of a line
    redrawn with carriage returns (a progress bar), only what was last drawn; control sequences
    dropped. What libraries print or draw while stdout/stderr are replaced by it."""

    def __init__(self, name: str, real: TextIO, fd: int | None = None) -> None:
        super().__init__()
        self._log = logging.getLogger(name)
        self._real = real
        self._fd = fd
        self._buf = ""
        self._busy = threading.local()

    def write(self, s: str) -> int:
        if getattr(self._busy, "on", False):  # a handler failing while it logs this
            return len(s)
        with _S.lock:
            self._buf += s
            *lines, self._buf = self._buf.split("\n")
            if "\r" in self._buf:  # keep the last redraw only
                *done, last = self._buf.split("\r")
                drawn = [p for p in done if p.strip()][-1:]
                self._buf = "\r".join(["", *drawn, last])
        for line in lines:
            self._emit(line)
        return len(s)

    def _emit(self, line: str) -> None:
        drawn = [p for p in _ANSI.sub("", line).split("\r") if p.strip()]
        if drawn:
            self._busy.on = True
            try:
                self._log.info("%s", drawn[-1].rstrip())
            finally:
                self._busy.on = False

    def flush(self) -> None:
        return None

    def close_line(self) -> None:
        """Log what is left of an unfinished line (at the end of the session)."""
        rest, self._buf = self._buf, ""
        self._emit(rest)

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        """The file descriptor this stream stands for (1 or 2, pointed at the log file), else
        the real stream's."""
        return self._fd if self._fd is not None else self._real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._real, "encoding", "utf-8") or "utf-8"


class ConsoleHandler(logging.Handler):
    """Log records on the console, by verbosity: hhh-bench's warnings and errors (stderr); from
    2 also its INFO lines (stdout); from 3 every record. Console lines (``hhh_bench.core.console``)
    are never echoed."""

    def __init__(self, verbosity: int) -> None:
        super().__init__(logging.INFO)
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == log.name:
            return False
        if self.verbosity >= EVERYTHING:
            return True
        ours = record.name == "hhh_bench" or record.name.startswith("hhh_bench.")
        return ours and (record.levelno >= logging.WARNING or self.verbosity >= VERBOSE)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                _write(_err(), f"{record.levelname.lower()}: {msg}")
            elif record.name.startswith("hhh_bench"):
                _write(_out(), f"  {msg}")
            else:
                _write(_out(), f"  [{record.name}] {msg}")
        except Exception:  # pragma: no cover - logging's own policy
            self.handleError(record)


def quiet_libraries(files: Sequence[logging.Handler]) -> None:
    """Library logs and Python warnings to the log file only (``files``), transformers' own
    handler and weight-loading bars off."""
    import warnings

    logging.captureWarnings(True)
    warnings.simplefilter("default")
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers = list(files)
        lg.propagate = False
    _on_import("transformers", _quiet_transformers)
    # datasets' map/filter bars: of no use in a log either (read when datasets is imported)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _quiet_transformers(_module: Any) -> None:
    """transformers' own console handler and its weight-loading bars (tiny models) off."""
    from transformers.utils import logging as tlog

    tlog.disable_default_handler()
    tlog.disable_progress_bar()


class _ThenLoader(importlib.abc.Loader):
    """A module's own loader, with ``then`` called on the module once it has run."""

    def __init__(self, loader: Any, then: Callable[[Any], None]) -> None:
        self._loader, self._then = loader, then

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        with contextlib.suppress(Exception):  # quieting a library never fails its import
            self._then(sys.modules.get(module.__name__, module))

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self._loader, name)


class _OnImport(importlib.abc.MetaPathFinder):
    """Calls ``then`` on module ``name`` when it is first imported (:func:`_on_import`)."""

    def __init__(self, name: str, then: Callable[[Any], None]) -> None:
        self.name, self.then = name, then

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        _drop_import_hooks([self])
        spec = importlib.util.find_spec(fullname)  # the finders behind this one
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


def _on_import(name: str, then: Callable[[Any], None]) -> None:
    """``then(module)`` now if ``name`` is imported, else right after its first import in this
    session (a cached rerun never imports transformers, whose import alone took ~1 s of every
    command just to be silenced). :func:`session` drops a hook that was not used."""
    if name in sys.modules:
        with contextlib.suppress(Exception):
            then(sys.modules[name])
        return
    _drop_import_hooks([h for h in sys.meta_path if isinstance(h, _OnImport) and h.name == name])
    sys.meta_path.insert(0, _OnImport(name, then))


def _drop_import_hooks(hooks: Sequence[Any] | None = None) -> None:
    """Remove ``hooks`` (all of :func:`_on_import`'s when None) from ``sys.meta_path``."""
    for h in [h for h in sys.meta_path if isinstance(h, _OnImport)] if hooks is None else hooks:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(h)


def _log_file(root: str | Path | None) -> tuple[list[logging.FileHandler], logging.Handler | None]:
    """The root logger's file handlers (Hydra's job log), or a new one at
    ``<root>/logs/<time>.log`` (returned second, to be removed at the end)."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if files or root is None:
        return files, None
    path = Path(root) / "logs" / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    return [h], h


@contextlib.contextmanager
def _handlers(verbosity: int, root: str | Path | None) -> Iterator[list[logging.FileHandler]]:
    """The root logger for a session: our console handler in place of the stream handlers
    (Hydra's console handler printed every INFO line a second time), a log file of our own
    where there is none. Yields the log files."""
    rootlog = logging.getLogger()
    level = rootlog.level
    files, own = _log_file(root)
    if own is not None:
        rootlog.addHandler(own)
        rootlog.setLevel(min(level or logging.INFO, logging.INFO))
    streams = [
        h for h in rootlog.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]  # fmt: skip
    for h in streams:
        rootlog.removeHandler(h)
    handler = ConsoleHandler(verbosity)
    rootlog.addHandler(handler)
    try:
        yield files
    finally:
        rootlog.removeHandler(handler)
        for h in streams:
            rootlog.addHandler(h)
        if own is not None:
            rootlog.removeHandler(own)
            own.close()
            rootlog.setLevel(level)


def _real_fds() -> bool:
    """Whether ``sys.stdout``/``sys.stderr`` are the process's file descriptors 1 and 2 (the
    command; not a test's captured streams)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextlib.contextmanager
def _redirect(path: Path | None) -> Iterator[tuple[TextIO, TextIO]]:
    """``sys.stdout``/``sys.stderr`` replaced by :class:`LogStream` (what Python code prints or
    draws: one line each in the log file) and, for the command, file descriptors 1 and 2 pointed
    at the log file (what subprocesses and C code write, as is: lm-eval's ``git describe``
    outside a repository). Yields the console's own streams (the real stdout and stderr)."""
    real_out = orig_out = sys.stdout
    real_err = orig_err = sys.stderr
    fds = path is not None and _real_fds()
    saved: list[int] = []
    if fds:
        real_out.flush()
        real_err.flush()
        saved = [os.dup(1), os.dup(2)]
        real_out = open(saved[0], "w", buffering=1, encoding=real_out.encoding,  # noqa: SIM115
                        errors=real_out.errors, closefd=False)  # fmt: skip
        real_err = open(saved[1], "w", buffering=1, encoding=real_err.encoding,  # noqa: SIM115
                        errors=real_err.errors, closefd=False)  # fmt: skip
        logfd = os.open(str(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(logfd, 1)
        os.dup2(logfd, 2)
        os.close(logfd)
    out = LogStream("stdout", real_out, 1 if fds else None)
    err = LogStream("stderr", real_err, 2 if fds else None)
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield real_out, real_err
    finally:
        out.close_line()
        err.close_line()
        if fds:
            for stream in (real_out, real_err):
                with contextlib.suppress(BrokenPipeError):  # a reader that left (`| head`)
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for stream in (real_out, real_err):
                with contextlib.suppress(BrokenPipeError):
                    stream.close()
            for fd in saved:
                os.close(fd)
        sys.stdout, sys.stderr = orig_out, orig_err


@contextlib.contextmanager
def session(
    *, verbosity: int = NORMAL, progress: str = "auto", root: str | Path | None = None
) -> Iterator[Path | None]:
    """The console of one run (the ``hhh-bench`` command; one Hydra job): our console handler
    in place of Hydra's, library logs to the log file and, below verbosity 3, whatever the
    libraries print or draw too (:func:`_redirect`). ``progress``: the live line ``auto``
    (stdout a terminal, not CI) | ``always`` | ``never``. Yields the log file's path (None: no
    log file). Everything is put back on exit."""
    if verbosity not in (QUIET, NORMAL, VERBOSE, EVERYTHING):
        raise ValueError(f"console.verbosity={verbosity!r}: use 0, 1, 2 or 3")
    if progress not in PROGRESS:
        raise ValueError(f"console.progress={progress!r}: use one of {list(PROGRESS)}")
    with contextlib.ExitStack() as stack:
        stack.callback(_restore, (_S.verbosity, _S.live, _S.out, _S.err), dict(os.environ))
        stack.callback(_drop_import_hooks)
        files = stack.enter_context(_handlers(verbosity, root))
        path = Path(files[0].baseFilename) if files else None
        if verbosity < EVERYTHING:
            quiet_libraries(files)
            real_out, real_err = stack.enter_context(_redirect(path))
        else:
            real_out, real_err = sys.stdout, sys.stderr
        tty = bool(getattr(real_out, "isatty", lambda: False)())
        live = progress == "always" or (
            progress == "auto" and tty and not in_ci() and os.environ.get("TERM") != "dumb"
        )
        _S.verbosity, _S.live, _S.out, _S.err = verbosity, live, real_out, real_err
        reset()
        stop = threading.Event()
        if live:
            ticker = threading.Thread(target=_ticker, args=(stop,), daemon=True)
            ticker.start()
            stack.callback(ticker.join, 2)
        stack.callback(stop.set)
        if path is not None:
            say(f"log file: {path} (details, library output; -v shows more here)")
        try:
            yield path
        except (Exception, KeyboardInterrupt):
            log.error("the run stopped", exc_info=True)  # the traceback, in the log file
            raise
        finally:
            with _S.lock:
                _clear()
                _S.live = False


def _restore(state: tuple, env: dict[str, str]) -> None:
    _S.verbosity, _S.live, _S.out, _S.err = state
    if "HF_DATASETS_DISABLE_PROGRESS_BARS" not in env:
        os.environ.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
