"""Small shared helpers: JSON/JSONL files that survive crashes, environment facts, process rank."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

logger = logging.getLogger("lightreasoner")


class InputError(ValueError):
    """Bad user input (a file, a line, an option); the message names where and what to do."""


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("transformers", "accelerate", "peft", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (a reader never sees half a file; a crash leaves the old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def iter_jsonl(path: str | Path, *, skip_bad: bool = False, stats: dict | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` for each non-blank line; a malformed line raises :class:`InputError`
    naming the file and line, or (``skip_bad``) is skipped and counted in ``stats['bad_rows']``."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                if skip_bad:
                    if stats is not None:
                        stats["bad_rows"] = stats.get("bad_rows", 0) + 1
                    logger.warning("%s:%d: skipped, not valid JSON (%s)", path, n, e.msg)
                    continue
                raise InputError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the "
                                 f"line, or pass --skip-bad-rows") from None


def read_complete_jsonl(path: str | Path) -> list[Any]:
    """Records of a JSONL file we appended to ourselves; a torn last line (a kill mid-write) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                logger.warning("%s: dropping a torn last line left by an interrupted run", path)
                break
            raise InputError(f"{path}:{i + 1}: not valid JSON; the file is corrupt, remove it to start over")
    return out


def truncate_torn_tail(path: str | Path) -> None:
    """Cut a partial last line (no trailing newline) so appends start on a fresh line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


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
    except Exception:  # pragma: no cover
        pass
    return info


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
                         f"{world}; use `accelerate launch`/`torchrun` for `sample` and `train` (they share the work "
                         f"across processes) and run `{command}` without a launcher (one process, one GPU)")


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
