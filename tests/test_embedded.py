"""The embedded pair: what they are, said alike everywhere (README, `lightreasoner models`, manifests, the report);
the cache: clear errors when packages are missing, one conversion under concurrency."""

import json
import re
import threading
import time
from pathlib import Path

import pytest

from lightreasoner import cli, embedded, models
from lightreasoner import report as R

README = Path(__file__).resolve().parents[1] / "README.md"
HIDDEN = {"qwen2.5-coder-1.5b-instruct": 1536, "qwen2.5-coder-0.5b-instruct": 896}  # the Qwen2.5 shapes
VOCAB = 151936


def test_missing_packages_name_the_fix(monkeypatch):
    fake = embedded.EmbeddedModel("fake-model", ("no-such-pkg-part1", "no-such-pkg-part2"), "1.0", "0" * 64, 1,
                                  "expert", embedded.Provenance("org/fake", "Fake", "Q4_K_M", 2, 1))
    with pytest.raises(embedded.EmbeddedModelError) as e:
        embedded.part_files(fake)
    msg = str(e.value)
    assert "no-such-pkg-part1 is not installed" in msg and "lightreasoner[embedded]" in msg


def test_concurrent_first_uses_convert_once(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path))
    name = embedded.DEFAULT_AMATEUR
    calls = []

    def fake_join(model, dest, progress=True):
        dest.write_bytes(b"gguf")

    def fake_convert(folder, gguf_name, dest):
        calls.append(1)
        time.sleep(0.3)  # a slow conversion: the other caller must wait, not convert again or read half a folder
        dest.mkdir()
        (dest / "config.json").write_text("{}")

    monkeypatch.setattr(embedded, "join_and_verify", fake_join)
    monkeypatch.setattr(embedded, "_convert_gguf", fake_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(embedded.ensure_checkpoint(name, progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1
    out = results[0]
    assert (out / "COMPLETE").exists() and (out / "config.json").exists()
    assert not list(out.parent.glob(".*tmp*"))  # no work folder left behind
    assert "ready" in embedded.status(name)


def test_a_failed_conversion_leaves_no_half_checkpoint(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTREASONER_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "join_and_verify", lambda m, d, progress=True: d.write_bytes(b"x"))

    def broken(folder, gguf_name, dest):
        dest.mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(embedded, "_convert_gguf", broken)
    with pytest.raises(RuntimeError):
        embedded.ensure_checkpoint(embedded.DEFAULT_EXPERT, progress=False)
    assert not embedded.checkpoint_dir(embedded.DEFAULT_EXPERT).exists()


# ---------------------------------------------------------------------------------------------------------------
# What they are


@pytest.mark.parametrize("name", list(embedded.EMBEDDED))
def test_the_table_says_what_the_weights_are(name):
    m = embedded.EMBEDDED[name]
    a = m.about
    assert a.hub_original.lower() == f"qwen/{name}"  # the short name is the original's, lower-cased
    assert a.parameters - a.original_parameters == VOCAB * HIDDEN[name]  # exactly one untied output layer
    summary = m.summary
    for fact in (a.hub_original, "Q4_K_M", "bf16 safetensors", "untied", m.package_spec):
        assert fact in summary
    assert m.package_spec == f"{m.packages[0]}..part{len(m.packages)}=={m.version}"
    assert ("AWQ" in summary) == (name == embedded.DEFAULT_AMATEUR)  # the 0.5B's GGUF was made from the AWQ model
    facts = json.loads(json.dumps(m.facts()))  # what a manifest records: JSON as it is
    assert facts["hub_original"] == a.hub_original and facts["gguf"]["sha256"] == m.sha256
    assert facts["package_licence"] == "none declared" and "placeholder" in facts["package_author"]
    assert any("quantization error" in d for d in facts["differs_from_original"])
    assert any("untied" in d for d in facts["differs_from_original"])


def test_models_command_lists_the_facts(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name, m in embedded.EMBEDDED.items():
        block = out[out.index(name):]
        for fact in (m.about.hub_original, m.about.gguf_name, m.package_spec, "Q4_K_M", "none declared",
                     "placeholder", "untied"):
            assert fact in block, (name, fact)


def test_readme_models_section_matches_the_table():
    text = README.read_text()
    section = text[text.index("### Models"):text.index("### Sampling")]
    for name, m in embedded.EMBEDDED.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `{name}` |"))
        for fact in (m.role, m.about.hub_original, m.about.gguf_name, m.about.quantization, m.package_spec,
                     f"{m.about.parameters / 1e9:.3f}B", f"{m.about.original_parameters / 1e9:.3f}B"):
            assert fact in row, (name, fact)
    assert "no licence" in section and "placeholder" in section and "untied" in section
    assert re.search(r"AutoPeftModelForCausalLM\.from_pretrained\(", text)  # the adapter one-liner


def test_manifests_name_the_embedded_weights(tmp_path):
    name = embedded.DEFAULT_EXPERT
    facts = models.source_facts(models.ModelSource(name, "embedded", str(tmp_path)), "sha256:x")
    assert facts["base_model"] == "Qwen/Qwen2.5-Coder-1.5B-Instruct"
    assert facts["embedded"] == embedded.EMBEDDED[name].facts() and "Q4_K_M" in facts["weights"]
    # an older manifest naming the model only by its short name is spelled out from the table
    assert models.weights_line({"spec": name}) == f"{name}: {embedded.EMBEDDED[name].summary}"
    # a merged folder names the base it was merged from
    merged = tmp_path / "merge"
    merged.mkdir()
    (merged / "meta.json").write_text(json.dumps({"stage": "merge", "expert": {"spec": name}}))
    (merged / "config.json").write_text("{}")
    facts = models.source_facts(models.resolve_source(str(merged)))
    assert facts["base_model"] == str(merged.resolve()) and facts["derived_from"]["stage"] == "merge"
    assert "written by lightreasoner merge from" in facts["weights"] and "Q4_K_M" in facts["weights"]
    assert models.source_facts(models.ModelSource("org/m", "hub", "org/m"), "hub:org/m@abc")["weights"] == \
        "from the Hugging Face hub at commit abc"


def test_report_says_which_weights_were_evaluated(tmp_path):
    run = tmp_path / "run"
    expert, amateur = embedded.DEFAULT_EXPERT, embedded.DEFAULT_AMATEUR
    (run / "sample").mkdir(parents=True)
    (run / "sample" / "meta.json").write_text(json.dumps({  # as older runs wrote it: short names only
        "stage": "sample", "seconds": 1.0, "expert": {"spec": expert}, "amateur": {"spec": amateur}}))
    (run / "merge").mkdir()
    (run / "merge" / "meta.json").write_text(json.dumps({"stage": "merge", "seconds": 1.0, "expert": {"spec": expert}}))
    for label, spec in (("base", expert), ("tuned", str(run / "merge"))):
        folder = run / "eval" / label
        folder.mkdir(parents=True)
        (folder / "gsm8k.jsonl").write_text("".join(json.dumps({"id": str(i), "correct": i % 2 == 0}) + "\n"
                                                    for i in range(6)))
        (folder / "meta.json").write_text(json.dumps({"stage": "eval", "seconds": 1.0, "adapter": None,
                                                      "model": {"spec": spec, "dtype": "bfloat16"}}))
    md = R.write_report(run).read_text()
    overview = md[:md.index("## ", md.index("\n") + 1)]
    assert f"expert: `{expert}` ({embedded.EMBEDDED[expert].summary})" in overview
    assert "AWQ" in overview  # the amateur's GGUF origin
    evaluated = md[md.index("The weights each evaluation measured"):]
    base_line = next(x for x in evaluated.splitlines() if x.startswith("- base expert"))
    tuned_line = next(x for x in evaluated.splitlines() if x.startswith("- LightReasoner"))
    assert "Q4_K_M GGUF of Qwen/Qwen2.5-Coder-1.5B-Instruct" in base_line and "bfloat16" in base_line
    assert "written by lightreasoner merge from" in tuned_line and "Q4_K_M" in tuned_line
