"""The shape of the code (issue 13): a library under thin stages, files a reader can hold in their head, and a
`--help`/`--version` for every command."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lightreasoner import cli

SRC = Path(__file__).resolve().parents[1] / "src" / "lightreasoner"
ROOF = {"lightreasoner.pipeline", "lightreasoner.cli"}  # only these may compose stages
DATA_TABLES = {"grading_data.py"}  # data tables are exempt from the length rule
MAX_LINES = 460


def stage_modules() -> set[str]:
    """The modules `lightreasoner COMMAND` dispatches to (the stages), less the roof."""
    return {module for module, *_ in cli.COMMANDS.values()} - ROOF


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(path: Path, me: str | None = None) -> set[str]:
    """Every lightreasoner module ``path`` (module ``me``) imports, absolute or relative, at any depth."""
    me = me or module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("lightreasoner")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if not base.startswith("lightreasoner"):
                continue
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from . import sample` imports a module
    return out


def sources() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def test_stages_import_only_the_library():
    stages = stage_modules()
    assert {"lightreasoner.sample", "lightreasoner.evaluate"} <= stages
    offenders = []
    for path in sources():
        me = module_name(path)
        if me in ROOF:
            continue
        for name in imported_modules(path):
            hit = next((s for s in stages if name == s or name.startswith(s + ".")), None)
            if hit is not None and not (me == hit or me.startswith(hit + ".")):
                offenders.append(f"{me} imports the stage {hit}")
    assert not offenders, "\n".join(offenders)


def test_the_import_walk_sees_relative_and_nested_imports(tmp_path):
    """The walker itself: nested and relative imports of a stage are found (so the test above can fail)."""
    f = tmp_path / "mod.py"
    f.write_text("import os\n\ndef f():\n    from .sample import main\n    from . import train as t\n"
                 "    from ..grading.extract import x\n")
    found = imported_modules(f, "lightreasoner.report.mod")
    assert {"lightreasoner.report.sample", "lightreasoner.report.train", "lightreasoner.grading.extract"} <= found
    f.write_text("from . import sample\nfrom .evaluate import main\n")
    found = imported_modules(f, "lightreasoner.sft")
    assert {"lightreasoner.sample", "lightreasoner.evaluate"} <= found


def test_files_stay_short():
    long = {p.relative_to(SRC).as_posix(): n for p in sources() if p.name not in DATA_TABLES
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help_and_version(command, capsys):
    for flag in ("--help", "--version"):
        with pytest.raises(SystemExit) as e:
            cli.main([command, flag])
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: lightreasoner {command}" in out and "lightreasoner 0." in out


def test_every_shipped_config_resolves(tmp_path):
    from lightreasoner.config import PACKAGED_CONFIGS, load_yaml, resolve
    from lightreasoner.pipeline import RunConfig

    configs = sorted(PACKAGED_CONFIGS.glob("*.yaml")) + sorted((SRC.parents[1] / "configs").glob("*.yaml"))
    run_configs = [c for c in configs if "accelerate" not in c.parts]
    assert len(run_configs) >= 4
    for path in run_configs:
        cfg = resolve(RunConfig, yaml_values=load_yaml(path), cli={"output": str(tmp_path / path.stem)})
        assert cfg.sample.alpha == 0.2 and cfg.sample.beta == 0.4, path
