"""Small shared helpers: JSON/JSONL files that survive crashes, environment facts, process rank."""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import platform
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger("lightreasoner")
F = TypeVar("F", bound=Callable[..., Any])


class InputError(ValueError):
    """Bad user input (a file, a line, an option); the message names where and what to do."""


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "accelerate", "peft", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) so that a reader sees the old file or the whole new one, never half: a temp
    file beside it, fsynced, renamed over it, and the folder fsynced (the rename survives a power cut)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, so the names created or renamed in it are durable (a no-op where folders can't be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically and durably (see :func:`atomic_write`)."""
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Replace a JSONL file by ``records``, atomically and durably (see :func:`atomic_write`)."""
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | Path) -> Any:
    """A JSON file we or the user wrote; a bad one is an :class:`InputError` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); is it the right file?") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); remove the file to start that step over, "
                         f"or fix it") from None


def _flag(name: str) -> str:
    from .config import flag  # (config imports nothing of ours at import time; utils stays importable alone)

    return flag(name)


def _decode(raw: bytes, path: str | Path, n: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line); re-save the file as UTF-8, "
                         f"or fix or remove the line") from None


def iter_jsonl(path: str | Path, *, skip_bad: bool = False, stats: dict | None = None,
               skippable: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; a malformed line (bad JSON or not UTF-8) raises
    :class:`InputError` naming the file and line (and, when the command can, ``skippable``, the flag that skips
    it), or (``skip_bad``) is skipped and counted in ``stats['bad_rows']``."""
    with (gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")) as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = _decode(raw, path, n)
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    skip = f", or pass {_flag('skip_bad_rows')}" if skippable else ""
                    raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the "
                                     f"line{skip}") from None
            except InputError as e:
                if not skip_bad:
                    raise
                if stats is not None:
                    stats["bad_rows"] = stats.get("bad_rows", 0) + 1
                logger.warning("skipped: %s", str(e).split(";")[0])
                continue
            yield n, obj


def _complete_line(raw: bytes) -> Any:
    """The record of one line we wrote, or :data:`_TORN` when it is not a whole JSON value."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _TORN


_TORN = object()


def read_complete_jsonl(path: str | Path) -> list[Any]:
    """Records of a JSONL file we appended to ourselves. A torn last line (a kill mid-write) is dropped; a last
    line that is whole but lost only its newline is kept (:func:`truncate_torn_tail` agrees, so a resumed run
    neither drops nor reorders it)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, raw in enumerate(lines):
        record = _complete_line(raw)
        if record is _TORN:
            if i == len(lines) - 1:
                logger.warning("%s: dropping a torn last line left by an interrupted run", path)
                break
            raise InputError(f"{path}:{i + 1}: not valid JSON; the file is corrupt, remove it to start over")
        out.append(record)
    return out


def truncate_torn_tail(path: str | Path) -> None:
    """Make the file end on a line boundary before appending: a torn partial last line is cut, a whole last
    record that only lost its newline gets the newline back (so it is kept, as :func:`read_complete_jsonl`
    counts it)."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        if _complete_line(data[cut:]) is _TORN:
            fh.truncate(cut)
        else:
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".gz", ".gguf", ".safetensors", ".bin", ".csv", ".txt", ".yaml")


def looks_like_hub_id(spec: str, *, need_org: bool = False) -> bool:
    """Whether a spec that exists nowhere on disk was meant as a hub id (``name`` or ``org/name``) rather than a
    mistyped local path: not path-like (``./``, ``/``, ``~``, deeper folders, file suffixes) and not under a
    folder that exists here (``runs/merged`` with a ``runs/``)."""
    p = Path(spec).expanduser()
    return (bool(_HUB_ID.match(spec)) and (not need_org or "/" in spec) and not spec.lower().endswith(_FILE_SUFFIXES)
            and not (len(p.parts) > 1 and p.parent.is_dir()))


