"""The ``lightreasoner`` command: one subcommand per pipeline stage, each a thin shell around a stage module.

Each stage module defines a frozen config dataclass (its fields are the flags, their docs the ``--help``) and a
``main(cfg)`` function. Only the chosen stage's module is imported, so ``lightreasoner --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import logging
import signal
import sys
import threading
from typing import Any, Iterator, Sequence

from .config import ConfigError, add_arguments, config_from_args
from . import __version__
from .utils import InputError, setup_logging

# command -> (module, config class, entry function, one-line description)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "sample": ("lightreasoner.sample", "SampleConfig", "main",
               "expert writes reasoning prefixes; keep steps where it departs from the amateur, as soft labels"),
    "inspect": ("lightreasoner.sample", "InspectConfig", "inspect_main", "print kept steps of a samples file"),
    "train": ("lightreasoner.train", "TrainConfig", "main", "LoRA-tune the expert on the contrastive soft labels"),
    "merge": ("lightreasoner.merge", "MergeConfig", "merge_main", "merge a LoRA adapter into a standalone model"),
    "eval": ("lightreasoner.evaluate", "EvalConfig", "main",
             "zero-shot greedy pass@1 on the paper's benchmarks (or --compare two runs)"),
    "grade": ("lightreasoner.grade", "GradeConfig", "grade_main",
              "grade completions as the Qwen2.5-Math toolkit does"),
    "sft": ("lightreasoner.sft", "SFTConfig", "main", "the rejection-sampling SFT baseline"),
    "run": ("lightreasoner.pipeline", "RunConfig", "main", "everything: sample, train, merge, eval, report"),
    "report": ("lightreasoner.report", "ReportConfig", "main", "write report.md/.html for a run folder"),
    "models": ("lightreasoner.cli", "", "models_main",
               "list the embedded models, which weights they are (quantization, source) and whether they are ready"),
}


def models_main(_cfg: object = None) -> int:
    """``lightreasoner models``: each embedded model, its status, and which weights it is (:func:`embedded.listing`)."""
    from . import embedded

    print("\n\n".join("\n".join(embedded.listing(name)) for name in embedded.EMBEDDED))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightreasoner", description="LightReasoner: teach a reasoning LLM where a small model disagrees with it.")
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    parser.add_argument("--version", action="version", version=f"lightreasoner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, cls_name, _, desc) in COMMANDS.items():
        sp = sub.add_parser(name, help=desc, description=desc)
        sp.add_argument("--version", action="version", version=f"lightreasoner {__version__}")
        if name == command and cls_name:
            cls = getattr(importlib.import_module(module), cls_name)
            if cls.__doc__:
                sp.description = inspect.cleandoc(cls.__doc__)
                sp.formatter_class = argparse.RawDescriptionHelpFormatter
            default = getattr(importlib.import_module(module), "DEFAULT_CONFIG", None)
            sp.add_argument("--config", default=None, help="YAML file of options (command-line flags override it)" + (
                f"; default: the shipped `{default}` config, `none` for the commands' own defaults" if default else ""))
            add_arguments(sp, cls)
    return parser


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """``kill`` (SIGTERM) stops a command like Ctrl-C does: files are flushed and times recorded, exit 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named after the global options (``--log-level LEVEL``, ``--debug``), if any."""
    i = 0
    while i < len(argv) and argv[i] in ("--log-level", "--debug"):
        i += 2 if argv[i] == "--log-level" else 1
    return argv[i] if i < len(argv) and argv[i] in COMMANDS else None


def _unknown_flags(tokens: Sequence[str]) -> dict[str, str]:
    """Flags argparse does not know, as ``{name: value}``, so the config resolver reports them with the rest
    (did-you-mean, "set by run"); a stray word is an error at once."""
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError([f"unexpected argument {tok!r}"])
        name, eq, value = tok[2:].partition("=")
        if not eq:
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            value = tokens[i + 1] if has_value else "true"
            i += has_value
        out[name] = value
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    parser = build_parser(command)
    ns, unknown = parser.parse_known_args(argv)
    if not ns.command:
        parser.print_help()
        return 1
    if unknown and not COMMANDS[ns.command][1]:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging(ns.log_level)
    module, cls_name, func, _ = COMMANDS[ns.command]
    mod = importlib.import_module(module)
    try:
        cfg = config_from_args(getattr(mod, cls_name), ns, getattr(mod, "DEFAULT_CONFIG", None),
                               extra=_unknown_flags(unknown)) if cls_name else None
        with _sigterm_interrupts():
            result = getattr(mod, func)(cfg)
    except (ConfigError, InputError) as e:
        print(f"lightreasoner {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        logging.getLogger("lightreasoner").warning("interrupted; run the same command again to resume")
        return 130
    except OSError as e:  # the machine said no: disk full, permission, a file that vanished
        if ns.debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"lightreasoner {ns.command}: error: {e.strerror or e}{where}; fix that and run the same command "
              f"again to resume", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback behind --debug
        if ns.debug:
            raise
        print(f"lightreasoner {ns.command}: internal error: {type(e).__name__}: {e}\n(this is a bug in "
              f"lightreasoner; rerun with --debug for the traceback and report it)", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
