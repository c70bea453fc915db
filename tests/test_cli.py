"""The ``excise`` CLI: help, facts check on a tiny model, facts import from ROME formats."""

from __future__ import annotations

import json

from excise.cli import main
from excise.facts import read_facts


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "facts" in out and "demo" in out


def test_facts_check_writes_the_known_subset(tmp_path, tiny_folders, capsys):
    from excise.model import load_model
    from excise.scoring import top_predictions

    folder = str(tiny_folders["llama"])
    model = load_model(folder)
    prompt = "The capital of France is"
    best = top_predictions(model, prompt, k=1)[0][0]
    records = [
        {"id": "known", "relation": "r", "subject": "France", "prompt": "The capital of {} is",
         "target": best, "paraphrases": [], "neighbors": []},
        {"id": "unknown", "relation": "r", "subject": "France", "prompt": "The capital of {} is",
         "target": " zzzz qqq", "paraphrases": [], "neighbors": []},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "known.jsonl"
    assert main(["facts", "check", str(src), "--model", folder, "-o", str(out)]) == 0
    assert [f.id for f in read_facts(out)] == ["known"]
    assert "total" in capsys.readouterr().out


def test_bad_fact_file_is_one_clear_line(tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "x"}\n')
    assert main(["facts", "check", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "missing required field" in err
