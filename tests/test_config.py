"""Config resolution: defaults < YAML < CLI, unknown keys rejected, all problems at once."""

import pytest

from lightreasoner.cli import build_parser
from lightreasoner.config import ConfigError, config_from_args, load_yaml, resolve
from lightreasoner.sample import SampleConfig


def test_precedence_defaults_yaml_cli(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("# lightreasoner sample --config c.yaml\nbeta: 0.7\nmax-new-tokens: 64\noutput: a.jsonl\n")
    ns = build_parser("sample").parse_args(["sample", "--config", str(y), "--beta", "0.9", "--no-contrast"])
    cfg = config_from_args(SampleConfig, ns)
    assert (cfg.beta, cfg.max_new_tokens, cfg.contrast, cfg.alpha, cfg.output) == (0.9, 64, False, 0.2, "a.jsonl")


def test_unknown_keys_and_bad_values_reported_together(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve(SampleConfig, yaml_values={"betta": 1, "batch_size": "many", "output": "x.jsonl"},
                cli={"alpha": "0", "amateur_pass": "sideways"})
    msg = str(e.value)
    for flag in ("--betta", "--batch-size", "--alpha", "--amateur-pass"):
        assert flag in msg
    assert "did you mean --beta" in msg


def test_none_means_off_and_required_fields():
    cfg = resolve(SampleConfig, cli={"output": "x.jsonl", "max_problems": "none", "device": "none"})
    assert cfg.max_problems is None and cfg.device is None
    with pytest.raises(ConfigError, match="--output is required"):
        resolve(SampleConfig, cli={})


def test_yaml_errors_name_the_line(tmp_path):
    y = tmp_path / "bad.yaml"
    y.write_text("beta: 0.4\nalpha: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml:"):
        load_yaml(y)


def test_help_lists_documented_flags(capsys):
    with pytest.raises(SystemExit):
        build_parser("sample").parse_args(["sample", "--help"])
    out = capsys.readouterr().out
    assert "--beta" in out and "KL(p_E || p_A) >= beta" in out and "--no-contrast" in out


def test_a_positional_field_takes_the_flag_or_the_argument():
    from lightreasoner.report import ReportConfig

    def parse(*argv):
        return config_from_args(ReportConfig, build_parser("report").parse_args(["report", *argv]))

    assert parse("runs/a").run_dir == "runs/a"
    assert parse("--run-dir", "runs/b", "--cases", "2").run_dir == "runs/b"
    assert parse("--cases", "2", "runs/c").cases == 2
    with pytest.raises(ConfigError, match="--run-dir is required"):
        parse("--cases", "2")
