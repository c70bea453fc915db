"""The Fact schema: JSONL round trip, validation errors that name file, line and field."""

from __future__ import annotations

import json

import pytest

from excise.facts import Fact, FactFormatError, Probe, load_facts, read_facts, write_facts

GOOD = {
    "id": "capital-france", "relation": "capital", "subject": "France",
    "prompt": "The capital of {} is", "target": " Paris",
    "paraphrases": ["{}'s capital is", "The capital city of {} is"],
    "neighbors": [{"prompt": "The capital of Germany is", "target": " Berlin"}],
}


def _write(tmp_path, records):
    path = tmp_path / "facts.jsonl"
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip(tmp_path):
    fact = Fact.from_dict(GOOD)
    assert fact.text == "The capital of France is"
    assert fact.neighbors == (Probe("The capital of Germany is", " Berlin"),)
    path = write_facts([fact], tmp_path / "out.jsonl")
    assert read_facts(path) == [fact]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"target": ""}, "target"),
        ({"prompt": "The capital of France is"}, "prompt"),
        ({"paraphrases": ["no subject here"]}, "paraphrases[0]"),
        ({"neighbors": [{"prompt": "x"}]}, "neighbors"),
    ],
)
def test_invalid_field_is_named_with_its_line(tmp_path, change, field):
    bad = {**GOOD, "id": "bad", **change}
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(FactFormatError) as err:
        read_facts(path)
    assert f"{path}:2" in str(err.value) and field in str(err.value)


def test_missing_field_is_named(tmp_path):
    bad = {k: v for k, v in GOOD.items() if k != "subject"}
    path = _write(tmp_path, [bad])
    with pytest.raises(FactFormatError, match=r":1: missing required field 'subject'"):
        read_facts(path)


def test_bad_json_names_the_line(tmp_path):
    path = _write(tmp_path, [GOOD, "", '{"id": "x", "subject": '])
    with pytest.raises(FactFormatError, match=r"facts.jsonl:3: invalid JSON"):
        read_facts(path)


def test_duplicate_ids_are_rejected(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD])
    with pytest.raises(FactFormatError, match="duplicate id 'capital-france'"):
        read_facts(path)


def test_unknown_bundled_name_lists_the_sets():
    with pytest.raises(FileNotFoundError, match="bundled set"):
        load_facts("no-such-set")


def test_bundled_sets_are_valid_and_rich_enough():
    facts = load_facts("all")
    assert len(facts) >= 150
    assert len({f.relation for f in facts}) >= 8
    for fact in facts:
        assert len(fact.paraphrases) >= 2, fact.id
        assert len(fact.neighbors) >= 3, fact.id
        assert all(n.target != fact.target for n in fact.neighbors), fact.id
