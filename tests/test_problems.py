"""Problem loading: files, folders, stable ids, subsets, the built-in generator."""

import json
import re

import pytest

from lightreasoner.problems import generate_problems, load_problems, question_id
from lightreasoner.utils import InputError

from conftest import SHARED_DATA


def test_jsonl_fields_ids_and_answers(gsm8k_file):
    ps = load_problems(str(gsm8k_file))
    assert len(ps) == 5 and ps[0].answer == "7" and ps[1].answer == "30"
    assert ps[0].id == question_id(ps[0].question)
    assert [p.id for p in load_problems(str(gsm8k_file))] == [p.id for p in ps]  # stable
    assert [p.id for p in load_problems(str(gsm8k_file), max_problems=2)] == [p.id for p in ps[:2]]
    sub = load_problems(str(gsm8k_file), max_problems=3, shuffle_seed=1)
    assert sub == load_problems(str(gsm8k_file), max_problems=3, shuffle_seed=1) and len(sub) == 3


def test_json_parquet_and_folder_layouts(tmp_path, gsm8k_file):
    rows = [json.loads(l) for l in gsm8k_file.read_text().splitlines()]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    d = tmp_path / "gsm8k"
    d.mkdir()
    (d / "train.jsonl").write_text(gsm8k_file.read_text())
    ref = [p.question for p in load_problems(str(gsm8k_file))]
    for src in (tmp_path / "p.json", tmp_path / "p.parquet", d):
        assert [p.question for p in load_problems(str(src))] == ref
    with pytest.raises(InputError, match="test.jsonl"):
        load_problems(str(d), split="test")


def test_custom_question_field_and_bad_rows(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"problem": "What is 2+3?", "id": 17}\n{"problem": ""}\n')
    with pytest.raises(InputError, match=r"q.jsonl:1: .*--question-field"):
        load_problems(str(f))
    with pytest.raises(InputError, match=r"q.jsonl:2"):
        load_problems(str(f), question_field="problem")
    stats = {}
    ps = load_problems(str(f), question_field="problem", skip_bad_rows=True, stats=stats)
    assert [p.id for p in ps] == ["17"] and stats["bad_rows"] == 1


def test_generator_is_deterministic_multistep_and_exact():
    a, b = generate_problems(50, seed=3), generate_problems(50, seed=3)
    assert a == b and generate_problems(50, seed=4) != a
    assert len({p.question for p in a}) == 50
    for p in a:
        lines = p.solution.split("\n")[:-1]
        assert 2 <= len(lines) <= 5
        value = None
        for line in lines:  # every worked line is exact integer arithmetic, chaining to the answer
            lhs, rhs = line.split(" = ")
            assert re.fullmatch(r"[\d +*/-]+", lhs)
            assert eval(lhs.replace("/", "//")) == int(rhs) and (value is None or lhs.startswith(str(value)))
            value = int(rhs)
        assert p.answer == str(value) and p.solution.endswith(f"#### {value}")


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k_train.jsonl").exists(), reason="shared data absent")
def test_reads_gsm8k_train_from_shared_data():
    ps = load_problems(str(SHARED_DATA / "gsm8k_train.jsonl"), max_problems=1000)
    assert len(ps) == 1000 and len({p.id for p in ps}) == 1000
    assert all(p.answer and p.answer.lstrip("-").replace(".", "").isdigit() for p in ps)


def test_unreachable_hub_fails_fast_with_the_fix(monkeypatch):
    import time

    from lightreasoner import hub
    from lightreasoner import problems as P
    from lightreasoner.utils import InputError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens there
    assert not hub.reachable(timeout=1.0)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="hub is unreachable.*local file.*HF_HUB_OFFLINE=1"):
        P.load_problems("openai/gsm8k", max_problems=1)
    assert time.perf_counter() - t0 < 10
