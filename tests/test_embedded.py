"""The embedded pair's cache: clear errors when packages are missing, one conversion under concurrency."""

import threading
import time

import pytest

from lightreasoner import embedded


def test_missing_packages_name_the_fix(monkeypatch):
    fake = embedded.EmbeddedModel("fake-model", ("no-such-pkg-part1", "no-such-pkg-part2"), "1.0", "0" * 64, 1,
                                  "expert")
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
