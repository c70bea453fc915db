"""ROME format import: CounterFact and known_1000 keep their meaning."""

from __future__ import annotations

import json

from excise.cli import main
from excise.facts import read_facts
from excise.importers import from_counterfact


def test_counterfact_record_semantics():
    record = {
        "case_id": 7,
        "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                              "subject": "Danielle Darrieux", "target_true": {"str": "French"},
                              "target_new": {"str": "English"}},
        "paraphrase_prompts": ["Some prefix. Danielle Darrieux spoke the language", "no subject"],
        "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
    }
    (fact,), dropped = from_counterfact([record])
    assert fact.prompt == "The mother tongue of {} is" and fact.target == " French"
    assert fact.new_target == " English"
    assert fact.paraphrases == ("Some prefix. {} spoke the language",)
    assert fact.neighbors[0].target == " French"  # neighbours share the TRUE answer
    assert dropped == {"paraphrase_without_subject": 1}


def test_import_public_files(shared_data, tmp_path):
    out = tmp_path / "cf.jsonl"
    assert main(["facts", "import", str(shared_data / "counterfact_subset_839.json"),
                 "--format", "counterfact", "-o", str(out)]) == 0
    facts = read_facts(out)
    assert len(facts) == 839
    assert all(f.neighbors for f in facts)
    out = tmp_path / "known.jsonl"
    assert main(["facts", "import", str(shared_data / "known_1000.json"),
                 "--format", "known1000", "-o", str(out)]) == 0
    facts = read_facts(out)
    raw = json.loads((shared_data / "known_1000.json").read_text())
    assert len(facts) == len(raw)
    assert facts[0].text == raw[0]["prompt"]
