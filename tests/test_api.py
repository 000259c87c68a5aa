"""The Python API (issue 15): the README's examples run on tiny models; configs are checked on construction with the
command line's messages; revisions and --trust-remote-code reach every stage that loads a model."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import lightreasoner
from lightreasoner import layout, models
from lightreasoner.cli import main as cli_main
from lightreasoner.config import ConfigError, resolve
from lightreasoner.utils import InputError

README = Path(__file__).resolve().parents[1] / "README.md"
TINY_RUN = {"data": "generated", "dtype": "float32", "device": "cpu", "perplexity_problems": 2,
            "sample": {"max_problems": 4, "max_new_tokens": 8, "batch_size": 2, "beta": 0.5},
            "train": {"steps_per_update": 4, "max_steps": 3, "save_every": 2, "lr": 1e-3},
            "eval": {"limit": 3, "max_new_tokens": 8, "batch_size": 3}}


def readme_examples() -> list[str]:
    """The Python code blocks of the README's "Python API" subsection, in order."""
    text = README.read_text()
    section = text[text.index("### Python API"):]
    section = section[:section.index("\n## ")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_readme_examples_run_on_tiny_models(model_dirs, tmp_path):
    stages, whole = readme_examples()
    assert "expert, amateur = " in stages and '"embedded"' in whole  # what the test swaps for tiny ones
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY_RUN))
    stages = re.sub(r"^expert, amateur = .*$", f"expert, amateur = {model_dirs[0]!r}, {model_dirs[1]!r}", stages,
                    flags=re.M)
    code = (stages + whole.replace('"embedded"', repr(str(tiny)))).replace('"runs/', f'"{tmp_path}/runs/')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    samples, adapter, merged, scores = (scope[k] for k in ("samples", "adapter", "merged", "scores"))
    assert samples.path == tmp_path / "runs/py/sample/samples.jsonl" and samples.meta["stage"] == "sample"
    assert samples.meta["counts"]["problems"] == 8
    assert adapter.meta["stage"] == "train" and adapter.meta["counts"]["updates"] == 10
    assert (adapter.path / "adapter_config.json").is_file()
    assert merged.meta["identity"]["inputs"]["adapter"] == adapter.meta["fingerprint"]
    assert (scores.path / "summary.md").is_file() and scores.meta["stage"] == "eval"
    result = scope["result"]
    assert (result.path / "report" / "report.md").is_file()
    assert {"sample", "train", "merge", "eval_base", "eval_tuned", "report"} <= set(result.meta)
    assert result.meta["sample"]["config"]["beta"] == 0.6  # the override over the config file
    assert result.meta["sample"]["config"]["max_problems"] == 4  # the file's, under the override


def test_a_config_is_checked_on_construction_with_the_command_lines_message(tmp_path, capsys):
    with pytest.raises(InputError) as built:
        lightreasoner.TrainConfig(lr=-1)
    assert cli_main(["train", "--samples", "s.jsonl", "--output", str(tmp_path / "t"), "--lr", "-1"]) == 2
    err = capsys.readouterr().err
    assert isinstance(built.value, ConfigError) and "--lr must be > 0, got -1.0" in str(built.value)
    assert err.strip() == f"lightreasoner train: error: {built.value}"
    with pytest.raises(ConfigError) as every:  # every problem at once, each naming its flag
        lightreasoner.SampleConfig(alpha=3, beta=-1, amateur_pass="sideways", batch_size="many")
    for text in ("--alpha must be in (0, 1]", "--beta must be >= 0", "--amateur-pass: 'sideways' is not one of",
                 "--batch-size expects an integer, got 'many'"):
        assert text in str(every.value), text


