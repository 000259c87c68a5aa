"""The report's sections on the sampled steps (``sample/samples.jsonl``): where the amateur departs from the
expert (KL histogram with ``beta`` marked, kept-step rate by position, plausible-set sizes, the authors'
preliminary analysis of KL and entropies split by top-1 agreement), and a few kept steps as
``lightreasoner inspect`` prints them."""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..crosstok import CODES, alignment_summary
from ..sampling import format_step
from .data import RunData
from .document import Doc, fmt
from .plots import plot_kept_rate, plot_kl_histogram, plot_set_sizes

if TYPE_CHECKING:
    from .sections import Options

logger = logging.getLogger(__name__)

# The authors' preliminary analysis (pre_analysis_stats.py): thresholds of its "claims".
CONFIDENT_EXPERT_H = 1.0
UNCERTAIN_AMATEUR_H = 3.0
HIGH_KL = 1.0


def _steps_view(records: list[dict]) -> dict[str, list]:
    """Flat per-step lists over all records (scored steps t >= 1, as the authors' analysis)."""
    out: dict[str, list] = {"kl": [], "he": [], "ha": [], "agree": []}
    for r in records:
        for t in range(1, len(r["kl"])):
            if r["kl"][t] is None:  # the text path's skipped steps
                continue
            out["kl"].append(r["kl"][t])
            out["he"].append(r["expert_entropy"][t])
            out["ha"].append(r["amateur_entropy"][t])
            out["agree"].append(bool(r["top1_agree"][t]))
    return out


def _mean_median(vals: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(vals), statistics.median(vals)) if vals else (None, None)


