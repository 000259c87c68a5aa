"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest, fsynced, the marker last.

A checkpoint folder ``step-NNNNNN/`` holds

- ``trainable.safetensors``: the trainable weights (LoRA, or every weight with ``--full``), keyed by the unwrapped
  model's parameter names;
- ``optimizer.safetensors``: the optimizer's per-parameter state as ``state.<index>.<key>`` (AdamW: ``exp_avg``,
  ``exp_avg_sq``, ``step``), and ``optimizer.json``: its param groups (hyper-parameters), the parameter names of
  each group, and any non-tensor state;
- ``scheduler.json``: the lr scheduler's state (and the fp16 grad scaler's, when the run has one);
- ``rng-rank<R>.safetensors``: process R's RNG states, one file per process (torch CPU and CUDA as byte tensors,
  python ``random`` and numpy as JSON in the file's metadata);
- ``adapter/``: a loadable PEFT adapter of this point (LoRA runs; the caller writes it);
- ``trainer_state.json``, the completion marker, written last: the trainer's counters, the number of processes,
  and the size and sha256 of every other file.

Not accelerate's ``save_state``: it pickles optimizer, scheduler and RNG states, and unpickling runs whatever code
the file names (a checkpoint folder would be as dangerous as a script). Nothing here is unpickled.

Durability: every file is fsynced, then the folders, then the marker is written atomically and fsynced with its
folder (:func:`write_marker`; JSON goes through ``utils.write_json``, which is atomic and fsyncs). Reading
(:func:`read`) checks everything before changing anything: each listed file's size and hash, the weights' and
optimizer state's names and shapes against the model, every process's RNG file. A damaged checkpoint raises
:class:`CheckpointError` naming the file; ``--resume auto`` then falls back to the previous complete one
(:func:`resume`).

Distributed: under DDP every process holds the same trainable weights and optimizer state, so process 0 writes
them (:func:`write_shared`) and each process writes its own RNG file (:func:`write_rng`). FSDP and DeepSpeed shard
the optimizer state (FSDP the weights too); gathering and re-sharding it without pickle is not implemented, so
:func:`require_supported` refuses checkpoints under them at start (train there with ``--save-every none`` and no
``--stop-after``, or launch with configs/accelerate/ddp.yaml) rather than pickling silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .utils import InputError, fsync_dir, read_json, write_json

logger = logging.getLogger(__name__)

FORMAT = "lightreasoner-checkpoint/1"
MARKER = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"^step-(\d{6,})$")
WEIGHTS, OPTIMIZER, OPTIMIZER_JSON, SCHEDULER = ("trainable.safetensors", "optimizer.safetensors", "optimizer.json",
                                                 "scheduler.json")
SHARDED = ("FSDP", "DEEPSPEED", "MEGATRON_LM")  # accelerate's distributed types whose optimizer state is sharded


