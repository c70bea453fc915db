"""save_model writes a plain Hugging Face folder; the forget CLI writes model + Edit + report."""

from __future__ import annotations

import json

import pytest
import torch

from excise.edit import rome, save_model
from excise.edit.value import ValueSettings
from excise.facts import Fact, write_facts

FACT = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris")


def test_save_model_loads_with_plain_transformers(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    rome(tiny, FACT, layer=1, settings=ValueSettings(n_prefixes=1, steps=3), max_update_ratio=100,
         progress=False)
    tokens = tiny.to_tokens("The capital of France is")
    folder = save_model(tiny, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        assert torch.allclose(plain(tokens).logits, tiny(tokens), atol=1e-4)
    with pytest.raises(ValueError, match="not empty"):
        save_model(tiny, folder)
    with pytest.raises(ValueError, match="loaded from"):
        save_model(tiny, tiny.excise_source, overwrite=True)


def test_forget_cli(tiny_folders, tmp_path):
    from transformers import AutoModelForCausalLM

    from excise.cli import main

    facts = write_facts([FACT], tmp_path / "facts.jsonl")
    out, report = tmp_path / "edited", tmp_path / "report.json"
    args = ["forget", "--facts", str(facts), "--model", str(tiny_folders["gpt2"]), "--layer", "1",
            "--save", str(out), "--report", str(report), "--allow-unknown"]
    assert main(args) == 0
    saved = json.loads((out / "excise_edit" / "edit.json").read_text())
    assert saved["format_version"] == 2 and saved["edited_weights"]["sha256"]
    AutoModelForCausalLM.from_pretrained(out)
    data = json.loads(report.read_text())
    assert data["method"] == "rome" and data["probes"][0]["kind"] == "prompt"
    assert main(args) == 2  # refuses the now non-empty folder
    source = ["forget", "--facts", str(facts), "--model", str(tiny_folders["gpt2"]), "--layer",
              "1", "--save", str(tiny_folders["gpt2"]), "--overwrite"]
    assert main(source) == 2


def test_forget_cli_ablate(tiny_folders, tmp_path):
    from excise.cli import main

    facts = write_facts([FACT], tmp_path / "facts.jsonl")
    out = tmp_path / "ablated"
    args = ["forget", "--facts", str(facts), "--model", str(tiny_folders["neox"]), "--method",
            "ablate", "--top", "5", "--save", str(out), "--allow-unknown"]
    assert main(args) == 0
    edit = json.loads((out / "excise_edit" / "edit.json").read_text())
    assert edit["method"] == "ablate" and len(edit["components"]) == 5
    passes = ["forget", "--facts", str(facts), "--model", str(tiny_folders["neox"]), "--method",
              "ablate", "--passes", "2", "--save", str(tmp_path / "refused")]
    assert main(passes) == 2  # only memit has passes
    assert not (tmp_path / "refused").exists()


def test_forget_cli_memit_takes_its_last_layer_and_passes(tiny_folders, tmp_path):
    """``--layer L`` ends memit's default spread of layers at ``L``; ``--passes`` reaches memit."""
    from excise.cli import main
    from excise.edit.batch import DEFAULT_SPREAD

    other = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is", target=" Berlin")
    facts = write_facts([FACT, other], tmp_path / "facts.jsonl")
    out = tmp_path / "batch"
    args = ["forget", "--facts", str(facts), "--model", str(tiny_folders["llama"]), "--method",
            "memit", "--layer", "2", "--passes", "1", "--save", str(out), "--allow-unknown"]
    assert main(args) == 0
    edit = json.loads((out / "excise_edit" / "edit.json").read_text())
    assert edit["method"] == "memit" and edit["fact_ids"] == [FACT.id, other.id]
    assert edit["settings"]["passes"] == 1
    assert edit["settings"]["layers"] == list(range(max(0, 3 - DEFAULT_SPREAD), 3))
    zero = ["forget", "--facts", str(facts), "--model", str(tiny_folders["llama"]), "--method",
            "memit", "--passes", "0", "--save", str(tmp_path / "none")]
    assert main(zero) == 2


def test_plain_model_for_generation_shares_the_weights(tiny):
    """``share_weights=True`` builds the plain model around the live tensors (no second copy of
    the model) and generates exactly what the copy does; a later write shows in it."""
    from excise.export import hf_tensors, plain_hf_model

    shared, copied = plain_hf_model(tiny, share_weights=True), plain_hf_model(tiny)
    live = {t.data_ptr() for t in hf_tensors(tiny).values()}
    assert all(p.data_ptr() in live for p in shared.parameters())
    assert not any(p.data_ptr() in live for p in copied.parameters())
    tokens = tiny.to_tokens("The capital of France is")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tiny.tokenizer.eos_token_id)
    with torch.no_grad():
        assert torch.equal(shared.generate(tokens, **kwargs), copied.generate(tokens, **kwargs))
        name, weight = next(iter(hf_tensors(tiny).items()))
        original = weight.clone()
        weight.add_(1.0)
        try:
            assert torch.equal(shared.state_dict()[name], weight)
        finally:
            weight.copy_(original)
