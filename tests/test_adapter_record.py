"""annotune.json as a typed record (contract.AdapterRecord): every kind of file train.py writes
loads into it and back without losing a key, and reading an adapter folder checks it."""
import json
from pathlib import Path

import pytest

from annotune.labelling.contract import AdapterRecord, read_adapter_info
from annotune.base.cli import UserError

# Written by train.py in the test suite's runs, at 08e6dac (a causal LM trained on a merge, one from
# before --merge_at, a head, a seq2seq model; a CSV task with a fitted rule) and at 03ef217 (a causal
# LM learning a merge's finer labels: --merge_at prediction) and at 47ec581 (a causal LM with the
# hashes of its tokenizer files), their id lists cut to 5 ids each.
FIXTURES = sorted((Path(__file__).parent / "data" / "annotune_json").glob("*.json"))


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_every_annotune_json_main_writes_loads_into_the_record_and_back(path):
    data = json.loads(path.read_text())
    record = AdapterRecord.from_dict(data, str(path))
    # No key dropped, none added; a record older than tokenizer_files reads it as null.
    assert record.to_dict() == {"tokenizer_files": None, **data}
    assert record.kind in ("causal", "classifier", "seq2seq") and record.labels and record.task_spec


def test_the_fixtures_cover_every_kind_and_a_merge_after_prediction():
    records = [AdapterRecord.from_dict(json.loads(p.read_text()), p.name) for p in FIXTURES]
    assert {r.kind for r in records} == {"causal", "classifier", "seq2seq"}
    assert any(r.merge_after for r in records) and any(r.decision_rule and r.decision_rule["fitted_on"] for r in records)


def test_a_record_missing_a_key_or_of_the_wrong_type_is_one_line():
    data = json.loads(FIXTURES[0].read_text())
    with pytest.raises(UserError, match="lacks base_model, kind"):
        AdapterRecord.from_dict({k: v for k, v in data.items() if k not in ("base_model", "kind")}, "adapter x")
    with pytest.raises(UserError, match="task_spec of the wrong type"):
        AdapterRecord.from_dict(dict(data, task_spec="politosphere"), "adapter x")
    newer = AdapterRecord.from_dict(dict(data, written_by_a_later_version=1), "adapter x")  # an unknown key: left out
    assert "written_by_a_later_version" not in newer.to_dict()


def test_reading_an_adapter_folder_gives_the_record_with_its_paths_resolved(pol_run):
    record = read_adapter_info(pol_run[-1])
    assert isinstance(record, AdapterRecord)
    assert Path(record.dataset).is_absolute() and Path(record.dataset).is_dir()
    assert Path(record.run_dir).resolve() == pol_run[-1].parent.resolve()


@pytest.mark.parametrize("key,value", [("decision_rule", "argmax"), ("epoch", "3"), ("split_ids", [1, 2]),
                                       ("labels", None), ("epoch", True)])
def test_every_key_of_the_wrong_type_is_named(key, value):
    data = json.loads(FIXTURES[0].read_text())
    with pytest.raises(UserError, match=f"has {key} of the wrong type"):
        AdapterRecord.from_dict(dict(data, **{key: value}), "adapter x")
