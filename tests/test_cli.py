"""The ``excise`` CLI: help, facts check on a tiny model, facts import from ROME formats."""

from __future__ import annotations

import json

import pytest

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


FACT_RECORD = {"id": "capital-france", "relation": "capital", "subject": "France",
               "prompt": "The capital of {} is", "target": " Paris"}


def _facts_file(tmp_path, records=(FACT_RECORD,)):
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_forget_refuses_bad_input_in_one_line_before_loading_a_model(tmp_path, capsys):
    """Each refusal comes before the model is loaded (the model path does not even exist)."""
    nowhere = str(tmp_path / "no-model")
    facts = _facts_file(tmp_path)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = {
        "holds no facts": ["--facts", str(empty), "--save", str(tmp_path / "o1")],
        "is not a folder": ["--facts", str(facts), "--save", str(blocker)],
        "is a file, not a folder": ["--facts", str(facts), "--save", str(blocker / "below")],
        "layers count from 0": ["--facts", str(facts), "--method", "memit", "--layer", "-1",
                                "--save", str(tmp_path / "o2")],
        "no fact with id 'nope'": ["--facts", str(facts), "--ids", "nope", "--save", str(tmp_path / "o3")],
    }
    for expected, args in cases.items():
        assert main(["forget", *args, "--model", nowhere]) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1, err
        assert "no-model" not in err  # refused before the model was looked for
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_forget_refuses_a_fact_the_model_does_not_know(tiny_folders, tmp_path, capsys):
    facts = _facts_file(tmp_path, [{**FACT_RECORD, "target": " zzzz qqq"}])
    out = tmp_path / "edited"
    args = ["forget", "--facts", str(facts), "--model", str(tiny_folders["llama"]), "--layer", "1",
            "--save", str(out), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "does not know 'capital-france'" in err and "nothing to forget" in err
    assert not out.exists()


def test_ctrl_c_is_one_line(monkeypatch, capsys):
    from excise.commands import facts as facts_command

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(facts_command, "run_import", interrupted)
    assert main(["facts", "import", "x.json", "--format", "counterfact", "-o", "y.jsonl"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and len(err.strip().splitlines()) == 1


def test_outputs_are_not_overwritten_without_force(tmp_path, capsys):
    existing = tmp_path / "out.jsonl"
    existing.write_text("keep me\n")
    source = tmp_path / "cf.json"
    source.write_text("[]")
    assert main(["facts", "import", str(source), "--format", "counterfact", "-o", str(existing)]) == 2
    assert "--force" in capsys.readouterr().err and existing.read_text() == "keep me\n"
    lines = tmp_path / "lines.jsonl"
    lines.write_text(json.dumps(FACT_RECORD) + "\n")
    assert main(["facts", "import", str(lines), "--format", "known1000", "-o",
                 str(tmp_path / "new.jsonl")]) == 2
    err = capsys.readouterr().err
    assert str(lines) in err and "JSON" in err  # the wrong format names the file
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["facts", "check", str(empty), "-o", str(tmp_path / "k.jsonl")]) == 2
    assert "holds no facts" in capsys.readouterr().err


def test_verify_without_a_before_state_refuses_before_any_work(tiny_folders, tmp_path, capsys):
    facts = _facts_file(tmp_path)
    rc = main(["verify", "--model", str(tiny_folders["gpt2"]), "--facts", str(facts),
               "--no-progress"])
    assert rc == 2 and "--original" in capsys.readouterr().err


def test_help_states_the_real_defaults(capsys):
    from excise.edit.batch import DEFAULT_PASSES
    from excise.verify.probes.registry import PROBES

    with pytest.raises(SystemExit):
        main(["forget", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_PASSES};" in text and "(default: rome;" in text
    with pytest.raises(SystemExit):
        main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(p in text for p in PROBES) and "(default: 20)" in text and "--no-progress" in text


def test_verify_uses_the_edit_a_forget_folder_carries_and_reports_by_exit_code(tiny_folders, tmp_path):
    facts = _facts_file(tmp_path)
    out, report = tmp_path / "edited", tmp_path / "v.json"
    assert main(["forget", "--facts", str(facts), "--model", str(tiny_folders["llama"]), "--layer",
                 "1", "--save", str(out), "--allow-unknown", "--no-progress"]) == 0
    rc = main(["verify", "--model", str(out), "--facts", str(facts), "--probes", "logit_lens",
               "--fluency-tokens", "0", "--no-perplexity", "--json", str(report), "--exit-code",
               "--no-progress"])
    data = json.loads(report.read_text())
    assert "reverted" in data["settings"]["before"]  # "before" is the carried edit, undone
    assert rc == (0 if data["facts"][0]["verdict"] == "forgotten" else 1)


def test_a_long_trace_warns_with_an_estimate(tiny, monkeypatch):
    from excise.facts import Fact
    from excise.locate import causal_trace, trace

    monkeypatch.setattr(trace, "SLOW_SECONDS", 0.0)
    fact = Fact("x", "France", "The capital of {} is", " Paris")
    with pytest.warns(UserWarning, match=r"-token prompt: about \d+ min expected"):
        causal_trace(tiny, fact, samples=1, progress=False)