def section_sampling(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Sampling: where the amateur departs from the expert")
    if data.records is None:
        doc.note(f"No {data.name('samples')}: sampling statistics and figures skipped.")
        return
    recs = data.records
    if not recs:
        doc.note(f"{data.name('samples')} holds no records.")
        return
    beta = data.sample_setting("beta")
    alpha = data.sample_setting("alpha")
    kls = [k for r in recs for k in r["kl"] if k is not None]  # the text path's skipped steps have none
    steps = [s for r in recs for s in r["steps"]]
    above = sum(k >= beta for k in kls) if beta is not None else None
    facts = [f"problems: {len(recs):,}", f"expert steps (tokens): {len(kls):,}",
             f"kept steps: {len(steps):,} ({100 * len(steps) / max(1, len(kls)):.1f}% of steps)"]
    if any("alignment" in r for r in recs):
        a = alignment_summary(recs)
        facts.append("text path (an amateur with another tokenizer): " + ", ".join(
            f"{a[name]:,} {name}" for name in CODES.values()) + f" steps; mean dropped amateur mass "
            f"{fmt(a['mean_dropped_mass'])}")
    if above is not None:
        facts.append(f"steps with KL >= beta ({beta}): {above:,} ({100 * above / max(1, len(kls)):.1f}%)")
    if steps:
        facts.append(f"mean plausible-set size (alpha {alpha}): "
                     f"{statistics.fmean(len(s['token_ids']) for s in steps):.2f}")
    if kls:
        q = statistics.quantiles(kls, n=20) if len(kls) > 1 else [kls[0]] * 19
        facts.append(f"KL: mean {statistics.fmean(kls):.3f}, median {statistics.median(kls):.3f}, "
                     f"p90 {q[17]:.3f}, p95 {q[18]:.3f}, max {max(kls):.3f}")
    doc.bullets(facts)
    if kls:
        path = plot_kl_histogram(kls, beta, len(steps) / len(kls), figdir / "kl_histogram.png")
        share = f"{100 * above / len(kls):.1f}% of steps have KL >= beta" if above is not None else "beta unknown"
        doc.figure(path, f"KL(p_E || p_A) per expert step (log-scale x; values below 1e-4 shown at 1e-4); "
                         f"{share}, {100 * len(steps) / len(kls):.1f}% kept.")
        path = plot_kept_rate(recs, figdir / "kept_rate_by_position.png")
        doc.figure(path, "Kept-step rate by position in the trajectory (share of the trajectories still running "
                         "at that position whose step is kept).")
    if steps:
        path = plot_set_sizes([len(s["token_ids"]) for s in steps], figdir / "plausible_set_size.png")
        doc.figure(path, "Plausible-set size |V_t| of the kept steps (tokens in the soft label).")
    _agreement(doc, recs)


def _agreement(doc: Doc, recs: list[dict]) -> None:
    """The authors' preliminary analysis: KL and entropies split by top-1 agreement, and its two "claims"."""
    doc.heading(3, "KL and entropy by top-1 agreement")
    view = _steps_view(recs)
    n = len(view["kl"])
    if n == 0:
        doc.note("No steps after the first: agreement statistics skipped.")
        return
    rows = []
    for label, sel in (("top-1 agree", True), ("top-1 disagree", False), ("all", None)):
        idx = [i for i in range(n) if sel is None or view["agree"][i] == sel]
        cols = [label, f"{len(idx):,}", f"{100 * len(idx) / n:.1f}%"]
        for key in ("kl", "he", "ha"):
            mean, med = _mean_median([view[key][i] for i in idx])
            cols += [fmt(mean), fmt(med)]
        rows.append(cols)
    doc.table(["steps", "count", "share", "KL mean", "KL median", "H(p_E) mean", "H(p_E) median", "H(p_A) mean",
               "H(p_A) median"], rows)
    conf = [view["kl"][i] for i in range(n) if view["he"][i] < CONFIDENT_EXPERT_H and view["ha"][i] >
            UNCERTAIN_AMATEUR_H]
    tail = sum(k > HIGH_KL for k in view["kl"])
    doc.bullets([f"expert confident (H(p_E) < {CONFIDENT_EXPERT_H}) and amateur uncertain (H(p_A) > "
                 f"{UNCERTAIN_AMATEUR_H}): {len(conf):,} steps ({100 * len(conf) / n:.2f}%), mean KL "
                 f"{fmt(statistics.fmean(conf) if conf else None)}",
                 f"KL > {HIGH_KL} (strong-signal steps): {tail:,} ({100 * tail / n:.2f}%)"])
    doc.para("Entropies in nats; steps t >= 1 as in the authors' analysis (pre_analysis_stats.py).")


# ---------------------------------------------------------------------------------------------------------------
# Kept steps as `lightreasoner inspect` prints them


class IdTokenizer:
    """Stand-in when no tokenizer loads: ``decode`` shows token ids, so ``format_step`` still works."""

    def decode(self, ids: Sequence[int], **_: Any) -> str:
        return " ".join(f"<{int(i)}>" for i in ids)


def resolve_tokenizer(tokenizer: Any, sample_meta: dict | None) -> tuple[Any, str | None]:
    """A tokenizer object from an object, a spec, or the expert of the samples' meta.json; ``(None, why)`` when
    none loads.

    An embedded model's tokenizer is only read from its prepared checkpoint: a report never triggers the
    download and conversion of the weights.
    """
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer, None
    spec = str(tokenizer) if tokenizer is not None else ((sample_meta or {}).get("expert") or {}).get("spec")
    if not spec:
        return None, "no tokenizer given and the samples' meta.json names no expert"
    try:
        from .. import embedded
        from ..models import load_tokenizer

        if spec in embedded.EMBEDDED and not (embedded.checkpoint_dir(spec) / "COMPLETE").exists():
            return None, f"the embedded model {spec!r} is not prepared yet"
        return load_tokenizer(spec), None
    except Exception as e:  # any failure: show ids instead
        return None, f"tokenizer {spec!r} could not be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def pick_kept_steps(records: list[dict], k: int) -> list[tuple[dict, dict]]:
    """``k`` kept steps at evenly spaced ranks of KL (highest first), so both ends of the range appear."""
    steps = sorted(((r, s) for r in records for s in r["steps"]), key=lambda rs: (-rs[1]["kl"], rs[0]["id"]))
    if k <= 0 or not steps:
        return []
    if len(steps) <= k:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [steps[i] for i in idx]


def section_kept_steps(doc: Doc, data: RunData, figdir: Path, opts: Options) -> None:
    doc.heading(2, "Kept steps")
    if not data.records:
        doc.note(f"No {data.name('samples')}: kept-step examples skipped.")
        return
    chosen = pick_kept_steps(data.records, opts.kept_step_examples)
    if not chosen:
        doc.note(f"No kept steps in {data.name('samples')}.")
        return
    tok, why = resolve_tokenizer(opts.tokenizer, data.sample_meta)
    if tok is None:
        doc.note(f"Token ids shown instead of text: {why}.")
        tok = IdTokenizer()
    texts = []
    for rec, step in chosen:
        try:
            texts.append(format_step(rec, step, tok))
        except Exception as e:  # a tokenizer that cannot decode these ids: fall back to ids
            logger.warning("could not decode a kept step with the tokenizer (%s); showing ids", e)
            texts.append(format_step(rec, step, IdTokenizer()))
    doc.para(f"{len(chosen)} kept steps at evenly spaced ranks of KL (highest first), as `lightreasoner inspect` "
             f"prints them: the end of the prefix, both models' top tokens with probabilities, and the soft label.")
    doc.pre("\n\n".join(texts))