class CheckpointError(InputError):
    """A checkpoint whose marker exists but whose files are missing, damaged or do not fit the model being trained
    (``--resume auto`` skips it for the previous one; an explicit ``--resume DIR`` stops on it)."""

    def __init__(self, folder: str | Path, file: str, problem: str):
        self.folder, self.file, self.problem = Path(folder), file, problem
        super().__init__(f"{Path(folder) / file}: {problem}; resume from an earlier step-* folder, or remove this "
                         f"one")


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def step_of(folder: Path) -> int:
    return int(CHECKPOINT_RE.match(folder.name).group(1))


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def fsync_file(path: str | Path) -> None:
    """Flush a file's contents to the disk (files written by libraries that do not fsync: safetensors, PEFT)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors and fsync the file."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    fsync_file(path)


def fsync_tree(folder: Path) -> None:
    """fsync every file under ``folder`` (files other writers left unsynced, e.g. PEFT's adapter), then every
    folder, innermost first."""
    dirs = [folder]
    for p in sorted(folder.rglob("*")):
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            fsync_file(p)
    for d in sorted(dirs, key=lambda d: -len(d.parts)):
        fsync_dir(d)


def file_digest(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def require_supported(distributed_type: Any, *, saves: bool, resumes: bool) -> None:
    """Refuse checkpoints where the optimizer state is sharded across processes (FSDP, DeepSpeed): writing it
    without pickle is not implemented, and writing process 0's shard alone would resume wrongly."""
    name = str(getattr(distributed_type, "value", distributed_type))
    if name not in SHARDED or not (saves or resumes):
        return
    what = "resume from a checkpoint" if resumes else "save checkpoints"
    raise InputError(f"cannot {what} under {name}: its optimizer state is sharded across processes and lightreasoner "
                     f"writes checkpoints (without pickle) only for whole, DDP-style state. Train under {name} with "
                     f"--save-every none and no --stop-after (and --resume none), or launch with "
                     f"configs/accelerate/ddp.yaml to keep checkpoints")


def prepare_folder(folder: Path) -> None:
    """An empty ``folder``: a leftover of the same step (an older or damaged write) is removed first, so no old
    marker ever stands beside new files."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    fsync_dir(folder.parent)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def write_shared(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any = None) -> None:
    """Process 0's part: trainable weights, optimizer state and scheduler (+ grad scaler) state, each fsynced.

    ``model`` is the unwrapped model whose trainable parameters the optimizer updates.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    save_tensors(folder / WEIGHTS, {n: _cpu(p) for n, p in model.named_parameters() if p.requires_grad})
    sd = _inner(optimizer).state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{key}"] = _cpu(v)
            else:
                scalars.setdefault(str(idx), {})[key] = v
    save_tensors(folder / OPTIMIZER, tensors)
    write_json(folder / OPTIMIZER_JSON, {  # a value JSON cannot hold fails here, before the marker
        "param_groups": sd["param_groups"], "state_scalars": scalars,
        "param_names": [[names[id(p)] for p in g["params"]] for g in _inner(optimizer).param_groups]})
    write_json(folder / SCHEDULER, {"scheduler": scheduler.state_dict(),
                                    "scaler": scaler.state_dict() if scaler is not None else None})


def write_rng(folder: Path, rank: int) -> None:
    """This process's RNG states (torch CPU, every CUDA device, python ``random``, numpy), fsynced."""
    import numpy as np

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    meta = {"python": json.dumps([version, list(internal), gauss]),
            "numpy": json.dumps([name, key.tolist(), int(pos), int(has_gauss), float(cached)])}
    save_tensors(folder / rng_file(rank), tensors, meta)


def write_marker(folder: Path, state: dict, world_size: int) -> None:
    """Mark the checkpoint complete, last: fsync every file and folder, then write the trainer state with the
    size and sha256 of each file (what :func:`read` checks) atomically and durably."""
    fsync_tree(folder)
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_digest(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}
    write_json(folder / MARKER, {"format": FORMAT, "state": state, "world_size": world_size, "time": time.time(),
                                 "files": files})


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading
# ----------------------------------------------------------------------------------------------------------------


def checkpoint_folders(output: Path) -> list[Path]:
    """``step-NNNNNN`` folders in ``output``, oldest first (complete or not)."""
    found = [d for d in Path(output).glob("step-*") if CHECKPOINT_RE.match(d.name) and d.is_dir()]
    return sorted(found, key=step_of)


def candidates(output: Path, resume: str) -> list[Path]:
    """Checkpoints to try, newest first: ``auto``: every folder with a marker; a folder: that one (an
    :class:`InputError` when it has no marker); ``none``: none (an :class:`InputError` when ``output`` holds
    checkpoints of an earlier run, which this run would mix with its own)."""
    if resume == "none":
        if checkpoint_folders(output):
            raise InputError(f"{output} holds checkpoints from an earlier run: pass --resume auto to continue it, or "
                             f"remove them / choose another --output")
        return []
    if resume != "auto":
        if not (Path(resume) / MARKER).is_file():
            raise InputError(f"--resume {resume}: not a complete checkpoint (no {MARKER})")
        return [Path(resume)]
    return [d for d in reversed(checkpoint_folders(output)) if (d / MARKER).is_file()]


@dataclass
class Checkpoint:
    """A checkpoint read and checked against the model, ready for :func:`apply`."""

    folder: Path
    state: dict
    weights: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    scaler: dict | None
    rng: tuple[dict[str, torch.Tensor], dict[str, str]]


def _tensors(folder: Path, file: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(folder / file), "pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(folder, file, f"unreadable safetensors file ({e})") from None


def _json(folder: Path, file: str) -> Any:
    try:
        return json.loads((folder / file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(folder, file, f"unreadable JSON ({e})") from None


def _marker(folder: Path, world_size: int) -> dict:
    """The marker, checked: our format, this number of processes, every listed file intact."""
    marker = _json(folder, MARKER)
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise InputError(f"{folder / MARKER}: not a {FORMAT} checkpoint (an older lightreasoner wrote it with "
                         f"pickle files, which are not loaded: they can run code). Remove {folder.parent}/step-* "
                         f"to start over, or train into a new --output")
    if marker.get("world_size") != world_size:
        raise InputError(f"{folder}: written by {marker.get('world_size')} process(es), this run has {world_size}; "
                         f"relaunch with {marker.get('world_size')} processes to resume exactly")
    files = marker.get("files") or {}
    needed = [WEIGHTS, OPTIMIZER, OPTIMIZER_JSON, SCHEDULER] + [rng_file(r) for r in range(world_size)]
    for name in needed:
        if name not in files:
            raise CheckpointError(folder, name, "not listed in the marker (it was never written)")
    for name, want in files.items():
        path, want = folder / name, want if isinstance(want, dict) else {}
        if not path.is_file():
            raise CheckpointError(folder, name, "missing")
        if path.stat().st_size != want.get("bytes") or file_digest(path) != want.get("sha256"):
            raise CheckpointError(folder, name, f"damaged ({path.stat().st_size} bytes; the marker recorded "
                                                f"{want.get('bytes')} bytes and another sha256)")
    return marker


def _check_weights(folder: Path, weights: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    live = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if weights.keys() != live.keys():
        odd = sorted(weights.keys() ^ live.keys())[:3]
        raise CheckpointError(folder, WEIGHTS, f"its tensors are not the model's trainable weights (e.g. {odd})")
    for n, p in live.items():
        if weights[n].shape != p.shape or weights[n].dtype != p.dtype:
            raise CheckpointError(folder, WEIGHTS, f"{n} is {tuple(weights[n].shape)} {weights[n].dtype}, the "
                                                   f"model's is {tuple(p.shape)} {p.dtype}")


def _optimizer_state(folder: Path, tensors: dict[str, torch.Tensor], meta: Any, model: torch.nn.Module,
                     optimizer: Any) -> dict:
    """The optimizer's ``state_dict`` from the files, checked against its parameters (names, count, shapes)."""
    names = {id(p): n for n, p in model.named_parameters()}
    live = _inner(optimizer).param_groups
    try:
        groups, saved_names = meta["param_groups"], meta["param_names"]
        want = [[names[id(p)] for p in g["params"]] for g in live]
        if saved_names != want:
            raise CheckpointError(folder, OPTIMIZER_JSON, "its parameters are not the ones this optimizer trains")
        for g, lg in zip(groups, live):  # JSON has no tuples (AdamW's betas)
            g.update({k: tuple(v) for k, v in g.items() if isinstance(lg.get(k), tuple)})
        params = [p for g in live for p in g["params"]]
        state: dict[int, dict] = {}
        for key, t in tensors.items():
            _, idx, name = key.split(".", 2)
            p = params[int(idx)]
            if t.dim() and t.shape != p.shape:
                raise CheckpointError(folder, OPTIMIZER, f"{key} is {tuple(t.shape)}, but {names[id(p)]} is "
                                                         f"{tuple(p.shape)}")
            state.setdefault(int(idx), {})[name] = t
        for idx, extra in meta["state_scalars"].items():
            state.setdefault(int(idx), {}).update(extra)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise CheckpointError(folder, OPTIMIZER_JSON, f"not an optimizer state of this run ({e!r})") from None
    return {"state": state, "param_groups": groups}


def _rng(folder: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors, meta = _tensors(folder, rng_file(rank))
    try:
        version, internal, _ = json.loads(meta["python"])
        name, key, *_ = json.loads(meta["numpy"])
        ok = tensors["torch_cpu"].dtype == torch.uint8 and len(internal) == 625 and len(key) == 624
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(folder, rng_file(rank), f"not an RNG state ({e!r})") from None
    if not ok:
        raise CheckpointError(folder, rng_file(rank), "not an RNG state (wrong sizes)")
    return tensors, meta


def read(folder: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, *, rank: int,
         world_size: int) -> Checkpoint:
    """Read and check a checkpoint for this process without changing anything (see :func:`apply`).

    Raises :class:`CheckpointError` (naming the file) for missing, damaged or unfitting files, and
    :class:`InputError` for a checkpoint this run must not resume (another format, another number of processes).
    """
    marker = _marker(Path(folder), world_size)
    weights, _ = _tensors(folder, WEIGHTS)
    _check_weights(folder, weights, model)
    opt_tensors, _ = _tensors(folder, OPTIMIZER)
    optim = _optimizer_state(folder, opt_tensors, _json(folder, OPTIMIZER_JSON), model, optimizer)
    sched = _json(folder, SCHEDULER)
    if not isinstance(sched, dict) or not isinstance(sched.get("scheduler"), dict) or \
            sched["scheduler"].keys() != scheduler.state_dict().keys():
        raise CheckpointError(folder, SCHEDULER, "not a state of this run's lr scheduler")
    if any(f is not None for f in sched["scheduler"].get("lr_lambdas") or []):
        raise CheckpointError(folder, SCHEDULER, "lr_lambdas must be null (the schedule is a function of the config)")
    return Checkpoint(Path(folder), marker.get("state") or {}, weights, optim, sched["scheduler"], sched.get("scaler"),
                      _rng(folder, rank))


def apply(ck: Checkpoint, model: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any = None) -> None:
    """Load a checked checkpoint into the model, optimizer, scheduler, grad scaler and this process's RNGs."""
    import numpy as np

    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(ck.weights[n])
    _inner(optimizer).load_state_dict(ck.optimizer)  # casts the state to each parameter's device and dtype
    scheduler.load_state_dict(ck.scheduler)
    if scaler is not None and ck.scaler:
        scaler.load_state_dict(ck.scaler)
    tensors, meta = ck.rng
    version, internal, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        for i in range(min(torch.cuda.device_count(), sum(k.startswith("cuda.") for k in tensors))):
            torch.cuda.set_rng_state(tensors[f"cuda.{i}"], i)


# ----------------------------------------------------------------------------------------------------------------
# Under accelerate: every process calls these together
# ----------------------------------------------------------------------------------------------------------------


def save(acc: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any, folder: Path, state: dict, *,
         keep: int | None, adapter: tuple[Any, dict] | None = None) -> None:
    """Write checkpoint ``folder``: process 0 the shared state (and, given ``adapter=(peft_model, state_dict)``,
    a loadable PEFT adapter of this point in ``adapter/``), every process its RNG file; once all are written,
    process 0 the marker (``state``: the trainer's counters), then prunes to the newest ``keep``."""
    acc.wait_for_everyone()
    if acc.is_main_process:
        prepare_folder(folder)
    acc.wait_for_everyone()
    write_rng(folder, acc.process_index)
    if acc.is_main_process:
        write_shared(folder, model, optimizer, scheduler, acc.scaler)
        if adapter is not None:  # for analyses across checkpoints (the pipeline's perplexity)
            adapter[0].save_pretrained(folder / "adapter", state_dict=adapter[1])
    acc.wait_for_everyone()
    if acc.is_main_process:
        write_marker(folder, state, acc.num_processes)
        for old in checkpoint_folders(folder.parent)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def resume(acc: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any, found: list[Path],
           explicit: bool) -> Checkpoint | None:
    """Load the newest readable checkpoint of ``found`` (:func:`candidates`) into the model, optimizer, scheduler
    and this process's RNGs, and return it (``None``: nothing to resume).

    A damaged one is skipped for the previous (a warning names it), or with ``explicit`` (``--resume DIR``) stops
    the run naming the file. All processes must pick the same one (they read the same shared files).
    """
    got = None
    for folder in found:
        try:
            got = read(folder, model, optimizer, scheduler, rank=acc.process_index, world_size=acc.num_processes)
            break
        except CheckpointError as e:
            if explicit:
                raise
            logger.warning("skipping checkpoint %s: %s is %s; trying the previous complete one", folder, e.file,
                           e.problem)
    if found and got is None:
        logger.warning("none of the %d checkpoints in %s could be read; training from the start", len(found),
                       found[0].parent)
    if acc.num_processes > 1:
        steps = acc.gather(torch.tensor([step_of(got.folder) if got else -1], device=acc.device)).tolist()
        if len(set(steps)) > 1:
            raise InputError(f"the processes found different checkpoints to resume from (steps {steps}); every "
                             f"process must see the same output folder {found[0].parent}")
    if got is not None:
        apply(got, model, optimizer, scheduler, acc.scaler)
    return got


def check_resumable(output: Path, config: dict, fields: Iterable[str], fingerprint: str) -> None:
    """A resumed run must keep the settings that shape the result (``fields`` of ``config``, as saved in
    ``output/train_config.json``) and the same samples (``fingerprint``); else a :class:`ConfigError` lists the
    differences."""
    from .config import ConfigError

    saved_path = output / "train_config.json"
    if not saved_path.is_file():
        logger.warning("%s has no train_config.json: the resumed checkpoint's settings cannot be checked", output)
        return
    saved = read_json(saved_path)
    diffs = [f"--{k.replace('_', '-')}: checkpoint {saved['config'].get(k)!r}, now {config[k]!r}"
             for k in fields if saved["config"].get(k) != config[k]]
    if saved.get("data_fingerprint") not in (None, fingerprint):
        diffs.append("--samples: the samples' content changed since the checkpoint")
    if diffs:
        raise ConfigError(diffs + [f"resume with the original settings, or use a new --output / --resume none after "
                                   f"removing {output}/step-*"], source=f"resuming {output}")
