"""The explorer, driven from Python as a user drives it: set widget values, click buttons.

On a tiny random Llama model the workflow is checked (results shown, one edit at a time, the
weights back bit for bit after undo, cancel and bad input changing nothing), not what it finds;
one test on the real default model checks the whole loop there.
"""

from __future__ import annotations

import sys

import pytest
import torch

import excise
from excise.commands import explore as explore_module
from excise.commands.explore import Explorer, explore
from excise.commands.explore_tables import typed_fact
from excise.edit import ValueSettings
from excise.facts import Fact, Probe

FACT = Fact(
    id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
    relation="capital", paraphrases=("{}'s capital is",),
    held_out_paraphrases=("The capital city of {} is",),
    neighbors=(Probe("The capital of Germany is", " Berlin"),),
    same_subject=(Probe("The official language of France is", " French"),),
    same_answer=(Probe("The Eiffel Tower is in the city of", " Paris"),),
)
GERMANY = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is",
               target=" Berlin", relation="capital")


@pytest.fixture
def tiny(tiny_folders):
    """A fresh tiny Llama model (one architecture is enough for a user interface)."""
    from excise.model import load_model

    return load_model(str(tiny_folders["llama"]), device="cpu")


@pytest.fixture
def explorer(tiny) -> Explorer:
    """A synchronous explorer (jobs run inside ``click()``) with small, fast settings."""
    ex = explore(tiny, [FACT, GERMANY], background=False)
    ex.trace_samples = ex.circuit_samples = 2
    ex.generation_tokens = 4
    ex.editor_options["rome"] = {"settings": ValueSettings(n_prefixes=2, steps=4)}
    ex.editor_options["memit"] = {"settings": ValueSettings(n_prefixes=2, steps=4)}
    ex.editor_options["finetune: gradient ascent"] = {"steps": 3, "n_prefixes": 1}
    return ex


def weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def unchanged(model, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_locate_apply_undo_round_trip(explorer, tiny):
    original = weights(tiny)
    assert (explorer.prompt.value, explorer.subject.value) == (FACT.text, "France")
    assert explorer.current_fact() is FACT
    explorer.site.value = "mlp"
    explorer.locate_button.click()
    assert not explorer.failed, explorer.message
    assert explorer.trace.site == "mlp" and explorer.heads.axes == ("layer", "head")
    assert explorer.layer.value == explorer.trace.edit_layer()[0]
    assert len(explorer.locate_view.outputs) == 3
    for name in ("trace", "heads", "neurons"):
        layout = explorer.figures[name].layout
        assert layout.title.text and layout.xaxis.title.text and layout.yaxis.title.text

    explorer.editor.value = "rome"
    explorer.apply_button.click()
    assert not explorer.failed, explorer.message
    assert explorer.edit is not None and explorer.edit.is_applied
    assert not unchanged(tiny, original)
    table = explorer.scores_view.value
    for column in ("p before", "p after", "rank after", "paraphrase", "held-out wording", "neighbour",
                   "same subject", "same answer"):
        assert column in table
    assert table.count("<tr>") == 1 + len(explorer.comparison.rows()) == 7
    assert "greedy after" in explorer.generation_view.value
    assert len(explorer.generations["after"]) == len(explorer.generations["prompts"]) == 6
    assert {"circuit", "attribution", "attention"} <= set(explorer.figures)
    assert len(explorer.circuit_view.outputs) == 3

    edited = weights(tiny)
    explorer.apply_button.click()  # one edit at a time
    assert explorer.failed and "undo it first" in explorer.message
    assert unchanged(tiny, edited)

    explorer.undo_button.click()
    assert not explorer.failed and "bit for bit" in explorer.message
    assert explorer.edit is None and unchanged(tiny, original)
    assert not getattr(tiny, "excise_edits", [])


@pytest.mark.parametrize("editor", ["memit", "ablate neurons", "finetune: gradient ascent"])
def test_other_editors_apply_and_undo(explorer, tiny, editor):
    original = weights(tiny)
    explorer.editor.value = editor
    explorer.circuits.value = False
    explorer.n_neurons.value = 5
    explorer.apply_button.click()
    assert not explorer.failed, explorer.message
    assert explorer.edit.is_applied and not unchanged(tiny, original)
    if editor == "ablate neurons":
        assert len(explorer.edit.components) == 5
    assert explorer.circuit_view.outputs == ()
    explorer.undo_button.click()
    assert unchanged(tiny, original)


@pytest.mark.parametrize("cancel_at_call", [1, 2], ids=["before-apply", "after-apply"])
def test_cancel_during_a_step_leaves_the_weights_unchanged(explorer, tiny, monkeypatch, cancel_at_call):
    """Cancel is clicked while the generations before (1) or after (2) the edit are written."""
    original = weights(tiny)
    calls = []

    def generate_then_cancel(*args, **kwargs):
        calls.append(1)
        if len(calls) == cancel_at_call:
            explorer.cancel_button.click()
        return real_generate(*args, **kwargs)

    real_generate = explore_module.generate
    monkeypatch.setattr(explore_module, "generate", generate_then_cancel)
    explorer.circuits.value = False
    explorer.apply_button.click()
    assert "cancelled" in explorer.message and not explorer.failed
    assert explorer.edit is None and explorer.comparison is None
    assert unchanged(tiny, original) and not getattr(tiny, "excise_edits", [])
    assert not explorer.apply_button.disabled and explorer.cancel_button.disabled


def test_cancel_inside_the_editor_stops_its_optimisation(explorer, tiny, monkeypatch):
    """Cancel is clicked during rome's second value-optimisation step: the editor stops there
    (no third step) instead of finishing its call, and nothing is written."""
    from excise.edit import value

    original = weights(tiny)
    steps = []

    def loss_then_cancel(*args, **kwargs):
        steps.append(1)
        if len(steps) == 2:
            explorer.cancel_button.click()
        return real_loss(*args, **kwargs)

    real_loss = value._loss
    monkeypatch.setattr(value, "_loss", loss_then_cancel)
    explorer.editor_options["rome"] = {"settings": ValueSettings(n_prefixes=2, steps=20)}
    explorer.apply_button.click()
    assert "cancelled" in explorer.message and not explorer.failed
    assert len(steps) == 2
    assert explorer.edit is None and unchanged(tiny, original) and not getattr(tiny, "excise_edits", [])


def test_cancel_from_the_page_while_a_background_job_runs(explorer, tiny):
    original = weights(tiny)
    explorer.background = True
    explorer.apply_button.click()
    assert explorer.apply_button.disabled and not explorer.cancel_button.disabled
    explorer.cancel_button.click()
    explorer.wait(timeout=60)
    assert "cancelled" in explorer.message and not explorer.apply_button.disabled
    assert explorer.edit is None and unchanged(tiny, original)


@pytest.mark.parametrize("field, value, says", [
    ("prompt", "", "the prompt is empty"),
    ("target", " ", "the target is empty"),
    ("subject", "Spain", "does not occur in the prompt"),
])
def test_bad_input_is_one_line_and_changes_nothing(explorer, tiny, field, value, says):
    original = weights(tiny)
    getattr(explorer, field).value = value
    for button in (explorer.locate_button, explorer.apply_button):
        button.click()
        assert explorer.failed and says in explorer.message and "\n" not in explorer.message
        assert says in explorer.status.value
    assert explorer.trace is None and explorer.edit is None and unchanged(tiny, original)
    explorer.undo_button.click()
    assert explorer.failed and explorer.message == "undo failed: no edit to undo: apply one first"


def test_typed_fact_reads_a_filled_in_prompt_or_a_template():
    fact = typed_fact(" The capital of France is ", "France", "Paris")
    assert (fact.prompt, fact.subject, fact.target, fact.id) == ("The capital of {} is", "France",
                                                                  " Paris", "typed")
    assert typed_fact("In {} people say", "Spain", " Hola").prompt == "In {} people say"
    assert typed_fact("{France} is", "France", " x").text == "{France} is"


def test_editing_a_field_switches_to_a_typed_fact(explorer):
    explorer.fact_menu.value = 1
    assert explorer.current_fact() is GERMANY
    explorer.target.value = " Bonn"
    typed = explorer.current_fact()
    assert typed.id == "typed" and typed.text == GERMANY.text and typed.target == " Bonn"


def test_explore_is_served_lazily_and_displays_its_widget(explorer):
    assert excise.explore is explore
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()


def test_missing_ipywidgets_is_one_line(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match=r"pip install 'excise\[notebooks\]'"):
        explore(tiny, [FACT])


@pytest.mark.real
def test_real_model_locate_prefills_the_layer_and_an_ablation_undoes(real_model):
    from excise.facts import find_fact, load_facts
    from excise.model import weights_hash

    fact = find_fact(load_facts("all"), "capital-france")
    base = weights_hash(real_model)
    ex = explore(real_model, [fact], background=False)
    ex.trace_samples, ex.generation_tokens = 2, 6
    ex.locate_button.click()
    assert not ex.failed, ex.message
    assert ex.layer.value == ex.trace.edit_layer()[0]
    ex.editor.value, ex.circuits.value = "ablate neurons", False
    try:
        ex.apply_button.click()
        assert not ex.failed, ex.message
        prompt = ex.comparison.rows()[0]
        assert prompt["kind"] == "prompt" and prompt["prob_after"] < prompt["prob_before"]
    finally:
        ex.undo_button.click()
    assert ex.edit is None and weights_hash(real_model) == base
