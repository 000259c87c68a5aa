"""Stage folders and the run folder: every path, and the one rule that says a stage is done.

Every stage writes into a folder of its own and writes ``meta.json`` there **last**: the stage's *identity* (its
name, the settings that can change its output, and the fingerprints of its inputs: data file hash, model
fingerprint, the upstream stage's fingerprint), the identity's fingerprint, versions, counts, and time accumulated
over resumed runs. While a stage works, ``.started.json`` holds the identity it works for.

"Done" means exactly: ``meta.json`` exists and its fingerprint equals what the current config asks for
(:func:`stage_state`). A folder holding a stage made under other settings (finished or not) is never reused
silently: :func:`claim` stops with every changed setting (old -> new) unless the caller passes ``rerun``; then
:meth:`StageRun.start` clears the folder, once the stage's inputs have passed their checks.

The run folder (:class:`RunLayout`) is defined here once; ``run`` and ``report`` both use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from .utils import InputError, environment_info, read_json, write_json

logger = logging.getLogger(__name__)

META = "meta.json"
STARTED = ".started.json"
HEARTBEAT_S = 60.0  # how often a working stage records its time so far (StageRun)


# ----------------------------------------------------------------------------------------------------------------
# Identities and fingerprints


def _canonical(value: Any) -> Any:
    """Equal values spelled alike: an integral float is its int (a YAML ``16`` and a default ``16.0``), tuples
    are lists."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def fingerprint(identity: Mapping[str, Any]) -> str:
    """SHA-256 of an identity's canonical JSON (sorted keys), ``sha256:`` prefixed."""
    blob = json.dumps(_canonical(identity), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def identity(stage: str, settings: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's identity: its name, the settings that can change its output, its inputs' fingerprints."""
    return {"stage": stage, "settings": dict(settings), "inputs": dict(inputs)}


def stage_identity(stage: str, cfg: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A stage's identity from its config: the result settings (:func:`config.result_dict`) not named in
    ``inputs``, and ``inputs`` (fingerprints standing for the config's model, data and upstream fields)."""
    from .config import result_dict

    return identity(stage, {k: v for k, v in result_dict(cfg).items() if k not in inputs}, inputs)


def file_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, ``sha256:`` prefixed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def output_fingerprint(path: str | Path) -> str | None:
    """The fingerprint of the finished stage output at ``path``: of the outermost stage folder holding it (``path``
    itself or its parent, e.g. ``sft/`` for ``sft/adapter/``), else ``None``."""
    path = Path(path).expanduser()
    found = None
    for folder in (path, path.parent):
        meta = folder / META
        if meta.is_file():
            data = read_json(meta)
            if isinstance(data, dict) and data.get("fingerprint"):
                found = str(data["fingerprint"])
    return found


def changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs between two identities."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Stage state


@dataclass(frozen=True)
class StageState:
    """Where a stage folder stands against the identity asked for.

    ``status``: ``missing`` (nothing there), ``partial`` (work of this same identity, unfinished: resume it),
    ``done`` (finished, same identity) or ``changed`` (work of another identity; ``diffs`` says how)."""

    status: str
    diffs: tuple[str, ...] = ()
    meta: Mapping[str, Any] | None = None


def stage_state(folder: str | Path, ident: Mapping[str, Any]) -> StageState:
    """The one "done" rule (see the module doc): compare ``folder``'s meta.json (or .started.json) with
    ``ident``."""
    folder = Path(folder)
    want = fingerprint(ident)
    for name, status in ((META, "done"), (STARTED, "partial")):
        path = folder / name
        if path.is_file():
            data = read_json(path)
            if data.get("fingerprint") == want:
                return StageState(status, meta=data)
            return StageState("changed", tuple(changes(data.get("identity", {}), ident)) or ("unknown",), data)
    return StageState("missing")


def changed_message(what: str, diffs: Iterable[str], fix: str) -> str:
    return f"{what} was made with other settings ({'; '.join(diffs)}); {fix}"


def claim(folder: str | Path, ident: Mapping[str, Any], *, rerun: bool = False, flag: str = "--output",
          keep: Iterable[str] = (), shown: str | Path | None = None) -> StageState:
    """Check ``folder`` against the stage of identity ``ident`` (before any work) and return its state.

    ``done``: nothing to do (the caller returns). ``changed``: an :class:`InputError` naming each changed setting
    (and ``shown``, the output as the user gave it), unless ``rerun``: then the stage starts over, and
    :meth:`StageRun.start` clears the folder (except the files matching ``keep``, which the stage checks itself)
    only when the first output is about to be written, so a rerun whose inputs fail their checks loses nothing.
    """
    folder = Path(folder)
    state = stage_state(folder, ident)
    if state.status == "changed":
        if not rerun:
            raise InputError(changed_message(f"{flag} {shown or folder}", state.diffs, "pass --rerun to redo it "
                                             "with the current settings, or choose another " + flag))
        logger.info("%s: to be redone (%s); cleared once its inputs pass their checks", folder,
                    "; ".join(state.diffs))
    return state


def start(folder: str | Path, ident: Mapping[str, Any], resolved: Mapping[str, str] | None = None) -> None:
    """Record in ``.started.json`` the identity being worked for, so that a later run with other settings is
    refused even before this one finishes (and an unfinished one of the same settings resumes).

    ``resolved``: what a setting such as ``--dtype auto`` became on this machine. An unfinished stage resumes only
    where it resolves alike (a CPU's float32 records must not join a GPU's bfloat16 ones); otherwise
    :class:`InputError`, before any work."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if stage_state(folder, ident).status != "partial":
        write_json(folder / STARTED, {"identity": dict(ident), "fingerprint": fingerprint(ident),
                                      "started": time.time(), "resolved": dict(resolved or {})})
        return
    was = read_json(folder / STARTED).get("resolved") or {}
    diffs = [f"{k} {was[k]} there, {v} here" for k, v in (resolved or {}).items() if k in was and was[k] != v]
    if diffs:
        raise InputError(f"{folder} holds an unfinished stage made with other resolved settings ({'; '.join(diffs)}"
                         f"): resume it on the hardware that started it, or remove it or choose another output "
                         f"to start over here")


def clear(folder: Path, keep: Iterable[str] = ()) -> None:
    """Remove a stage folder's contents, except the names matching a ``keep`` glob (and its lock)."""
    kept = {p for pattern in keep for p in folder.glob(pattern)}
    for p in folder.iterdir() if folder.is_dir() else ():
        if p in kept or p.name.endswith(".lock"):
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def finish(folder: str | Path, ident: Mapping[str, Any], *, config: Mapping[str, Any], counts: Mapping[str, Any],
           seconds: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``meta.json`` last: identity, fingerprint, resolved config, counts and ``seconds``, the stage's time
    summed over all its attempts (:meth:`StageRun.seconds`)."""
    folder = Path(folder)
    meta = {"stage": ident["stage"], "fingerprint": fingerprint(ident), "identity": dict(ident),
            "config": dict(config), "counts": dict(counts), "seconds": round(seconds, 3),
            "finished": time.time(), "versions": environment_info(), **(extra or {})}
    write_json(folder / META, meta)
    (folder / STARTED).unlink(missing_ok=True)
    return meta


def add_seconds(folder: str | Path, seconds: float) -> None:
    """Add an attempt's time to ``.started.json`` (when there is one), so the next attempt counts it."""
    path = Path(folder) / STARTED
    if path.is_file():
        data = read_json(path)
        data["seconds"] = round(data.get("seconds", 0.0) + seconds, 3)
        write_json(path, data)


class StageRun:
    """One attempt at a stage: checks the folder (:func:`claim`), :meth:`start` marks it before the first write,
    :meth:`finish` writes meta.json (use as a context manager around the work).

    The stage's time is kept across attempts in ``.started.json``'s ``seconds``: from :meth:`start` on, a daemon
    thread rewrites it every :data:`HEARTBEAT_S` seconds with the time of the earlier attempts plus this one's so
    far, so an attempt that is killed outright (``kill -9``, a machine's end) loses at most that much; one that
    ends unfinished otherwise records its whole time. Under several processes, pass ``writer=False`` on all but
    the one that writes the folder (the one that calls :meth:`start` and :meth:`finish`)."""

    def __init__(self, folder: str | Path, ident: Mapping[str, Any], *, rerun: bool = False,
                 flag: str = "--output", keep: Iterable[str] = (), shown: str | Path | None = None,
                 writer: bool = True) -> None:
        self.folder, self.identity, self.writer, self._keep = Path(folder), dict(ident), writer, tuple(keep)
        self.state = claim(self.folder, ident, rerun=rerun, flag=flag, keep=keep, shown=shown)
        self.done = self.state.status == "done"
        self._t0 = time.perf_counter()
        self._before: float | None = None  # the earlier attempts' seconds, read by start()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def start(self, resolved: Mapping[str, str] | None = None) -> None:
        """Mark the folder (:func:`start`, with what ``resolved`` settings became here) and start recording this
        attempt's time; idempotent."""
        if self._before is not None:
            return
        if self.state.status == "changed":  # a rerun: the old outputs go now, not before the inputs were checked
            clear(self.folder, self._keep)
            logger.info("%s: cleared for the rerun", self.folder)
        start(self.folder, self.identity, resolved)
        self._before = float(read_json(self.folder / STARTED).get("seconds", 0.0))
        self._beat = threading.Thread(target=self._heartbeat, name=f"stage-time {self.folder}", daemon=True)
        self._beat.start()

    def seconds(self) -> float:
        """The stage's time so far: the earlier attempts' and this one's."""
        return (self._before or 0.0) + time.perf_counter() - self._t0

    def _record(self) -> None:
        path = self.folder / STARTED
        write_json(path, {**read_json(path), "seconds": round(self.seconds(), 3)})

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._record()
            except (OSError, InputError) as e:  # the folder went away under us: nothing left to time
                logger.debug("%s: stage time not recorded (%s)", self.folder, e)
                return

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()

    def finish(self, *, config: Mapping[str, Any], counts: Mapping[str, Any],
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        self.start()
        self._stop_heartbeat()
        meta = finish(self.folder, self.identity, config=config, counts=counts, seconds=self.seconds(),
                      extra=extra)
        self.done = True
        return meta

    def __enter__(self) -> "StageRun":
        return self

    def __exit__(self, *_: Any) -> None:
        """An attempt that ends unfinished (an exception, or a stop such as ``--stop-after``) leaves its time."""
        self._stop_heartbeat()
        if self.done or not self.writer:
            return
        if self._before is None:  # failed before start(): the time goes to an earlier attempt of these settings
            if self.state.status != "changed":  # (a folder of other settings keeps its own)
                add_seconds(self.folder, time.perf_counter() - self._t0)
        elif (self.folder / STARTED).is_file():
            self._record()


def read_meta(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / META
    return read_json(path) if path.is_file() else None


# ----------------------------------------------------------------------------------------------------------------
# The run folder


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run folder (``lightreasoner run --output RUN``)."""

    root: Path
    evals: tuple[str, ...] = field(default=("base", "tuned", "sft"))

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        """The resolved run config, as YAML that replays it."""
        return self.root / "config.yaml"

    @property
    def sample(self) -> Path:
        return self.root / "sample"

    @property
    def samples(self) -> Path:
        return self.sample / SAMPLES_FILE

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def merge(self) -> Path:
        return self.root / "merge"

    def eval(self, name: str) -> Path:
        return self.root / "eval" / name

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def sft_adapter(self) -> Path:
        return self.sft / "adapter"

    @property
    def perplexity(self) -> Path:
        return self.root / "perplexity"

    @property
    def report(self) -> Path:
        return self.root / "report"

    def stage_folders(self) -> dict[str, Path]:
        """Each stage of ``lightreasoner run`` (named as the pipeline names them) -> its folder, in run order."""
        return {"sample": self.sample, "train": self.train, "merge": self.merge, "eval_base": self.eval("base"),
                "eval_tuned": self.eval("tuned"), "sft": self.sft, "eval_sft": self.eval("sft"),
                "perplexity": self.perplexity, "report": self.report}


SAMPLES_FILE = "samples.jsonl"


# ----------------------------------------------------------------------------------------------------------------
# Input fingerprints (computed before any model loads)


def model_input(spec: str, revision: str | None = None) -> str:
    """A model spec's fingerprint as a stage input: a stage output folder's own fingerprint (``meta.json``), else
    the model's content fingerprint (:func:`models.fingerprint`; a hub id stands for itself, at ``revision`` when
    one is given: ``hub:ID@REVISION``, so a changed revision is a changed input). ``self:LAYER`` (the expert's
    early layers) stands for itself, relative to the expert; :func:`amateur_input` names both."""
    from .earlyexit import parse_self_spec
    from .models import check_revision
    from .models import fingerprint as model_fingerprint
    from .models import resolve_source

    layer = parse_self_spec(spec)
    if layer is not None:  # relative to the expert, itself an input of every stage naming one
        check_revision(spec, revision, "--amateur-revision")
        return f"self:{layer}"
    found = output_fingerprint(spec) or model_fingerprint(resolve_source(spec, prepare=False))
    return found if revision is None else f"{found.removesuffix('@unknown')}@{revision}"


def amateur_input(spec: str, revision: str | None, expert_input: str) -> str:
    """The amateur's fingerprint as a stage input: for ``self:LAYER`` (the expert's own early layers,
    :mod:`.earlyexit`) ``self:LAYER of <expert_input>`` (the expert's :func:`model_input`), so it changes with
    the expert or the layer; for any other spec :func:`model_input`."""
    from .earlyexit import parse_self_spec, self_fingerprint

    layer = parse_self_spec(spec)
    if layer is None:
        return model_input(spec, revision)
    model_input(spec, revision)  # the revision check
    return self_fingerprint(expert_input, layer)


def data_input(spec: str | None) -> str:
    """A data spec's fingerprint as a stage input: ``generated``, a shipped set's or a file's content hash, a
    folder's files' hashes, or the hub id."""
    from . import data as shipped
    from .utils import looks_like_hub_id

    if spec is None or spec == shipped.GENERATED:
        return "generated"
    path = Path(spec).expanduser()
    if not path.exists() and shipped.training_file(spec) is not None:
        return f"shipped:{spec}:" + file_hash(shipped.training_file(spec))  # type: ignore[arg-type]
    if path.is_file():
        return file_hash(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".jsonl", ".json", ".parquet"))
        return fingerprint({p.relative_to(path).as_posix(): file_hash(p) for p in files})
    if looks_like_hub_id(spec):
        return f"hub:{spec}"
    raise InputError(f"--data {spec!r}: no such file or folder")
