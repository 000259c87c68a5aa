"""The training loop: LoRA (or every weight) tuned on packed soft labels, exactly resumable, N processes = one.

- **Settings** (:class:`TrainParams`): the loop's settings and nothing else (``lightreasoner train`` builds them
  from its config, ``lightreasoner sft`` from its own). Defaults are the paper's: LoRA r 8, alpha 16, dropout
  0.05 on q_proj and v_proj (or every weight with ``full``); AdamW, lr 5e-5, linear decay, no warm-up, gradient
  clipping at 1.0, seed 42, 16 kept steps per update.
- **Updates** (:func:`train_update`): each update's kept steps (:func:`packing.plan_updates`) are split across
  ranks; every rank scales its summed loss by ``world_size / kept_steps_in_update``, so the averaged gradient is
  the global mean: N processes give the result of one. All ranks run the same number of micro-batches (idle ranks
  run an empty one), which DDP, FSDP and DeepSpeed ZeRO all require. A non-finite loss or gradient norm stops the
  run before anything of that state is written.
- **Records** (:func:`train`): checkpoints ``step-000200/`` (:mod:`lightreasoner.checkpoint`: safetensors + JSON,
  nothing is unpickled; ``resume="auto"`` continues exactly), ``train_config.json`` (settings, data fingerprint,
  environment), ``metrics.jsonl`` (+ TensorBoard / wandb, :class:`MetricsLogger`), then the adapter (or full
  model), the tokenizer and ``summary.json`` last.

Python use::

    trajs, stats = trajectories.load_training_examples("samples.jsonl", tokenizer)
    summary = train(model, tokenizer, trajs, TrainParams(max_steps=100), "out")
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from . import checkpoint as ck
from . import modelcard, models
from .config import ConfigError, flag, to_dict
from .generation import pad_id_of
from .packing import (KeptLogitsLM, Update, attention_backends, collate, empty_batch, micro_batches, packed_loss,
                      plan_updates, shard_pieces)
from .trajectories import Trajectory, data_fingerprint
from .utils import InputError, environment_info, read_complete_jsonl, read_json, write_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    """The training loop's settings (``lightreasoner train``'s flags of the same names; defaults are the paper's)."""

    # What is learnt: a resumed run must keep these (RESUME_FIELDS).
    steps_per_update: int = 16  # kept steps per optimizer update (the authors' 8 x 2 accumulation)
    max_steps: int = 1000  # optimizer updates (ignored when epochs is set)
    epochs: float | None = None  # passes over the kept steps instead of max_steps (fractions allowed)
    lr: float = 5e-5  # peak learning rate (AdamW)
    weight_decay: float = 0.0
    lr_scheduler: str = "linear"  # after warm-up: linear decay to 0, or constant
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0  # None: no clipping
    seed: int = 42  # LoRA init, data order, dropout
    full: bool = False  # every weight (float32 master weights, bf16 autocast where the hardware has it)
    lora_r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # or ("all-linear",)
    gradient_checkpointing: bool = False
    max_tokens_per_forward: int = 4096  # bound on a forward's padded tokens (rows x longest row)
    # How the run goes.
    dtype: str = "auto"  # the model's weights' dtype: with full, bf16/fp16 sets the autocast
    stop_after: int | None = None  # stop this run after this many updates in total, keeping a checkpoint
    save_every: int | None = 200  # checkpoint step-NNNNNN/ every this many updates
    keep_checkpoints: int | None = 2  # newest checkpoints kept (None: all)
    resume: str = "auto"  # auto, none, or a step-NNNNNN folder
    log_every: int = 10
    tensorboard: bool = True
    wandb: str | None = None  # a Weights & Biases project

    def validate(self) -> list[str]:
        """Every problem of these settings, each naming its flag (:func:`config.flag`)."""
        p = []
        for name in ("steps_per_update", "max_steps", "lora_r", "max_tokens_per_forward", "log_every"):
            if getattr(self, name) < 1:
                p.append(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_checkpoints", "stop_after"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"{flag(name)} must be >= 1 or none, got {v}")
        if self.epochs is not None and not self.epochs > 0:
            p.append(f"{flag('epochs')} must be > 0, got {self.epochs}")
        if not self.lr > 0:
            p.append(f"{flag('lr')} must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            p.append(f"{flag('weight_decay')} must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            p.append(f"{flag('warmup_steps')} must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            p.append(f"{flag('max_grad_norm')} must be > 0 or none, got {self.max_grad_norm}")
        if not 0 <= self.lora_dropout < 1:
            p.append(f"{flag('lora_dropout')} must be in [0, 1), got {self.lora_dropout}")
        if not self.lora_targets:
            p.append(f"{flag('lora_targets')} needs at least one module name (or all-linear)")
        if self.resume not in ("auto", "none") and not ck.CHECKPOINT_RE.match(Path(self.resume).name):
            p.append(f"{flag('resume')} must be auto, none or a step-NNNNNN checkpoint folder, got {self.resume!r}")
        return p


# The settings a resumed run must share with its checkpoint (the data is compared by content: data_fingerprint).
RESUME_FIELDS = ("steps_per_update", "max_steps", "epochs", "lr", "weight_decay", "lr_scheduler", "warmup_steps",
                 "max_grad_norm", "seed", "full", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
                 "gradient_checkpointing", "max_tokens_per_forward")


def apply_lora(model: nn.Module, params: TrainParams) -> nn.Module:
    """Wrap ``model`` with a PEFT LoRA adapter (weights in float32 whatever the model's dtype)."""
    from peft import LoraConfig, TaskType, get_peft_model

    targets: Any = "all-linear" if tuple(params.lora_targets) == ("all-linear",) else list(params.lora_targets)
    lcfg = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=targets, bias="none", task_type=TaskType.CAUSAL_LM)
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as e:
        raise ConfigError([f"--lora-targets {','.join(params.lora_targets)}: {e}"]) from None
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model


def make_accelerator(params: TrainParams) -> Any:
    """An Accelerator for this run: bf16 autocast for ``--full`` where the hardware has bf16."""
    from accelerate import Accelerator

    device = models.default_device()
    mp = "no"
    if params.full:
        mp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(models.resolve_dtype(params.dtype, device), "no")
    # cpu=True lets plain `torchrun` on a machine without accelerators run DDP over gloo.
    acc = Accelerator(mixed_precision=mp, step_scheduler_with_optimizer=False,
                      cpu=device == "cpu")
    ds = getattr(acc.state, "deepspeed_plugin", None)
    if ds is not None:  # no dataloader is prepared: tell DeepSpeed the micro-batch and our clipping
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = 1
        ds.deepspeed_config["gradient_accumulation_steps"] = 1
        if params.max_grad_norm is not None:
            ds.deepspeed_config["gradient_clipping"] = params.max_grad_norm
    return acc


def linear_schedule(total: int, warmup: int = 0, constant: bool = False):
    """lr factor at update ``step`` (from 0), as transformers' ``get_linear_schedule_with_warmup`` (or
    ``get_constant_schedule_with_warmup``): linear warm-up from 0 over ``warmup`` updates, then linear decay to 0 at
    ``total`` or (``constant``) the peak rate throughout."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 1.0 if constant else max(0.0, (total - step) / max(1, total - warmup))
    return factor



def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


class MetricsLogger:
    """Every ``log_every`` updates: one JSONL record (``metrics.jsonl``), TensorBoard and wandb (main process).

    ``config``: the run's settings, given to wandb."""

    def __init__(self, out: Path, params: TrainParams, start: int, enabled: bool, config: Mapping[str, Any]):
        self.path, self.enabled, self.tb, self.wb = out / "metrics.jsonl", enabled, None, None
        self._reset()
        if not enabled:
            return
        # A resumed run drops what an interrupted one logged after its last checkpoint.
        kept = [r for r in read_complete_jsonl(self.path) if r.get("update", 0) <= start]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if params.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1)
            except ImportError:
                logger.warning("tensorboard is not installed; logging to metrics.jsonl only")
        if params.wandb:
            try:
                import wandb

                self.wb = wandb.init(project=params.wandb, config=dict(config), name=out.name, resume="allow")
            except ImportError:
                logger.warning("--wandb given but wandb is not installed (pip install wandb); skipping it")

    def _reset(self) -> None:
        self.loss, self.updates, self.steps, self.tokens, self.t0 = 0.0, 0, 0, 0, time.perf_counter()

    def add(self, loss: float, steps: int, tokens: int) -> None:
        self.loss, self.updates = self.loss + loss, self.updates + 1
        self.steps, self.tokens = self.steps + steps, self.tokens + tokens

    def flush(self, update: int, **extra: Any) -> None:
        """Write the mean loss and the throughput since the last flush, with ``extra`` (lr, grad norm, ...)."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rec = {"update": update, "loss": self.loss / max(1, self.updates), **extra,
               "kept_steps_per_s": self.steps / dt, "tokens_per_s": self.tokens / dt}
        self._reset()
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "update" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, update)
        if self.wb is not None:
            self.wb.log(rec, step=update)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def prepare_model(model: nn.Module, params: TrainParams) -> nn.Module:
    """Gradient checkpointing, no KV cache, then LoRA (or every weight trainable with ``--full``); train mode."""
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    if params.full:
        model.requires_grad_(True)
    else:
        model = apply_lora(model, params)
    return model.train()


def train_update(acc: Any, model: nn.Module, optimizer: Any, scheduler: Any, trajectories: Sequence[Trajectory],
                 update: Update, params: TrainParams, pad_id: int) -> dict[str, float]:
    """One optimizer update on ``update``'s kept steps (this rank's share), then clip, step, schedule.

    Returns the update's global mean loss, the forwarded tokens (all ranks), the pre-clip gradient norm and the lr
    it used. A non-finite loss or gradient norm raises (:func:`check_finite`) before the caller writes anything.
    """
    world, rank = acc.num_processes, acc.process_index
    shards = [micro_batches(trajectories, shard_pieces(update.pieces, world, r), params.max_tokens_per_forward)
              for r in range(world)]
    mine, n_micro = shards[rank], max(len(s) for s in shards)  # every rank runs n_micro forwards
    loss_sum = torch.zeros((), device=acc.device)
    tokens = 0
    for i in range(n_micro):
        batch = collate(trajectories, mine[i], pad_id) if i < len(mine) else empty_batch(pad_id)
        last = i == n_micro - 1
        acc.sync_gradients = last  # DeepSpeed's accumulation boundary; the optimizer steps only when True
        with (contextlib.nullcontext() if last else acc.no_sync(model)), acc.autocast(), \
                attention_backends(acc.device):
            loss, _ = packed_loss(model, batch.to(acc.device))
            acc.backward(loss * (world / update.n_steps))  # sum / global kept steps; DDP averages over ranks
        loss_sum += loss.detach()
        tokens += batch.n_tokens
    trainable = [p for p in model.parameters() if p.requires_grad]
    grad_norm = acc.clip_grad_norm_(trainable, params.max_grad_norm if params.max_grad_norm else float("inf"))
    lr = scheduler.get_last_lr()[0]
    skipped = step_optimizer(acc, optimizer, scheduler)
    optimizer.zero_grad(set_to_none=True)
    totals = torch.stack([loss_sum.float(), torch.tensor(float(tokens), device=acc.device)])
    totals = acc.reduce(totals, reduction="sum") if world > 1 else totals
    norm = grad_norm if torch.is_tensor(grad_norm) else torch.tensor(math.nan if grad_norm is None else grad_norm)
    loss, n_tokens, norm_value = torch.cat([totals, norm.detach().float().reshape(1).to(totals.device)]).tolist()
    check_finite(update.index + 1, loss / update.n_steps, None if grad_norm is None or skipped else norm_value,
                 params)
    return {"loss": loss / update.n_steps, "tokens": int(n_tokens), "lr": lr, "grad_norm": norm_value}


def step_optimizer(acc: Any, optimizer: Any, scheduler: Any) -> bool:
    """The optimizer's step, then the schedule's, unless fp16's loss scaler skipped the step: its gradients
    overflowed, so it lowers its scale and leaves the weights and the lr as they were (as transformers' Trainer
    does); the update counts, and its inf gradient norm is the scaler's business, not a divergence. Returns
    whether the step was skipped."""
    optimizer.step()
    skipped = acc.scaler is not None and acc.optimizer_step_was_skipped
    if skipped:
        logger.info("fp16 loss scaler: gradients overflowed; this update is skipped and the scale lowered")
    else:
        scheduler.step()
    return skipped


def check_finite(update: int, loss: float, grad_norm: float | None, params: TrainParams) -> None:
    """Stop on a non-finite loss or gradient norm at ``update``: every later update and checkpoint would be NaN."""
    for what, value in (("loss", loss), ("gradient norm", grad_norm)):
        if value is not None and not math.isfinite(value):
            lora = "" if params.full else (f" or LoRA scale (--lora-alpha {params.lora_alpha} / --lora-r "
                                           f"{params.lora_r})")
            raise InputError(f"{what} is {value} at update {update}: the learning rate (--lr {params.lr}){lora} may "
                             f"be too large, or the samples hold non-finite labels. Nothing of this state was saved; "
                             f"lower --lr (or fix the samples) and train again")


def train(model: nn.Module, tokenizer: Any, trajectories: Sequence[Trajectory], params: TrainParams,
          output_dir: str | Path, *, accelerator: Any = None, data_stats: dict | None = None,
          expert: dict | None = None, config: Mapping[str, Any] | None = None) -> dict:
    """Train ``model`` (LoRA unless ``params.full``) on ``trajectories``; write the adapter and records to
    ``output_dir``; return the summary (``finished: False`` when ``params.stop_after`` cut the run short).

    ``model`` is modified in place (LoRA layers are injected). Resumes from ``output_dir``'s newest checkpoint
    with ``params.resume == "auto"``; the settings in RESUME_FIELDS and the data must then be the checkpoint's.
    ``data_stats`` and ``expert`` (:meth:`models.LoadedModel.describe`) go into the records; ``config``, the
    caller's own settings (a stage's config), is recorded with the params in ``train_config.json``.
    """
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    out = Path(output_dir)
    acc = accelerator or make_accelerator(params)
    main_proc, world = acc.is_main_process, acc.num_processes
    fp = data_fingerprint(trajectories)
    settings = {**(config or {}), **to_dict(params)}
    if (out / "summary.json").is_file() and params.resume == "auto":
        ck.check_resumable(out, settings, RESUME_FIELDS, fp)
        logger.info("%s already holds a finished run; nothing to do", out)
        return read_json(out / "summary.json")
    found = ck.candidates(out, params.resume)
    ck.require_supported(acc.distributed_type, saves=bool(params.save_every or params.stop_after),
                         resumes=bool(found))
    if found:  # against the run the checkpoint came from (--resume DIR may name another run's)
        ck.check_resumable(out if params.resume == "auto" else found[0].parent, settings, RESUME_FIELDS, fp)
    plan = plan_updates([t.n_steps for t in trajectories], params.steps_per_update, max_steps=params.max_steps,
                        epochs=params.epochs, seed=params.seed)
    total = len(plan)
    pad_id = pad_id_of(tokenizer)  # right padding: never read (causal mask)
    if world > params.steps_per_update and main_proc:
        logger.warning("%d processes share %d kept steps per update: some run empty micro-batches", world,
                       params.steps_per_update)

    # Model, optimizer, schedule; only trainable weights go into checkpoints.
    set_seed(params.seed)
    model = prepare_model(model, params)
    wrapper = KeptLogitsLM(model)
    n_trainable = sum(p.numel() for p in wrapper.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=params.lr,
                                  weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, linear_schedule(total, params.warmup_steps, constant=params.lr_scheduler == "constant"))
    wrapper, optimizer = acc.prepare(wrapper, optimizer)

    # State carried across resumes.
    state: dict[str, Any] = {"update": 0, "kept_steps": 0, "forward_tokens": 0, "trajectory_forwards": 0,
                             "train_time_s": 0.0, "first_loss": None, "last_loss": None}
    ckpt = ck.resume(acc, acc.unwrap_model(wrapper), optimizer, scheduler, found,
                     explicit=params.resume not in ("auto", "none"))
    if ckpt is not None:
        state.update(ckpt.state)
    start, stop = state["update"], min(total, params.stop_after or total)
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "train_config.json", {
            "config": settings, "data_fingerprint": fp, "data": data_stats or {}, "expert": expert or {},
            "world_size": world, "trainable_parameters": n_trainable, "updates": total,
            "environment": environment_info()})
        logger.info("%s: %d updates of %d kept steps over %d trajectories on %d process(es) (%s, %s), %d trainable "
                    "parameters%s", "full fine-tuning" if params.full else f"LoRA r {params.lora_r}", total,
                    params.steps_per_update, len(trajectories), world, str(acc.distributed_type).split(".")[-1],
                    acc.device, n_trainable, f"; resuming from {ckpt.folder} at update {start}" if ckpt else "")
    metrics = MetricsLogger(out, params, start, enabled=main_proc, config=settings)

    # The loop.
    bar = tqdm(total=stop, initial=start, desc="train", unit="update", disable=not main_proc)
    t_run, time_before = time.perf_counter(), state["train_time_s"]
    for upd in plan[start:stop]:
        r = train_update(acc, wrapper, optimizer, scheduler, trajectories, upd, params, pad_id)
        done = state["update"] = upd.index + 1
        state["kept_steps"] += upd.n_steps
        state["forward_tokens"] += r["tokens"]
        state["trajectory_forwards"] += len(upd.pieces)
        state["first_loss"] = r["loss"] if state["first_loss"] is None else state["first_loss"]
        state["last_loss"] = r["loss"]
        state["train_time_s"] = time_before + time.perf_counter() - t_run
        metrics.add(r["loss"], upd.n_steps, r["tokens"])
        bar.update(1)
        bar.set_postfix(loss=f"{r['loss']:.4f}")
        if done % params.log_every == 0 or done == stop:
            metrics.flush(done, epoch=round(_epochs_seen(plan, upd, trajectories), 4), lr=r["lr"],
                          grad_norm=r["grad_norm"], peak_memory_gb=_peak_memory(acc.device) / 2**30,
                          kept_steps_seen=state["kept_steps"], elapsed_s=state["train_time_s"])
        if (params.save_every and done % params.save_every == 0 and done < total) or (done == stop < total):
            ck.save(acc, acc.unwrap_model(wrapper), optimizer, scheduler, out / f"step-{done:06d}", state,
                    keep=params.keep_checkpoints, adapter=None if params.full else  # every rank gets the state dict
                    (acc.unwrap_model(wrapper).lm, _lm_state(acc.get_state_dict(wrapper))))
    bar.close()
    metrics.close()
    if state["update"] < total:  # --stop-after: a checkpoint was left to resume from
        if main_proc:
            logger.info("stopped after update %d of %d; run again (--resume auto) to continue", state["update"],
                        total)
        return {"finished": False, **state}

    # Final outputs: adapter (or full model), tokenizer, summary.
    model.eval()
    full_state = acc.get_state_dict(wrapper)  # gathers shards under FSDP / ZeRO-3 (every rank must call it)
    summary = {
        "finished": True, "updates": total, "tuned_tokens": state["kept_steps"],
        "kept_steps_seen": state["kept_steps"],
        "trajectories": len(trajectories), "trajectory_forwards": state["trajectory_forwards"],
        "forward_tokens": state["forward_tokens"], "kept_steps_in_data": sum(t.n_steps for t in trajectories),
        "epochs": round(state["kept_steps"] / max(1, sum(t.n_steps for t in trajectories)), 4),
        "first_loss": state["first_loss"], "final_loss": state["last_loss"],
        "train_time_s": round(state["train_time_s"], 3), "wall_time_s": round(time.perf_counter() - t_start, 3),
        "world_size": world, "trainable_parameters": n_trainable, "mode": "full" if params.full else "lora",
        "model_dtype": models.dtype_name(model),
        "peak_memory_gb": _peak_memory(acc.device) / 2**30, "data": data_stats or {}, "expert": expert or {},
    }
    if main_proc:
        _save_model(acc.unwrap_model(wrapper).lm, _lm_state(full_state), tokenizer, out, expert, params.full)
        write_json(out / "summary.json", summary)
        logger.info("trained %d updates (%d kept steps) in %.1f s; loss %.4f -> %.4f; written to %s", total,
                    state["kept_steps"], state["train_time_s"], state["first_loss"], state["last_loss"], out)
    acc.wait_for_everyone()
    return summary


def _epochs_seen(plan: Sequence[Update], upd: Update, trajs: Sequence[Trajectory]) -> float:
    """Epochs of kept steps read when ``upd`` ends, as transformers logs ``epoch`` (2.25: a quarter into the third;
    the stream runs on across epochs, so an update that straddles two counts exactly)."""
    return sum(u.n_steps for u in plan[:upd.index + 1]) / sum(t.n_steps for t in trajs)


def _lm_state(state: dict) -> dict:
    """The LM's entries of a :class:`KeptLogitsLM` state dict, without the ``lm.`` prefix."""
    return {k[len("lm."):]: v for k, v in state.items() if k.startswith("lm.")}


def _save_model(lm: nn.Module, state: dict, tokenizer: Any, out: Path, expert: dict | None, full: bool) -> None:
    """The adapter (PEFT saves only it; the whole model with ``full``) and the tokenizer, fsynced, so that they are
    on disk before ``summary.json`` marks the run done. An adapter's base is named as PEFT and the hub resolve it
    (:func:`modelcard.set_adapter_base`), for ``train`` and ``sft`` alike."""
    lm.save_pretrained(out, state_dict=state)
    if not full and expert and (expert.get("base_model") or expert.get("spec")):
        modelcard.set_adapter_base(out, expert)
    tokenizer.save_pretrained(out)
    ck.fsync_tree(out)