def test_an_eval_config_is_checked_on_construction_and_needs_its_model_only_to_run(tmp_path, capsys):
    cfg = lightreasoner.EvalConfig()  # the defaults build: --model and --output are needed when it runs
    assert cfg.model is None and cfg.output is None and cfg.batch_size == 32
    with pytest.raises(ConfigError) as built:
        lightreasoner.EvalConfig(batch_size=0)
    assert cli_main(["eval", "--model", "m", "--output", str(tmp_path / "e"), "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert str(built.value) == "invalid configuration:\n  - --batch-size must be > 0, got 0"
    assert err.strip() == f"lightreasoner eval: error: {built.value}"
    assert lightreasoner.EvalConfig(batch_size="8", benchmarks=["gsm8k"]).benchmarks == ("gsm8k",)  # coerced
    with pytest.raises(ConfigError, match="--compare takes two run folders RUN_A,RUN_B, got 1"):
        lightreasoner.EvalConfig(compare=["a"])
    with pytest.raises(ConfigError) as e:  # the stage itself requires what construction let wait
        lightreasoner.evaluate(limit=2)
    assert "--model is required (or --compare RUN_A,RUN_B)" in str(e.value)
    assert "--output is required (or --compare RUN_A,RUN_B)" in str(e.value)
    # Under run the section's own problems name the section's flags, and what run fills may wait.
    assert lightreasoner.RunConfig(eval={"limit": 3}).eval.limit == 3
    with pytest.raises(ConfigError, match=r"--eval\.batch-size must be > 0, got 0"):
        lightreasoner.RunConfig(eval={"batch_size": 0})


def test_values_are_coerced_as_the_command_line_coerces_them():
    cfg = lightreasoner.TrainConfig(lr="2e-4", lora_targets=["q_proj", "k_proj"], samples=Path("s.jsonl"),
                                    max_grad_norm="none")
    assert (cfg.lr, cfg.lora_targets, cfg.samples, cfg.max_grad_norm) == (2e-4, ("q_proj", "k_proj"), "s.jsonl", None)
    assert dataclasses.replace(cfg, lr=1e-3).lr == 1e-3
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        dataclasses.replace(cfg, lr=0)
    assert lightreasoner.RunConfig(sample={"beta": "0.6"}).sample.beta == 0.6  # a section as a mapping
    with pytest.raises(ConfigError) as e:
        lightreasoner.RunConfig(sample={"beta": -1}, train={"lr": 0})
    assert "--sample.beta must be >= 0" in str(e.value) and "--train.lr must be > 0" in str(e.value)
    assert str(e.value).count("--sample.beta") == 1


def test_required_options_may_wait_until_the_stage_runs():
    cfg = lightreasoner.SampleConfig(beta=0.5)  # no --output yet: fine until it runs
    assert cfg.output is None and lightreasoner.RunConfig().sample.output is None
    with pytest.raises(ConfigError, match="--output is required"):
        lightreasoner.sample(cfg)
    with pytest.raises(ConfigError) as e:
        lightreasoner.train(lr=-1)
    assert all(t in str(e.value) for t in ("--samples is required", "--output is required", "--lr must be > 0"))
    # The resolver builds configs field by field (defaults < YAML < CLI) and still reports every problem once.
    with pytest.raises(ConfigError) as e:
        resolve(lightreasoner.SampleConfig, yaml_values={"beta": -1}, cli={"alpha": "0", "output": "x.jsonl"})
    assert str(e.value).count("--beta") == 1 and str(e.value).count("--alpha") == 1


def test_stage_modules_are_their_functions_and_the_package_imports_cheaply():
    for name in ("sample", "train", "merge", "evaluate", "sft", "run"):
        assert callable(getattr(lightreasoner, name)), name
    assert lightreasoner.sample.SampleConfig is lightreasoner.SampleConfig  # still the module
    assert lightreasoner.SftConfig is lightreasoner.SFTConfig
    code = "import sys, lightreasoner; assert 'torch' not in sys.modules; print(lightreasoner.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == lightreasoner.__version__
    with pytest.raises(AttributeError):
        lightreasoner.nothing_here  # noqa: B018


# ---------------------------------------------------------------------------------------------------------------
# --expert-revision / --amateur-revision and --trust-remote-code


def test_a_revision_of_a_model_that_has_none_is_refused_before_any_work(model_dirs, tmp_path, capsys):
    edir, adir = model_dirs
    with pytest.raises(ConfigError, match=r"--expert-revision 'v1': model .* is a local folder, which has no "
                                          r"revisions.*drop --expert-revision"):
        lightreasoner.SampleConfig(expert=edir, amateur=adir, expert_revision="v1")
    out = tmp_path / "t"
    assert cli_main(["train", "--samples", "s.jsonl", "--expert", edir, "--expert-revision", "v1",
                     "--output", str(out)]) == 2
    assert "--expert-revision 'v1'" in capsys.readouterr().err and not out.exists()
    assert cli_main(["run", "--expert", edir, "--amateur", "qwen2.5-coder-0.5b-instruct", "--amateur-revision",
                     "main", "--output", str(tmp_path / "r"), "--config", "none"]) == 2
    assert "--amateur-revision 'main': model 'qwen2.5-coder-0.5b-instruct' is an embedded model" in \
        capsys.readouterr().err
    with pytest.raises(models.ModelSpecError, match="--revision 'v1'"):
        models.load_model(edir, device="cpu", revision="v1")


def test_a_revision_is_part_of_the_models_input_fingerprint():
    from lightreasoner import sample as S

    assert layout.model_input("org/model") == "hub:org/model@unknown"
    assert layout.model_input("org/model", "v1") == "hub:org/model@v1"
    base = S.SampleConfig(expert="org/model", amateur="org/small", output="x/samples.jsonl")
    ids = [S.identity(dataclasses.replace(base, expert_revision=r)) for r in (None, "v1", "v2")]
    assert [i["inputs"]["expert"] for i in ids] == ["hub:org/model@unknown", "hub:org/model@v1", "hub:org/model@v2"]
    assert ids[0]["settings"] == ids[1]["settings"]  # the revision is an input, not a setting
    assert len({layout.fingerprint(i) for i in ids}) == 3


def test_run_passes_revisions_and_trust_remote_code_to_its_stages(tmp_path):
    from lightreasoner import pipeline

    cfg = pipeline.RunConfig(output=str(tmp_path / "r"), expert="org/big", amateur="org/small",
                             expert_revision="abc", amateur_revision="def", trust_remote_code=True)
    filled = pipeline.sections(cfg)
    assert (filled["sample"].expert_revision, filled["sample"].amateur_revision) == ("abc", "def")
    for name in ("sample", "train", "merge", "sft", "eval"):
        assert filled[name].trust_remote_code is True, name
    for name in ("train", "merge", "sft"):
        assert filled[name].expert_revision == "abc", name
    stages = {s.name: s for s in pipeline.plan(cfg)}
    assert stages["sample"].identity["inputs"]["expert"] == "hub:org/big@abc"
    assert stages["sample"].identity["inputs"]["amateur"] == "hub:org/small@def"
    assert stages["train"].identity["inputs"]["expert"] == "hub:org/big@abc"
    assert stages["perplexity"].identity["inputs"]["expert"] == "hub:org/big@abc"
    assert stages["eval_base"].config.revision == "abc" and stages["eval_tuned"].config.revision is None
    assert stages["eval_base"].identity["inputs"]["model"] == "hub:org/big@abc"
    # A section's own flag still allows remote code there only; the run's allows it everywhere.
    only_train = pipeline.sections(pipeline.RunConfig(train=lightreasoner.TrainConfig(trust_remote_code=True)))
    assert only_train["train"].trust_remote_code and not only_train["sample"].trust_remote_code
    with pytest.raises(ConfigError, match="--sample.expert-revision is set by `run`"):
        resolve(pipeline.RunConfig, cli={"sample.expert_revision": "x"})


def test_train_loads_the_expert_at_its_revision_with_remote_code_as_asked(model_dirs, tmp_path, monkeypatch):
    from lightreasoner import train as T

    seen = {}

    class Loaded(Exception):
        pass

    def load_tokenizer(spec, **kw):
        seen.update(spec=spec, **kw)
        raise Loaded

    monkeypatch.setattr(models, "load_tokenizer", load_tokenizer)
    monkeypatch.setattr(models, "revision_problem", lambda *a: None)  # let a folder stand in for a hub id
    cfg = T.TrainConfig(samples=str(tmp_path / "s.jsonl"), output=str(tmp_path / "t"), expert=model_dirs[0],
                        expert_revision="abc", trust_remote_code=True)
    monkeypatch.setattr(models, "resolve_source", lambda spec, prepare=True: models.ModelSource(spec, "hub", spec))
    with pytest.raises(Loaded):
        T.main(cfg)
    assert seen == {"spec": model_dirs[0], "trust_remote_code": True, "revision": "abc"}
