"""``lightreasoner merge``: fold a LoRA adapter (from ``lightreasoner train``) into the expert and write a standalone
safetensors model with its tokenizer, chat template and model card (``README.md``, :mod:`.modelcard`), whose outputs
equal base + adapter.

The fold itself is :func:`adapters.merge_adapter` (float32, then each tensor's own dtype); the stage checks the
adapter was trained on this expert (its ``summary.json``), saves in the base checkpoint's own dtype by default,
fsyncs every file and writes ``meta.json`` last (:class:`layout.StageRun`), so a merge killed part-way is not done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from . import embedded, layout, modelcard, models
from .adapters import merge_adapter, stored_dtype
from .checkpoint import fsync_file
from .api import expose
from .config import Checked, flag, option, to_dict
from .utils import InputError, read_json, writes_output

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeConfig(Checked):
    """Merge a LoRA adapter (from `lightreasoner train`) into the expert: a standalone safetensors model with its
    tokenizer and chat template, whose outputs equal base + adapter."""

    adapter: str = option(help="adapter folder written by lightreasoner train")
    output: str = option(help="folder for the merged model", result=False)
    expert: str = option(embedded.DEFAULT_EXPERT, help="the base model the adapter was trained on (same forms as "
                                                       "for train)", run_sets=True)
    expert_revision: str | None = option(None, help="branch, tag or commit of a hub --expert (none: its main "
                                                    "branch)", run_sets=True, result=False)  # in its fingerprint
    dtype: str = option("auto", help="dtype to save (auto: the base checkpoint's own dtype); the merge itself is "
                                     "computed in float32", choices=models.DTYPES)
    force: bool = option(False, help="merge even if the adapter was trained on another expert (warns)",
                         result=False)
    trust_remote_code: bool = option(False, help="allow model code from the hub", result=False)
    rerun: bool = option(False, help="redo the merge when --output holds one of other inputs (it is deleted)",
                         result=False, saved=False, run_sets=True)

    def validate(self) -> list[str]:
        revision = models.revision_problem(self.expert, self.expert_revision, flag("expert_revision"))
        return [revision] if revision else []


def merge_identity(cfg: MergeConfig, **inputs: str) -> dict:
    """The merge stage's identity: the adapter's training stage (or the adapter files) and the expert."""
    found = {"adapter": lambda: layout.output_fingerprint(cfg.adapter) or layout.fingerprint(
                 {p.name: layout.file_hash(p) for p in sorted(Path(cfg.adapter).glob("adapter_*"))}),
             "expert": lambda: layout.model_input(cfg.expert, cfg.expert_revision)}
    return layout.stage_identity("merge", cfg, {k: inputs.get(k) or f() for k, f in found.items()})


@writes_output("merge", kind="folder", single_process=True)
def merge_main(cfg: MergeConfig) -> int:
    """``lightreasoner merge``: write base + adapter as one standalone model."""
    adapter = Path(cfg.adapter)
    models.resolve_source(cfg.expert, prepare=False)
    if not (adapter / "adapter_config.json").is_file():
        hint = " (it holds a full model: --full training needs no merge)" if (adapter / "config.json").is_file() \
            else ""
        raise InputError(f"--adapter {cfg.adapter}: no adapter_config.json{hint}; point to a lightreasoner train "
                         f"output folder")
    with layout.StageRun(cfg.output, merge_identity(cfg), rerun=cfg.rerun) as stage:
        if stage.done:
            logger.info("%s is complete for these inputs; nothing to do", cfg.output)
            return 0
        return _merge(cfg, adapter, stage)


def _merge(cfg: MergeConfig, adapter: Path, stage: layout.StageRun) -> int:
    loaded = models.load_model(cfg.expert, dtype="float32", device="cpu", trust_remote_code=cfg.trust_remote_code,
                               revision=cfg.expert_revision)
    trained_on = None
    if (adapter / "summary.json").is_file():
        trained_on = (read_json(adapter / "summary.json").get("expert") or {}).get("fingerprint")
    if trained_on not in (None, loaded.fingerprint):
        msg = f"the adapter was trained on {trained_on}, but --expert {cfg.expert} is {loaded.fingerprint}"
        if not cfg.force:
            raise InputError(msg + "; pass the expert it was trained on, or --force")
        logger.warning("%s (--force: merging anyway)", msg)
    merged = merge_adapter(loaded.model, adapter)
    dtype = stored_dtype(loaded.source) if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    merged = merged.to(dtype)
    if getattr(merged.config, "quantization_config", None) is not None:  # a GGUF-loaded base
        del merged.config.quantization_config
    out = Path(cfg.output)
    stage.start()
    merged.save_pretrained(out)
    loaded.tokenizer.save_pretrained(out)
    expert, dtype_name = loaded.describe(), models.dtype_name(dtype)
    settings, data = modelcard.adapter_facts(adapter)  # the card: the adapter's training settings and data
    modelcard.write(out, modelcard.Card("merged", expert, {**settings, "merged_dtype": dtype_name}, data,
                                        folder=cfg.output))
    for f in out.iterdir():
        if f.is_file():
            fsync_file(f)
    stage.finish(config=to_dict(cfg), counts={"parameters": sum(p.numel() for p in merged.parameters())},
                 extra={"expert": expert, "dtype": dtype_name})
    logger.info("merged %s + %s -> %s (%s)", cfg.expert, cfg.adapter, out, dtype_name)
    return 0


expose(__name__, MergeConfig, merge_main, command="merge")  # lightreasoner.merge(cfg) runs the stage (see .api)
