"""``lightreasoner report``: one readable page (``report.md`` and ``report.html``) for a run folder.

Reads what ``lightreasoner run`` writes into ``RUN_DIR`` (:class:`layout.RunLayout`; :mod:`.data`) and builds,
section by section (:mod:`.sections`, :mod:`.steps`):

- which weights sampling used and each evaluation measured (:mod:`.naming`: an embedded model's quantization,
  source and hub original spelled out; a merged model named with the base it was merged from);
- the stage times (each stage folder's ``meta.json`` ``seconds``);
- the paper's efficiency table: total time (sampling + training), sampled problems, tuned tokens and average
  accuracy gain, for LightReasoner and (when present) the SFT baseline;
- accuracy per benchmark before and after, with the paired exact McNemar test (:func:`stats.compare_runs`);
- the sampling statistics: KL histogram with ``beta`` marked, kept-step rate by position, plausible-set sizes, and
  the authors' preliminary analysis (KL and entropies split by top-1 agreement);
- the training loss curve; the gold-answer perplexity across checkpoints (``perplexity/perplexity.json``, computed
  by the pipeline with :func:`gold_perplexity`);
- a case study (problems the base expert got wrong and the tuned one right, and the reverse) and a few kept steps
  as ``lightreasoner inspect`` prints them.

Everything goes to ``RUN_DIR/report/``: ``report.md``, ``report.html`` (the same content, figures inline) and
``figures/*.png`` (:mod:`.plots`). A section whose inputs are absent is replaced by a one-line note naming the
missing file, so a partial run still gets a report.

Python use::

    path = write_report("runs/embedded")                     # -> runs/embedded/report/report.md
    nll, ppl = gold_perplexity(model, tokenizer, problems, "Please reason step by step.")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import flag, option
from ..layout import RunLayout
from ..utils import InputError, atomic_write, writes_output
from .data import RUN_NAMES, RunData, eval_accuracies, lightreasoner_costs, sft_costs
from .document import Doc, fmt_duration
from .perplexity import gold_perplexity
from .plots import kept_rate_by_position
from .steps import pick_kept_steps, resolve_tokenizer
from .sections import COMPLETION_CHARS, SECTIONS, Options, build

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportConfig:
    """Write report.md and report.html (figures inline) for a run folder written by `lightreasoner run`.

    example: lightreasoner report runs/embedded
    """

    run_dir: str = option(help="run folder written by `lightreasoner run`", positional=True, result=False)
    tokenizer: str | None = option(None, "tokenizer to show kept steps as text (default: the expert named in "
                                         "sample/meta.json; ids are shown when it cannot be loaded)", result=False)
    cases: int = option(5, "examples per direction in the case study (base wrong -> tuned right, and the reverse)")
    kept_step_examples: int = option(5, "kept steps shown as `lightreasoner inspect` prints them")

    def validate(self) -> list[str]:
        return [f"{flag(n)} must be >= 0, got {getattr(self, n)}"
                for n in ("cases", "kept_step_examples") if getattr(self, n) < 0]


def write_report(run_dir: str | Path, tokenizer: Any = None, *, cases: int = 5, kept_step_examples: int = 5) -> Path:
    """Write ``report.md``, ``report.html`` and ``figures/*.png`` into the run's ``report/`` folder; return the
    Markdown path.

    ``tokenizer``: an object with ``decode`` or a model spec, for the kept-step examples (default: the expert named
    in ``sample/meta.json``). A section whose inputs are absent becomes a one-line note; a section that fails on
    odd inputs is logged and noted, never fatal.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"--run-dir {run}: no such folder; point to a folder written by `lightreasoner run`")
    data = RunData.load(run)
    out = RunLayout(run).report
    doc = Doc(root=out)
    build(doc, data, out / "figures", Options(tokenizer, cases, kept_step_examples))
    md_path, html_path = out / "report.md", out / "report.html"
    for path, text in ((md_path, doc.markdown()), (html_path, doc.html(f"LightReasoner report: {run.name}"))):
        atomic_write(path, text)
    logger.info("wrote %s and %s (%d figures)", md_path, html_path, len(doc.figures))
    return md_path


@writes_output("report", kind="folder", field="run_dir")
def main(cfg: ReportConfig) -> int:
    """``lightreasoner report``: regenerate a run folder's report."""
    path = write_report(cfg.run_dir, cfg.tokenizer, cases=cfg.cases, kept_step_examples=cfg.kept_step_examples)
    print(path)
    return 0


__all__ = ["ReportConfig", "main", "write_report", "gold_perplexity", "RunData", "Doc", "Options", "SECTIONS",
           "RUN_NAMES", "COMPLETION_CHARS", "InputError", "kept_rate_by_position", "pick_kept_steps",
           "resolve_tokenizer", "lightreasoner_costs", "sft_costs", "eval_accuracies", "fmt_duration"]
