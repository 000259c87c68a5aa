"""``lightreasoner train``: teach the expert the contrastive soft labels (the stage: config, identity, main).

The recipe lives in the library: the samples become trajectories (:mod:`.trajectories`: our records or the
authors' per-step rows, manifest and label checks), updates are planned and packed (:mod:`.packing`: one forward
per trajectory, logits only at kept steps, KL to the soft label), and the loop runs them (:mod:`.training`: LoRA
or full, accelerate, exact resume, metrics). This module turns the command's flags into a
:class:`training.TrainParams` (:func:`train_params`), checks the samples belong to the expert (before the model
loads; for a hub expert, whose fingerprint needs its files, right after), writes the model card
(:mod:`.modelcard`; the loop names the adapter's base as PEFT and the hub resolve it), and marks the output
folder done (``meta.json`` last, :class:`layout.StageRun`).

Distributed: ``accelerate launch [--config_file configs/accelerate/ddp.yaml] -m lightreasoner train ...``
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoint as ck
from . import embedded, layout, modelcard, models
from .api import expose
from .config import Checked, flag, option, to_dict
from .heads import check_output_logits
from .prompts import DEFAULT_SYSTEM_PROMPT
from .trajectories import MAX_LENGTH, check_token_range, check_manifest, load_training_examples
from .training import TrainParams, make_accelerator, train
from .utils import writes_output

logger = logging.getLogger(__name__)

D = TrainParams()  # the loop's defaults (the paper's): one home, shared with sft


@dataclass(frozen=True)
class TrainConfig(Checked):
    """LoRA-tune the expert on the contrastive soft labels written by `lightreasoner sample` (or the authors'
    per-step files), one packed forward pass per trajectory. Defaults are the paper's.

    Distributed: accelerate launch [--config_file configs/accelerate/ddp.yaml] -m lightreasoner train ...
    """

    samples: str = option(help="samples: our JSONL/Parquet records, the authors' per-step JSONL/Parquet, or a hub "
                               "dataset id of either")
    output: str = option(help="output folder: PEFT adapter, config, metrics, checkpoints, summary", result=False)
    expert: str = option(embedded.DEFAULT_EXPERT, help="expert model: embedded name, .gguf file, checkpoint folder "
                                                       "or hub id (must be the model the samples came from)",
                         run_sets=True)
    expert_revision: str | None = option(None, help="branch, tag or commit of a hub --expert (none: its main "
                                                    "branch)", run_sets=True, result=False)  # in its fingerprint
    samples_split: str = option("train", help="split to read when --samples is a hub dataset")
    force: bool = option(False, help="train even if the samples' manifest names another expert (warns)",
                         result=False)
    system_prompt: str = option(DEFAULT_SYSTEM_PROMPT,
                                help="system prompt used to rebuild contexts of the authors' per-step records")
    steps_per_update: int = option(D.steps_per_update, help="kept steps per optimizer update (the authors' 8 x 2 "
                                                            "accumulation)")
    max_steps: int = option(D.max_steps, help="optimizer updates to run (ignored when --epochs is set)")
    epochs: float | None = option(D.epochs, help="train for this many passes over the kept steps instead of "
                                                 "--max-steps (fractions allowed)")
    stop_after: int | None = option(D.stop_after, help="stop this run after this many updates in total, keeping a "
                                                       "checkpoint (the schedule still spans the full run; rerun to "
                                                       "resume)", result=False)
    lr: float = option(D.lr, help="peak learning rate (AdamW)")
    weight_decay: float = option(D.weight_decay, help="AdamW weight decay")
    lr_scheduler: str = option(D.lr_scheduler, help="learning-rate schedule after warm-up: linear decay to 0, or "
                                                    "constant", choices=("linear", "constant"))
    warmup_steps: int = option(D.warmup_steps, help="updates of linear warm-up from 0 before the schedule (as "
                                                    "transformers')")
    max_grad_norm: float | None = option(D.max_grad_norm, help="clip the gradient norm to this (none: no clipping)")
    seed: int = option(D.seed, help="seed for LoRA init, data order and dropout", run_sets=True)
    full: bool = option(D.full, help="train every weight (float32 master weights, bf16 autocast where the hardware "
                                     "has it) instead of LoRA")
    lora_r: int = option(D.lora_r, help="LoRA rank")
    lora_alpha: float = option(D.lora_alpha, help="LoRA alpha (scale alpha/r)")
    lora_dropout: float = option(D.lora_dropout, help="dropout on the LoRA input")
    lora_targets: tuple[str, ...] = option(D.lora_targets, help="module names LoRA adapts (comma-separated), or "
                                                                "all-linear")
    dtype: str = option(D.dtype, help="model weights' dtype (auto: bf16 where the hardware computes it natively); "
                                      "LoRA weights and optimizer state stay float32", choices=models.DTYPES,
                        run_sets=True)
    gradient_checkpointing: bool = option(D.gradient_checkpointing, help="recompute activations in the backward "
                                                                         "pass (less memory)")
    max_length: int = option(MAX_LENGTH, help="longest context in tokens; longer ones keep their end (left-truncated)")
    max_tokens_per_forward: int = option(D.max_tokens_per_forward, help="bound on a forward pass's padded tokens "
                                         "(rows x longest row); an update runs as several micro-batches if needed")
    save_every: int | None = option(D.save_every, help="save a checkpoint step-NNNNNN/ every this many updates",
                                    result=False)
    keep_checkpoints: int | None = option(D.keep_checkpoints, help="keep only the newest this many checkpoints "
                                                                   "(none: all)", result=False)
    resume: str = option(D.resume, help="auto: continue from the newest complete checkpoint in --output; none: "
                                        "start fresh (refuses a folder with checkpoints); or a step-NNNNNN folder",
                         result=False)
    log_every: int = option(D.log_every, help="log metrics every this many updates", result=False)
    tensorboard: bool = option(D.tensorboard, help="also log to TensorBoard (OUTPUT/tensorboard)", result=False)
    wandb: str | None = option(D.wandb, help="also log to this Weights & Biases project (needs wandb installed)",
                               result=False)
    skip_bad_rows: bool = option(False, help="skip malformed JSONL lines instead of stopping")
    trust_remote_code: bool = option(False, help="allow model code from the hub", result=False)
    rerun: bool = option(False, help="redo the stage when --output holds a training run of other settings (it is "
                                     "deleted)", result=False, saved=False, run_sets=True)

    def validate(self) -> list[str]:
        """The loop's settings (:meth:`training.TrainParams.validate`) and the data's."""
        p = train_params(self).validate()
        if self.max_length < 2:
            p.append(f"{flag('max_length')} must be >= 2, got {self.max_length}")
        revision = models.revision_problem(self.expert, self.expert_revision, flag("expert_revision"))
        return p + ([revision] if revision else [])


def train_params(cfg: TrainConfig) -> TrainParams:
    """The loop's settings from the command's config (the flags of the same names)."""
    return TrainParams(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainParams)})


def samples_input(samples: str) -> str:
    """The samples' fingerprint as train's input: the sampling stage's (its meta.json), a file's content hash,
    or a hub dataset id."""
    path = Path(samples).expanduser()
    if path.is_file():
        meta = layout.read_meta(path.parent)
        if meta is not None and meta.get("stage") == "sample" and meta.get("samples") == path.name:
            return meta["fingerprint"]
        return layout.file_hash(path)
    return f"hub:{samples}"


def identity(cfg: TrainConfig, **inputs: str) -> dict:
    """The training stage's identity (see :mod:`.layout`)."""
    found = {"samples": lambda: samples_input(cfg.samples),
             "expert": lambda: layout.model_input(cfg.expert, cfg.expert_revision)}
    return layout.stage_identity("train", cfg, {k: inputs.get(k) or f() for k, f in found.items()})