class JsonlAppender:
    """Append records to a JSONL file, flushed and fsynced per :meth:`write_many` so a kill loses no batch."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_torn_tail(self.path)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write_many(self, records: list[Any]) -> None:
        self._fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def lock_path(output: str | Path, rank: int = 0) -> Path:
    """The lock file of an output (a hidden file beside it; one per rank under a launcher)."""
    output = Path(output)
    return output.with_name(f".{output.name}.lock" if rank == 0 else f".{output.name}.rank{rank}.lock")


def check_output_kind(output: str | Path, kind: str, flag: str = "--output") -> None:
    """An output that exists must be of the kind the stage writes (``"file"`` or ``"folder"``)."""
    output = Path(output)
    if kind == "file" and output.is_dir():
        raise InputError(f"{flag} {output} is a folder; give a file path")
    if kind == "folder" and output.exists() and not output.is_dir():
        raise InputError(f"{flag} {output} is a file; give a folder path")


@contextmanager
def output_lock(output: str | Path, command: str, kind: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` (a file or folder) while a stage writes it: one writer per output.

    A second process that asks for the same output stops at once with an :class:`InputError` naming the process
    that holds it. The lock is an ``flock`` on a hidden file beside the output, which the kernel releases when its
    holder dies, so a killed run never leaves a stale lock. Under a launcher each rank locks its own lock file
    (rank 0 the plain one), so a second launch collides rank by rank and a single process collides with rank 0.
    Creating the lock file also proves, before any work, that the output's folder is writable; ``kind``
    (``"file"``/``"folder"``) also checks that an existing output is of that kind.
    """
    if kind is not None:
        check_output_kind(output, kind)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock (Windows): run unguarded
        logger.debug("no fcntl: %s is not locked", output)
        yield
        return
    path = lock_path(output, dist_info().rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise InputError(f"cannot write next to {output} ({e.strerror}); choose an --output in a writable folder") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise InputError(f"{output} is being written by {holder}; wait for it to finish (or stop it), or "
                             f"choose another --output") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"`lightreasoner {command}` (pid {os.getpid()} on {platform.node()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def writes_output(command: str, kind: str, field: str = "output", single_process: bool = False
                  ) -> Callable[[F], F]:
    """Decorate a stage's ``main(cfg)`` to hold :func:`output_lock` on ``cfg.<field>`` (when set) throughout;
    ``single_process``: first refuse to run under a launcher (:func:`require_single_process`), before any file
    is touched."""
    def decorate(main: F) -> F:
        @functools.wraps(main)
        def locked(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            if single_process:
                require_single_process(command)
            output = getattr(cfg, field, None)
            if output is None:
                return main(cfg, *args, **kwargs)
            with output_lock(output, command, kind):
                return main(cfg, *args, **kwargs)
        return locked  # type: ignore[return-value]
    return decorate


def environment_info() -> dict[str, Any]:
    """Versions and hardware, saved in every output folder."""
    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("torch", "transformers", "peft", "accelerate", "lightreasoner"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # pragma: no cover - optional
            pass
    try:
        import torch
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{os.cpu_count()}"
        info["torch_threads"] = torch.get_num_threads()
        # Kernels (so the low bits of every bf16 result) follow the processor: say which one made this output.
        info["cpu"] = cpu_model()
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover
        pass
    return info


def cpu_model() -> str:
    """The processor's model name and its matrix instruction sets (``amx_bf16``, ``avx512_bf16``) where known."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "unknown")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags]
    return f"{name} ({', '.join(isa) or 'no avx2'})"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank facts from the launcher's environment (accelerate launch and torchrun both set these)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))


def require_single_process(command: str) -> None:
    """Stop a command that must run in one process when a launcher started several (it would duplicate work
    and write the same files from every rank)."""
    world = dist_info().world_size
    if world > 1:
        raise InputError(f"`lightreasoner {command}` runs in one process, but it was launched with WORLD_SIZE="
                         f"{world}; use `accelerate launch`/`torchrun` for `sample`, `train`, `eval` and `sft` (they "
                         f"share the work across processes) and run `{command}` without a launcher (one process, one GPU)")


class Stopwatch:
    """Accumulates named wall-clock spans: ``with sw('generation'): ...``; ``sw.totals`` in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0
