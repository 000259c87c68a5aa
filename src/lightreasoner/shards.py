"""Sharing a stage's work across the processes of ``accelerate launch`` / ``torchrun``: who does which unit, where
each rank writes, how rank 0 waits for the others and puts their records back in order.

Used by ``sample``, ``eval`` and ``sft``. The rules:

- A unit (a problem, or a batch of problems) belongs to rank ``index % world_size`` (:func:`owner`,
  :func:`share`): a pure function of its index, so a record never depends on how many processes ran.
- Rank ``r`` appends its records to its shard ``<stem>.rank<r>.jsonl`` beside the output (:func:`shard_path`);
  a killed rank restarted with the same command reads its shard back and continues (:func:`written`). When its
  share is done it writes ``<stem>.rank<r>.done.json`` (:func:`mark_done`), naming the digest of the ids it was
  given, so a mark left by another selection or another world size is never taken for this one.
- Rank 0 claims the stage folder first; the others wait for its claim (:func:`wait_for_claim`). Rank 0 waits for
  every rank's mark (:func:`wait_for_marks`) and merges (:func:`merge_shards`): every record of the output and of
  every shard, each id once, in the units' order, written where a one-process run writes them; then the shards
  and marks are removed.

Waiting is on files (no process group), so a rank can be killed and restarted on its own. Each rank also takes its
share of the CPU cores (:func:`share_cores`) and, on GPUs, its own device (:func:`rank_device`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

from .utils import DistInfo, InputError, read_complete_jsonl, read_json, write_json, write_jsonl

logger = logging.getLogger(__name__)

T = TypeVar("T")
CLAIM_WAIT_S = 3600.0  # ranks > 0 wait this long for rank 0 to claim the folder (it loads its model first)
SHARD_WAIT_S = 7 * 24 * 3600.0  # rank 0 waits this long for the other ranks' shares
POLL_S = 1.0


# ---------------------------------------------------------------------------------------------------------------
# Who does what


def owner(index: int, world_size: int) -> int:
    """The rank that handles unit ``index`` (its position in the stage's fixed order of units)."""
    return index % world_size


def share(units: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The units of ``rank``: those whose index it :func:`owner`s, in order."""
    return [u for i, u in enumerate(units) if owner(i, world_size) == rank]


def shard_path(output: str | Path, rank: int) -> Path:
    """Where rank ``rank`` appends its records for ``output`` (``<stem>.rank<r>.jsonl`` beside it)."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{rank}.jsonl")


def mark_path(output: str | Path, rank: int) -> Path:
    """Where rank ``rank`` says it finished its share of ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{rank}.done.json")


def shard_files(output: str | Path) -> list[Path]:
    """Every shard of ``output`` on disk, whatever world size wrote it, by rank."""
    output = Path(output)
    pattern = re.compile(rf"{re.escape(output.stem)}\.rank(\d+)\.jsonl")
    found = [(int(m.group(1)), p) for p in output.parent.glob(f"{output.stem}.rank*.jsonl")
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def remove_shards(output: str | Path) -> None:
    """Delete every shard and mark of ``output``."""
    output = Path(output)
    for p in shard_files(output) + list(output.parent.glob(f"{output.stem}.rank*.done.json")):
        p.unlink(missing_ok=True)


def ids_digest(ids: Iterable[str]) -> str:
    """SHA-256 of a list of ids, in order."""
    return "sha256:" + hashlib.sha256("\n".join(ids).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Records already written


def read_finished(path: str | Path) -> list[dict]:
    """The newline-terminated records of a JSONL file that another process may be appending to (its unfinished
    last line is left out, silently: it is not torn, just not written yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as fh:
        lines = fh.read().split(b"\n")[:-1]
    out = []
    for i, raw in enumerate(lines):
        try:
            out.append(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{path}:{i + 1}: not valid JSON; the file is corrupt, remove it to start over") \
                from None
    return out


def written(output: str | Path, rank: int = 0, world_size: int = 1, also: Sequence[Path] = ()) -> dict[str, dict]:
    """Records already written for ``output``, by id: in ``also``, in ``output`` itself and in every shard (this
    rank's own shard read as its appender will continue it; the others' as far as they are written). A later
    source's record of an id replaces an earlier one's."""
    output = Path(output)
    own = output if world_size == 1 else shard_path(output, rank)
    found: dict[str, dict] = {}
    for path in [*also, output, *shard_files(output)]:
        settled = path in (own, output) or path in also  # no other process appends to these now
        found.update((r["id"], r) for r in (read_complete_jsonl(path) if settled else read_finished(path)))
    return found


def mark_done(output: str | Path, rank: int, ids: Sequence[str], **extra: Any) -> None:
    """Say that ``rank`` finished its share (``ids``) of ``output``; ``extra`` (timings, counts) goes along."""
    write_json(mark_path(output, rank), {"rank": rank, "ids": len(ids), "digest": ids_digest(ids), **extra})


# ---------------------------------------------------------------------------------------------------------------
# Waiting for the others


def wait_until(ready: Callable[[], bool], what: str, timeout_s: float, poll_s: float = POLL_S) -> None:
    """Poll ``ready()`` until it is true; a :class:`TimeoutError` naming ``what`` after ``timeout_s``."""
    t0 = time.monotonic()
    while not ready():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; did a process of this launch stop? Run the "
                               f"same command again: every rank resumes its own share")
        time.sleep(poll_s)


def wait_for_files(paths: Sequence[Path], timeout_s: float = SHARD_WAIT_S) -> None:
    """Wait until every path exists."""
    wait_until(lambda: all(p.exists() for p in paths), f"{[str(p) for p in paths if not p.exists()]}", timeout_s)


def wait_for_claim(folder: str | Path, ident: Mapping[str, Any], timeout_s: float = CLAIM_WAIT_S) -> str:
    """Ranks > 0: wait until rank 0 has claimed ``folder`` for this identity (it checks and, with ``--rerun``,
    clears it first); returns the folder's status then (``partial`` or ``done``)."""
    from . import layout

    state: list[str] = []

    def claimed() -> bool:
        state[:] = [layout.stage_state(folder, ident).status]
        return state[0] in ("partial", "done")

    wait_until(claimed, f"rank 0 to claim {folder}", timeout_s)
    return state[0]


def wait_for_marks(output: str | Path, expected: Mapping[int, Sequence[str]],
                   timeout_s: float = SHARD_WAIT_S) -> dict[int, dict]:
    """Rank 0: wait until each rank of ``expected`` (rank -> the ids it was given) has marked exactly that share
    of ``output`` done; returns what each mark says besides the digest (rank, count, timings)."""
    want = {r: ids_digest(ids) for r, ids in expected.items()}

    def mark(r: int) -> dict | None:
        p = mark_path(output, r)
        try:
            m = read_json(p) if p.is_file() else None
        except InputError:  # being replaced right now
            return None
        return m if m is not None and m.get("digest") == want[r] else None

    marks: dict[int, dict] = {}

    def all_done() -> bool:
        marks.update({r: m for r in want if r not in marks and (m := mark(r)) is not None})
        return len(marks) == len(want)

    if not all_done():
        logger.info("%s: waiting for ranks %s to finish their shares", Path(output).name,
                    [r for r in want if r not in marks])
        wait_until(all_done, f"the other ranks to finish their shares of {output}", timeout_s)
    return {r: {k: v for k, v in m.items() if k != "digest"} for r, m in sorted(marks.items())}


# ---------------------------------------------------------------------------------------------------------------
# Merging


def merge_shards(output: str | Path, order: Sequence[str], *, leftovers: Path | None = None) -> list[dict]:
    """Rank 0 (or the one process): replace ``output`` by the written records (:func:`written`) of the ids in
    ``order``, in that order, each once; records of other ids go to ``leftovers`` (removed when there are none;
    dropped without it); then the shards and marks are removed. Returns the records written to ``output`` (an id
    found nowhere is absent: the caller checks)."""
    output = Path(output)
    found = written(output, also=[leftovers] if leftovers is not None else ())
    wanted = set(order)
    records = [found[i] for i in order if i in found]
    rest = [r for i, r in found.items() if i not in wanted]
    if leftovers is not None and rest:
        write_jsonl(leftovers, rest)
        logger.info("%s: %d finished records are outside this selection; kept in %s", output, len(rest), leftovers)
    write_jsonl(output, records)
    if leftovers is not None and not rest:
        leftovers.unlink(missing_ok=True)
    remove_shards(output)
    return records


# ---------------------------------------------------------------------------------------------------------------
# Each rank's resources


def local_world_size(info: DistInfo) -> int:
    """Processes of this launch on this machine (the launcher's LOCAL_WORLD_SIZE; else all of them)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))


def share_cores(info: DistInfo) -> int:
    """Under a launcher, give this rank ``cores // local processes`` torch threads (so ranks on one CPU do not
    fight for cores) and say so; returns the thread count (unchanged in one process)."""
    import torch

    if info.world_size == 1:
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = max(1, local_world_size(info))
    threads = max(1, cores // local)
    torch.set_num_threads(threads)
    logger.info("rank %d of %d: %d torch threads (%d cores / %d processes on this machine)", info.rank,
                info.world_size, threads, cores, local)
    return threads


def rank_device(device: str | None, info: DistInfo) -> str | None:
    """The device of this rank: ``device`` as given (a bare ``cuda`` becomes this rank's GPU under a launcher),
    else this rank's GPU when there are GPUs, else ``None`` (the default device)."""
    import torch

    if device == "cuda" and info.world_size > 1:
        return f"cuda:{info.local_rank}"
    return device or (f"cuda:{info.local_rank}" if torch.cuda.is_available() else None)


__all__ = ["owner", "share", "shard_path", "mark_path", "shard_files", "remove_shards", "written", "read_finished",
           "mark_done", "wait_until", "wait_for_files", "wait_for_claim", "wait_for_marks", "merge_shards",
           "share_cores", "rank_device", "local_world_size"]
