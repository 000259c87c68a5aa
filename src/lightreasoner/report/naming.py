"""How the report names models: which weights (and which quantization) sampling used and each evaluation measured.

Read from the stages' own records (``sample/meta.json``'s expert and amateur, each ``eval/<name>/meta.json``'s
model, else the ``config.json`` an unfinished evaluation writes first), as :meth:`models.LoadedModel.describe`
wrote them; :func:`models.weights_line` turns one into a line, spelling out an embedded model from
:data:`embedded.EMBEDDED` (one home for those facts) when an older record names it only by its short name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..layout import read_meta
from ..models import weights_line
from ..utils import InputError, read_json
from .data import RUN_NAMES, RunData


def sampled_models(data: RunData) -> list[str]:
    """``expert: ...`` and ``amateur: ...`` lines: the models sampling ran (its meta.json), else the run
    config's names."""
    meta = data.sample_meta or {}
    out = []
    for role in ("expert", "amateur"):
        described = meta.get(role) if isinstance(meta.get(role), dict) else None
        name = data.config_value(role)
        if described is None and name:
            described = {"spec": name}
        if described is not None:
            out.append(f"{role}: {_line(described)}")
    return out


def evaluated_models(data: RunData) -> list[str]:
    """One line per evaluation: the weights it measured (a merged folder names the base it was merged from), the
    adapter folded in, if any, and the dtype."""
    out = []
    for name, folder in data.evals.items():
        described, adapter = _eval_model(folder)
        if described is None:
            out.append(f"{RUN_NAMES.get(name, name)} (`eval/{name}`): not recorded")
            continue
        extra = (f" + adapter `{adapter}`" if adapter else "") + (
            f", evaluated in {described['dtype']}" if described.get("dtype") else "")
        out.append(f"{RUN_NAMES.get(name, name)} (`eval/{name}`): {_line(described)}{extra}")
    return out


def _eval_model(folder: Path) -> tuple[dict | None, str | None]:
    """An evaluation's model description and adapter, from its meta.json, else its config.json."""
    for record in (_read(folder / "meta.json"), _read(folder / "config.json")):
        if isinstance(record, dict) and isinstance(record.get("model"), dict):
            return record["model"], record.get("adapter")
    summary = _read(folder / "summary.json")
    if isinstance(summary, dict) and summary.get("model"):
        return {"spec": summary["model"]}, summary.get("adapter")
    return None, None


def _read(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return read_meta(path.parent) if path.name == "meta.json" else read_json(path)
    except (InputError, OSError):
        return None


def _line(described: dict) -> str:
    spec, _, weights = weights_line(described).partition(": ")
    return f"`{spec}`" + (f" ({weights})" if weights else "")