@writes_output("train", kind="folder")
def main(cfg: TrainConfig) -> int:
    """``lightreasoner train``: check the samples belong to the expert, read them, load the expert, train.

    The cheap checks come first (manifest fingerprint, then the samples with the tokenizer), so a wrong or
    malformed samples file fails before the model loads (a hub expert's fingerprint is checked once it is
    loaded). One writer per output folder (:func:`utils.output_lock`, held on every rank).
    """
    params = train_params(cfg)
    acc = make_accelerator(params)
    ck.require_supported(acc.distributed_type, saves=bool(cfg.save_every or cfg.stop_after), resumes=False)
    src = models.resolve_source(cfg.expert, prepare=False)
    stage = layout.StageRun(cfg.output, identity(cfg), rerun=cfg.rerun and acc.is_main_process,
                            writer=acc.is_main_process)
    if stage.done:
        logger.info("%s is complete for these settings; nothing to do", cfg.output)
        return 0
    with stage:
        return _train_stage(cfg, params, acc, src, stage)


def _train_stage(cfg: TrainConfig, params: TrainParams, acc: Any, src: models.ModelSource,
                 stage: layout.StageRun) -> int:
    if src.kind != "hub":  # these fingerprints need no loaded model
        check_manifest(cfg.samples, models.fingerprint(src), cfg.force)
    tokenizer = models.load_tokenizer(cfg.expert, trust_remote_code=cfg.trust_remote_code,
                                      revision=cfg.expert_revision)
    trajs, stats = load_training_examples(cfg.samples, tokenizer, max_length=cfg.max_length,
                                          split=cfg.samples_split, skip_bad_rows=cfg.skip_bad_rows,
                                          system_prompt=cfg.system_prompt, force=cfg.force)
    if acc.is_main_process:
        logger.info("%d trajectories, %d kept steps (%s format, %d records)", stats["trajectories"],
                    stats["kept_steps"], stats["format"], stats["records"])
    loaded = models.load_model(cfg.expert, dtype="float32" if cfg.full else cfg.dtype, device=str(acc.device),
                               trust_remote_code=cfg.trust_remote_code, revision=cfg.expert_revision)
    if src.kind == "hub":
        check_manifest(cfg.samples, loaded.fingerprint, cfg.force)
    check_token_range(trajs, loaded.vocab_rows)
    check_output_logits(loaded.model, f"expert {cfg.expert!r}")  # the logits training reads at kept steps
    if acc.is_main_process:
        stage.start(resolved={"dtype": loaded.describe()["dtype"]})
    summary = train(loaded.model, loaded.tokenizer, trajs, params, cfg.output, accelerator=acc, data_stats=stats,
                    expert=loaded.describe(), config=to_dict(cfg))
    if not summary.get("finished", True):
        return 0 if cfg.stop_after else 1
    if acc.is_main_process:
        expert = loaded.describe()
        write_card(cfg, expert, stage.identity)
        stage.finish(config=to_dict(cfg), counts={k: summary.get(k) for k in (
            "updates", "tuned_tokens", "trajectories", "kept_steps_in_data", "forward_tokens")},
            extra={"expert": expert, "train_time_s": summary.get("train_time_s")})
    return 0


def write_card(cfg: TrainConfig, expert: dict, ident: dict) -> None:
    """Write the model card (the settings: the stage's identity; the data: the samples' manifest), before
    meta.json. The adapter's base is already named as PEFT and the hub resolve it (the training loop's
    :func:`modelcard.set_adapter_base`)."""
    data = modelcard.training_data(cfg.samples, ident["inputs"].get("samples"))
    modelcard.write(cfg.output, modelcard.Card("full" if cfg.full else "adapter", expert, ident["settings"], data,
                                               folder=cfg.output))


expose(__name__, TrainConfig, main)  # lightreasoner.train(cfg) runs the stage (see .api)
