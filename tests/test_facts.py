"""The Fact schema: JSONL round trip, validation errors that name file, line and field."""

from __future__ import annotations

import json

import pytest

from excise.facts import (
    Fact,
    FactFormatError,
    Probe,
    fact_split,
    load_facts,
    read_facts,
    write_facts,
)

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
    assert "same_answer" not in fact.to_dict() and "held_out_paraphrases" not in fact.to_dict()
    richer = Fact.from_dict({**GOOD, "id": "capital-france-2", "same_answer": [{"prompt": "The Louvre is in", "target": " Paris"}],
                             "held_out_paraphrases": ["Q: What is the capital of {}?\nA:"]})
    assert richer.held_out_texts == ["Q: What is the capital of France?\nA:"]
    path = write_facts([fact, richer], tmp_path / "out.jsonl")
    assert read_facts(path) == [fact, richer]


def test_split_is_fixed_and_holds_out_a_third():
    facts = load_facts("all")
    tune, held_out = load_facts("all", split="tune"), load_facts("all", split="held_out")
    assert len(tune) + len(held_out) == len(facts)
    assert 0.25 < len(held_out) / len(facts) < 0.42
    assert {f.relation for f in held_out} >= {"capital", "language", "landmark_city", "author"}
    assert fact_split("capital-france") == fact_split("capital-france")
    assert {fact_split(f.id) for f in held_out} == {"held_out"}
    with pytest.raises(ValueError, match="unknown split"):
        load_facts("all", split="test")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"target": ""}, "target"),
        ({"prompt": "The capital of France is"}, "prompt"),
        ({"paraphrases": ["no subject here"]}, "paraphrases[0]"),
        ({"neighbors": [{"prompt": "x"}]}, "neighbors"),
        ({"same_answer": [{"prompt": "x"}]}, "same_answer"),
        ({"held_out_paraphrases": ["no subject"]}, "held_out_paraphrases[0]"),
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
        assert all(p.target.strip() == fact.target.strip() and fact.subject not in p.prompt
                   for p in fact.same_answer), fact.id
        assert not set(fact.held_out_paraphrases) & {fact.prompt, *fact.paraphrases}, fact.id
    assert sum(bool(f.held_out_paraphrases) for f in facts) >= 0.95 * len(facts)
    assert sum(bool(f.same_answer) for f in facts) >= 0.4 * len(facts)
