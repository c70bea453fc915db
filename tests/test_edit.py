"""Editors on tiny random GPT-2 / Llama / NeoX models: mechanics, reversibility, oracles."""

from __future__ import annotations

import pytest
import torch

from excise.components import MLP, Head, Neuron, out_proj_weight
from excise.edit import EditError, ablate, finetune, load, memit, rome
from excise.edit.stats import SampleSpec, key_stats
from excise.edit.value import ValueSettings
from excise.facts import Fact, Probe
from excise.model import weights_hash

FACT = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
            paraphrases=("{}'s capital is",), neighbors=(Probe("The capital of Germany is", " Berlin"),),
            new_target=" Rome")
FAST = ValueSettings(n_prefixes=2, steps=4)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.original_model.state_dict().items()}


def _logits(model, text="The capital of France is"):
    with torch.no_grad():
        return model(model.to_tokens(text))[0, -1].float()


def test_rome_matches_closed_form_and_undoes_bit_for_bit(tiny):
    before, base = _state(tiny), weights_hash(tiny)
    logits0 = _logits(tiny)
    edit = rome(tiny, FACT, layer=1, settings=FAST, progress=False)
    assert tiny.excise_edits == [edit]
    probes = edit.info["value"]["subject_probes"]  # what the editor's own probes of France found
    assert set(probes) == {"forget", "keep", "keep_answers"} and len(probes["keep"]) <= 8
    ((name, delta),) = edit.deltas.items()
    view = delta if delta.shape[0] == tiny.cfg.d_mlp else delta.T  # [d_mlp, d_model]
    singular = torch.linalg.svdvals(view.double())
    assert singular[1] < 1e-3 * singular[0]  # rank one up to float32 rounding of new - old
    # independent oracle: the naive closed form from the stored key statistics
    from excise.edit.keys import subject_key
    from excise.edit.prompts import rewriting_prompts
    contrast = edit.info["contrast"]
    assert len(contrast["subjects"]) == 32 and "France" not in contrast["subjects"]
    assert 0 < contrast["weight"] <= 10.0
    with edit.reverted(tiny):
        c = key_stats(tiny, [1], SampleSpec(), progress=False)[1].second_moment.double()
        running = subject_key(tiny, 1, rewriting_prompts(tiny, FACT.prompt, FAST.n_prefixes), "France")
        k = (0.5 * (running + subject_key(tiny, 1, ["{}"], "France"))).double()
        others = torch.stack([subject_key(tiny, 1, [FACT.prompt], s) for s in contrast["subjects"]]).double()
    c = c + contrast["weight"] * others.T @ others / len(others)  # other subjects' keys, protected
    c = c + 1e-2 * c.diagonal().mean() * torch.eye(len(c), dtype=c.dtype)
    u = torch.linalg.inv(c) @ k / (k @ torch.linalg.inv(c) @ k)
    # k^T dW = delta exactly, and dW's row space is u
    kdw = k.float() @ view
    assert torch.allclose(view.double(), torch.outer(u, kdw.double()), atol=1e-5, rtol=1e-3)
    assert not torch.allclose(_logits(tiny), logits0)  # the edit took effect through live weights
    edit.undo(tiny)
    assert tiny.excise_edits == []
    assert weights_hash(tiny) == base
    for key, value in _state(tiny).items():
        assert torch.equal(value, before[key]), key


def test_context_managers_restore_even_on_error(tiny):
    edit = rome(tiny, FACT, layer=0, settings=FAST, progress=False)
    edited, base = _logits(tiny), edit.base_hash
    with pytest.raises(ZeroDivisionError), edit.reverted(tiny):
        assert weights_hash(tiny) == base
        raise ZeroDivisionError
    assert torch.equal(_logits(tiny), edited)
    edit.undo(tiny)
    with pytest.raises(KeyError), edit.applied(tiny):
        assert torch.equal(_logits(tiny), edited)
        raise KeyError("boom")
    assert weights_hash(tiny) == base


def test_save_load_and_hash_check(tiny, tmp_path, tiny_folders):
    from excise.model import load_model

    edit = rome(tiny, FACT, layer=1, objective="replace", settings=FAST, progress=False)
    edited = _logits(tiny)
    folder = edit.save(tmp_path / "edit")
    assert {p.name for p in folder.iterdir()} == {"edit.json", "edit.safetensors"}
    again = load(folder)
    assert again.method == "rome" and again.fact_ids == [FACT.id] and again.components == [MLP(1)]
    fresh = load_model(str(tiny.excise_source), device="cpu")
    again.apply(fresh)
    assert torch.allclose(_logits(fresh), edited, atol=1e-5)
    with pytest.raises(EditError, match="not the ones"):
        load(folder).apply(fresh)  # fresh is now edited: its hash differs from the base


def test_non_finite_edit_is_refused_and_nothing_written(tiny):
    edit = rome(tiny, FACT, layer=1, settings=FAST, progress=False)
    edit.undo(tiny)
    base = _state(tiny)
    name = next(iter(edit.deltas))
    edit.deltas[name][0, 0] = float("nan")
    with pytest.raises(EditError, match="non-finite"):
        edit.apply(tiny)
    assert all(torch.equal(v, base[k]) for k, v in _state(tiny).items())


def test_rome_refuses_out_of_proportion_update(tiny):
    base = weights_hash(tiny)
    with pytest.raises(EditError, match="out of proportion"):
        rome(tiny, FACT, layer=1, settings=FAST, max_update_ratio=1e-9, progress=False)
    assert weights_hash(tiny) == base


def test_zero_ablation_equals_hooked_ablation(tiny):
    neurons, head = [Neuron(1, 3), Neuron(1, 7), Neuron(2, 0)], Head(0, 1)
    tokens = tiny.to_tokens("The capital of France is")
    d_head = tiny.cfg.d_head

    def kill_neurons(layer, idx):
        def hook(act, hook):
            act[..., idx] = 0.0
            return act
        return (f"blocks.{layer}.mlp.hook_post", hook)

    def kill_head(act, hook):
        act[:, :, head.head] = 0.0
        return act

    hooks = [kill_neurons(1, [3, 7]), kill_neurons(2, [0]), ("blocks.0.attn.hook_z", kill_head)]
    with torch.no_grad():
        expected = tiny.run_with_hooks(tokens, fwd_hooks=hooks)
    edit = ablate(tiny, [*neurons, head], progress=False)
    with torch.no_grad():
        got = tiny(tokens)
    assert torch.allclose(got, expected, atol=1e-4)
    view = out_proj_weight(tiny, 1)
    assert torch.all(view[3] == 0) and d_head > 0
    edit.undo(tiny)


def test_mean_ablation(tiny):
    if "Llama" in type(tiny.original_model).__name__:  # no output biases to hold the mean
        with pytest.raises(EditError, match="no"):
            ablate(tiny, [Neuron(1, 3)], how="mean")
        return
    from excise.components import mlp_out_module
    from excise.edit.ablation import input_means

    mean = input_means(tiny, [mlp_out_module(tiny, 1)], SampleSpec(), weights_hash(tiny))
    mean = next(iter(mean.values()))[3]

    def fix(act, hook):
        act[..., 3] = mean
        return act

    tokens = tiny.to_tokens("The capital of France is")
    with torch.no_grad():
        expected = tiny.run_with_hooks(tokens, fwd_hooks=[("blocks.1.mlp.hook_post", fix)])
    ablate(tiny, [Neuron(1, 3)], how="mean", progress=False)
    with torch.no_grad():
        assert torch.allclose(tiny(tokens), expected, atol=1e-4)


@pytest.mark.parametrize("objective", ["gradient_ascent", "npo", "counterexample"])
def test_finetune_restricted_to_components(tiny, objective):
    from excise.scoring import score_targets

    answer = FACT.new_target if objective == "counterexample" else FACT.target
    before = score_targets(tiny, [FACT.text], [answer]).logprob
    edit = finetune(tiny, [FACT], objective=objective, params=[MLP(2)], steps=5, lr=1e-2,
                    n_prefixes=1, progress=False)
    assert len(edit.deltas) == 1 and "2" in next(iter(edit.deltas))
    after = score_targets(tiny, [FACT.text], [answer]).logprob
    assert (after > before) if objective == "counterexample" else (after < before)
    edit.undo(tiny)



@pytest.mark.parametrize("tiny", ["gpt2"], indirect=True)
def test_finetune_interrupted_mid_training_leaves_the_weights_untouched(tiny, monkeypatch):
    """An error after some optimiser steps (here the third step's check) restores every
    parameter bit for bit: a cancelled or failed baseline never leaves the model half trained."""
    import excise.edit.baselines as baselines

    original = {n: p.detach().clone() for n, p in tiny.original_model.named_parameters()}
    calls = {"n": 0}

    def failing_check(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return False

    monkeypatch.setattr(baselines, "_forgotten", failing_check)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, [FACT], params=[MLP(1)], steps=5, lr=1e-1, n_prefixes=1, progress=False)
    assert calls["n"] == 3
    for name, param in tiny.original_model.named_parameters():
        assert torch.equal(param, original[name]), name

def test_memit_batch_touches_only_given_layers(tiny):
    other = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is", target=" Berlin")
    base = weights_hash(tiny)
    edit = memit(tiny, [FACT, other], layers=[0, 1], settings=FAST, progress=False)
    assert edit.components == [MLP(0), MLP(1)] and len(edit.deltas) == 2
    assert all(torch.isfinite(d).all() and d.abs().sum() > 0 for d in edit.deltas.values())
    edit.undo(tiny)
    assert weights_hash(tiny) == base


def test_memit_second_pass_reedits_the_facts_the_first_left(tiny):
    """A pass that barely moves the weights (huge ``update_weight``) leaves both facts; the second
    pass edits them again on the edited model, and the Edit holds the sum of both passes."""
    other = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is", target=" Berlin")
    base = weights_hash(tiny)
    kwargs = dict(layers=[0, 1], update_weight=1e6, settings=FAST, progress=False)
    one = memit(tiny, [FACT, other], passes=1, **kwargs)
    one.undo(tiny)
    two = memit(tiny, [FACT, other], passes=2, **kwargs)
    rounds = two.info["passes"]
    assert [r["facts"] for r in rounds] == [[FACT.id, other.id]] * 2
    assert rounds[0]["left"] == rounds[1]["facts"] and len(one.info["passes"]) == 1
    for name, delta in two.deltas.items():  # the second pass adds to the first, same direction
        first = one.deltas[name].flatten().double()
        cosine = torch.nn.functional.cosine_similarity(delta.flatten().double(), first, dim=0)
        assert delta.norm() > 1.5 * one.deltas[name].norm() and cosine > 0.9
    two.undo(tiny)
    assert weights_hash(tiny) == base
    with pytest.raises(ValueError, match="at least one pass"):
        memit(tiny, [FACT], passes=0, **kwargs)


def test_key_statistics_stay_valid_after_edits_downstream_of_their_keys(tiny):
    """A rank-one edit at layer 1 leaves the keys of layers 0 and 1 as they were, not layer 2's."""
    from excise.components import mlp_in_module
    from excise.edit.stats import key_inputs_hash

    before = key_inputs_hash(tiny, [0, 1, 2])
    assert len(set(before.values())) == 3
    edit = rome(tiny, FACT, layer=1, settings=FAST, progress=False)
    after = key_inputs_hash(tiny, [0, 1, 2])
    assert after[0] == before[0] and after[1] == before[1] and after[2] != before[2]
    edit.undo(tiny)
    with torch.no_grad():  # what feeds layer 1's keys (its MLP input projection) does count
        mlp_in_module(tiny, 1).weight.add_(1e-3)
    changed = key_inputs_hash(tiny, [0, 1])
    assert changed[0] == before[0] and changed[1] != before[1]


def test_key_reads_stop_the_forward_pass_after_their_layer(tiny):
    """Reads of layer 0's keys see what a whole forward pass sees there, never run layer 1, and
    leave the model answering as before."""
    from excise.components import mlp_out_module
    from excise.hooks import forward_until, trace

    tokens = tiny.to_tokens(["The capital of France is", "Berlin is a city in"])
    first, second = mlp_out_module(tiny, 0), mlp_out_module(tiny, 1)
    before = _logits(tiny)
    with torch.no_grad(), trace({0: first, 1: second}, inputs=True) as whole:
        tiny(tokens)
    with torch.no_grad(), trace({0: first, 1: second}, inputs=True) as early:
        forward_until(tiny, tokens, [first])
    assert torch.equal(early[0].input, whole[0].input) and early[1].input is None
    assert not first._forward_pre_hooks and not second._forward_pre_hooks
    assert torch.equal(_logits(tiny), before)
    stray = torch.nn.Linear(2, 2)  # never called by the model: the pass runs whole, then says so
    with torch.no_grad(), pytest.raises(RuntimeError, match="never called 1 of the modules"):
        forward_until(tiny, tokens, [first, stray])
    assert not first._forward_pre_hooks and not stray._forward_pre_hooks
    stats = key_stats(tiny, [0], SampleSpec(n_sequences=4, length=8), progress=False)[0]
    assert stats.n_tokens > 0 and torch.isfinite(stats.second_moment).all()


def test_rome_sequence_is_one_edit_with_statistics_computed_once(tiny, monkeypatch, tmp_path):
    from excise.edit import stats
    from excise.edit.sequence import rome_sequence
    from excise.edit.value import output_scale

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path))
    passes, accumulate = [], stats._accumulate
    monkeypatch.setattr(stats, "_accumulate", lambda *a, **k: passes.append(a[1]) or accumulate(*a, **k))
    other = Fact(id="capital-germany", subject="Germany", prompt="The capital of {} is", target=" Berlin")
    base, state = weights_hash(tiny), _state(tiny)
    unedited = [output_scale(tiny, f, 1, settings=FAST) for f in (FACT, other)]
    seen = []  # after_each: each edit, with the weights as the sequence has left them so far
    edit = rome_sequence(tiny, [FACT, other], layer=1, settings=FAST, max_update_ratio=100, progress=False,
                         after_each=lambda e: seen.append((e.fact_ids, weights_hash(tiny))))
    assert [ids for ids, _ in seen] == [["capital-france"], ["capital-germany"]]
    assert len({base, seen[0][1], seen[1][1]}) == 3  # called on the edited weights, edit by edit
    assert passes == [[1]]  # the second edit reused the first one's key statistics
    # each value is scaled by its subject's MLP output on the unedited model, at most
    scales = [(e["output_scale"], e["value_scale"]) for e in edit.info["edits"]]
    assert [given for given, _ in scales] == pytest.approx(unedited)
    assert scales[0][1] == pytest.approx(unedited[0]) and scales[1][1] <= unedited[1] + 1e-6
    assert tiny.excise_edits == [edit] and edit.fact_ids == ["capital-france", "capital-germany"]
    assert [e["fact"] for e in edit.info["edits"]] == edit.fact_ids
    ((name, delta),) = edit.deltas.items()
    singular = torch.linalg.svdvals(delta.double())
    assert singular[1] > 1e-2 * singular[0] and singular[2] < 1e-3 * singular[0]  # two rank-one updates
    edit.undo(tiny)
    assert weights_hash(tiny) == base
    # all or nothing: the second fact cannot be replaced (no new_target), so the first is undone too
    with pytest.raises(ValueError, match="new_target"):
        rome_sequence(tiny, [FACT, other], layer=1, objective="replace", settings=FAST,
                      max_update_ratio=100, progress=False)
    assert tiny.excise_edits == [] and weights_hash(tiny) == base
    assert all(torch.equal(v, state[k]) for k, v in _state(tiny).items())


def test_a_shipped_sample_of_the_same_weights_replaces_generation(tiny, monkeypatch, tmp_path):
    from excise.edit import stats

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(stats, "SAMPLE_FOLDER", tmp_path / "shipped")
    spec, base = SampleSpec(n_sequences=3, length=8), weights_hash(tiny)
    generated = stats.sample_tokens(tiny, spec)
    stats._write_rows(stats.bundled_sample_path(spec, base), generated, base, spec)
    monkeypatch.setattr(stats, "sample_tokens", lambda *a: pytest.fail("generated despite the shipped sample"))
    rows = stats.cached_sample_tokens(tiny, spec, base)
    assert [r.tolist() for r in rows] == [r.tolist() for r in generated]
    assert (tmp_path / "cache" / "stats" / base[:20] / spec.tag / "sample.safetensors").is_file()
    with pytest.raises(pytest.fail.Exception):  # other weights (or another spec) still generate
        stats.cached_sample_tokens(tiny, SampleSpec(n_sequences=2, length=8), base)


def test_bad_input_is_explained(tiny):
    with pytest.raises(ValueError, match="layer 9 out of range"):
        rome(tiny, FACT, layer=9)
    with pytest.raises(ValueError, match="new_target"):
        rome(tiny, Fact(id="x", subject="France", prompt="{} is", target=" big"), layer=0,
             objective="replace")
    with pytest.raises(ValueError, match="zero"):
        ablate(tiny, [Neuron(0, 1)], how="half")


def test_layer_follows_a_trace_or_defaults_to_the_lookup_layer(tiny):
    from excise.edit.rank_one import default_layer
    from excise.locate import causal_trace

    loc = causal_trace(tiny, FACT, site="mlp", samples=3, progress=False)
    edit = rome(tiny, FACT, layer=loc, settings=FAST, max_update_ratio=100, progress=False)
    (component,) = edit.components
    edit.undo(tiny)
    column = loc.scores[:, loc.meta["subject_positions"][-1]]
    allowed = max(1, round(0.6 * tiny.cfg.n_layers))
    assert component.layer == int(column[:allowed].argmax())
    assert "causal-trace" in edit.info["layer_choice"]
    edit = rome(tiny, FACT, settings=FAST, max_update_ratio=100, progress=False)
    edit.undo(tiny)
    assert edit.components[0].layer == default_layer(tiny) and "default" in edit.info["layer_choice"]


def test_subject_probe_bank_is_worded_apart_from_the_bundled_facts():
    """The editor's own probes must not be the wordings the benches score (held-out honesty)."""
    from excise.edit.subject_probes import SUBJECT_TEMPLATES
    from excise.facts import load_facts

    scored = set()
    for fact in load_facts("all"):
        scored |= {fact.prompt, *fact.paraphrases, *fact.held_out_paraphrases}
        scored |= {p.prompt.replace(fact.subject, "{}") for p in fact.same_subject}
    assert len(SUBJECT_TEMPLATES) == len(set(SUBJECT_TEMPLATES))
    assert not set(SUBJECT_TEMPLATES) & scored


def test_contrast_subjects_stay_plentiful_and_held_out_when_many_facts_are_edited():
    """A long sequence leaves out the other facts' subjects and probes; the extra names fill in."""
    from excise.edit.keys import contrast_subjects
    from excise.facts import load_facts

    facts = load_facts("all", split="tune")[:200]
    fact, others = facts[0], facts[1:]
    bundled = {f.subject for f in load_facts("all")}
    named = " ".join(p.prompt for f in facts for p in (*f.neighbors, *f.same_subject, *f.same_answer))
    few = contrast_subjects(fact, 32)
    assert set(few) <= bundled  # a single edit's default draws on the bundled subjects only
    many = contrast_subjects(fact, 128, avoid=others)
    assert len(many) == len(set(many)) == 128
    assert not {s for s in many if s in named or s in {f.subject for f in facts}}
    assert len([s for s in many if s not in bundled]) > 64  # the bundled pool alone runs short


def test_nearest_contrast_keys_are_the_other_subjects_the_direction_reaches_most(tiny):
    """``contrast_nearest`` protects, of every subject the contrast keys may use (of any kind, the
    probes' subjects still left out), those with the largest ``|k . u|`` along the plain direction."""
    from excise.edit.keys import candidate_subjects, nearest_contrast_keys, probe_text, subject_key
    from excise.facts import find_fact, load_facts

    fact = find_fact(load_facts("all"), "currency-france")
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(0))
    keys, chosen = nearest_contrast_keys(tiny, 1, fact, 8, direction)
    pool = candidate_subjects(fact)
    assert len(chosen) == len(set(chosen)) == 8 and set(chosen) <= set(pool)
    assert not [s for s in chosen if s in probe_text(fact)]  # verification's probes stay held out
    others = [s for s in pool[:40] if s not in chosen]

    def reach(subjects):
        return torch.stack([subject_key(tiny, 1, [fact.prompt], s) for s in subjects]) @ direction

    assert torch.allclose(keys @ direction, reach(chosen), atol=1e-4, rtol=1e-4)
    assert reach(chosen).abs().min() >= reach(others).abs().max() - 1e-5
    edit = rome(tiny, FACT, layer=1, settings=FAST, contrast_nearest=8, progress=False)
    subjects = edit.info["contrast"]["subjects"]
    assert edit.settings["contrast_nearest"] == 8 and len(subjects) == len(set(subjects)) == 32
    edit.undo(tiny)
    with pytest.raises(ValueError, match="contrast_nearest=40"):
        rome(tiny, FACT, layer=1, settings=FAST, contrast_nearest=40, progress=False)


@pytest.mark.parametrize("family", ["Gemma 2", "Phi-3"])
def test_value_optimisation_from_the_edited_block_equals_full_forwards_on_other_families(family, tmp_path):
    """Families whose blocks take other arguments (Phi-3) or whose logits are soft-capped
    (Gemma 2): the partial forward matches the full one, so it is used, and the value is the same."""
    from excise.model import load_model
    from excise.testing import save_tiny_model

    model = load_model(str(save_tiny_model(family, tmp_path / "model")), device="cpu")
    partial, full = _value_equals_full_forward_value(model)
    assert partial["partial_forward"] and not full["partial_forward"]


def test_value_optimisation_from_the_edited_block_equals_full_forwards(tiny):
    """compute_value runs blocks layer.. from the cached residual and unembeds only the positions
    its losses read; the value, its steps and its losses equal those of full forwards."""
    partial, full = _value_equals_full_forward_value(tiny)
    assert partial["partial_forward"] and not full["partial_forward"]


def _value_equals_full_forward_value(model):
    """Both ways of adding the value (at the subject's last token; the exact rank-one edit along a
    direction, every token) optimised with partial and with full forwards: the same values."""
    from excise.edit import value as value_module

    settings = ValueSettings(n_prefixes=2, steps=5, subject_probes=False, low_precision=False)
    direction = torch.randn(model.cfg.d_mlp, generator=torch.Generator().manual_seed(0)) / model.cfg.d_mlp
    infos = []
    for along in (None, direction):
        runs = []
        for force_full in (False, True):
            with pytest.MonkeyPatch.context() as patch:
                if force_full:  # as if the partial forward had differed from the full one
                    patch.setattr(value_module, "_same", lambda *args: False)
                runs.append(value_module.compute_value(model, FACT, 1, settings=settings, direction=along))
        (d_partial, partial), (d_full, full) = runs
        assert torch.allclose(d_partial, d_full, atol=1e-5, rtol=1e-4)
        assert partial["steps"] == full["steps"]
        assert partial["final"]["loss"] == pytest.approx(full["final"]["loss"], rel=1e-4)
        assert partial["final"]["text_kl"] == pytest.approx(full["final"]["text_kl"], rel=1e-3, abs=1e-7)
        infos.append((partial, full))
    return infos[0]


@torch.no_grad()
def test_text_positions_with_one_token_prefix_are_read_once_with_their_copies(tiny):
    """The value's text KL reads each distinct token prefix before the subject once, weighted by
    the rows that share it (every row's BOS, a context that opens several templates); the logits
    at the positions left out equal those at the one kept, so the loss is the same."""
    from excise.edit.keys import subject_batch
    from excise.edit.value import _before_subject_mask, _distinct_text, _Reads

    templates = ["Some context. The capital of {} is", "Some context. The city where {} governs is",
                 "The capital of {} is", "{} is a"]
    batch, _ = subject_batch(tiny, templates, ["France"] * 4, [" Paris"] * 4)
    mask = _before_subject_mask(tiny, templates, batch.tokens.shape)
    copies = _distinct_text(batch.tokens, mask)
    kept = copies > 0
    assert int(copies.sum()) == int(mask.sum()) and int(kept.sum()) < int(mask.sum())
    assert not (kept & ~mask).any() and bool((copies[kept] >= 1).all()) and not copies[~kept].any()
    rows = batch.tokens.tolist()
    assert int(copies[0, 0]) == sum(r[0] == rows[0][0] for r in rows)  # BOS (or "Some"): read once
    logits = tiny(batch.tokens)  # [batch, pos, d_vocab]
    for row, position in mask.nonzero().tolist():
        twin = next((r, p) for r, p in kept.nonzero().tolist() if rows[r][:p + 1] == rows[row][:position + 1])
        assert torch.allclose(logits[row, position], logits[twin], atol=1e-5)
    reads = _Reads.of(batch, mask)
    assert len(reads.text) == int(kept.sum()) and float(reads.text_weight.sum()) == int(mask.sum())


def test_prompts_the_direction_barely_reaches_are_named_and_can_be_left_out(tiny):
    """Each prompt to forget gets its ``k . u`` (its subject key against the edit's direction); those
    far below the best are named, and ``min_reach`` leaves them out of the value optimisation."""
    from dataclasses import replace

    from excise.edit.keys import BLANK_TARGET, mlp_keys, subject_batch
    from excise.edit.value import compute_value, reached

    assert reached(torch.tensor([2.0, 0.1, 0.5]), 0.2).tolist() == [True, False, True]
    assert reached(torch.tensor([-1.0, -2.0]), 0.2).all()  # nothing reached: every prompt stays
    settings = ValueSettings(n_prefixes=2, steps=2, subject_probes=False)
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(1)) / tiny.cfg.d_mlp
    _, every = compute_value(tiny, FACT, 1, settings=settings, direction=direction)
    prompts, reach = every["rewrite_prompts"], torch.tensor(every["reach"])
    templates = [p.replace(FACT.subject, "{}") for p in prompts]
    batch, positions = subject_batch(tiny, templates, [FACT.subject] * len(prompts), [BLANK_TARGET] * len(prompts))
    keys = mlp_keys(tiny, 1, batch.tokens, positions)  # [n, d_mlp]
    assert torch.allclose(reach, keys.float() @ direction, rtol=1e-3, atol=1e-4)
    assert every["low_reach_prompts"] == [p for p, r in zip(prompts, reach) if r < 0.2 * reach.max()]
    assert every["left_out_prompts"] == []  # by default every prompt is optimised
    _, best_only = compute_value(tiny, FACT, 1, settings=replace(settings, min_reach=1.0), direction=direction)
    assert best_only["left_out_prompts"] == [p for p, r in zip(prompts, reach) if r < reach.max()]
    assert 0 < len(best_only["left_out_prompts"]) < len(prompts)
    assert best_only["final"]["main"] != pytest.approx(every["final"]["main"])


def test_the_value_optimisation_stops_once_the_prompts_stop_closing_in_on_the_goal(tiny):
    """``patience`` ends the optimisation when its last steps brought the prompts short of the goal
    no ``min_progress`` share closer than the best step before them (with ``stall_past_reach``, only
    once the prompts the direction reaches meet it); ``info`` says why it stopped."""
    from dataclasses import replace

    from excise.edit.value import _stalled, compute_value

    def history(*shortfalls, reached=0.0):  # each step's record; `reached`: the reached prompts' part
        return [{"shortfall": x, "reached_shortfall": reached} for x in shortfalls]

    rule = ValueSettings(patience=2, min_progress=0.1)
    assert not _stalled(history(10.0, 8.0), rule)  # too few steps to judge
    assert not _stalled(history(10.0, 9.5, 8.9), rule)  # 11% closer than the best step before
    assert _stalled(history(10.0, 9.5, 9.2), rule)
    assert _stalled(history(10.0, 7.0, 8.0, 7.5), rule)  # judged against the best step, not the last
    assert not _stalled(history(10.0, 9.5, 9.2), replace(rule, patience=0))
    past_reach = replace(rule, stall_past_reach=True)  # a stall counts once only barely reached prompts are short
    assert not _stalled(history(10.0, 9.5, 9.2, reached=0.5), past_reach)
    assert _stalled(history(10.0, 9.5, 9.2, reached=0.0), past_reach)

    # a goal no value reaches (the target 1000 nats down), and no step short of it counts as progress
    settings = ValueSettings(n_prefixes=2, steps=10, subject_probes=False, margin=1000.0, patience=2, min_progress=1.0)
    _, stalled = compute_value(tiny, FACT, 1, settings=settings)
    assert (stalled["steps"], stalled["stopped"], stalled["goal_met"]) == (3, "stalled", False)
    assert stalled["final"]["shortfall"] > 900
    assert [r["step"] for r in stalled["history"]] == [0, 1, 2] and stalled["history"][-1] == stalled["final"]
    assert stalled["history"][1]["delta_norm"] > stalled["history"][0]["delta_norm"] == 0  # the value starts at zero
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(1)) / tiny.cfg.d_mlp
    _, waits = compute_value(tiny, FACT, 1, settings=replace(settings, stall_past_reach=True), direction=direction)
    assert (waits["steps"], waits["stopped"]) == (10, "steps")  # the reached prompts never meet the goal
    assert 0 < waits["final"]["reached_shortfall"] <= waits["final"]["shortfall"]
    _, capped = compute_value(tiny, FACT, 1, settings=replace(settings, steps=4, patience=0))
    assert (capped["steps"], capped["stopped"]) == (4, "steps")
    _, met = compute_value(tiny, FACT, 1, settings=replace(settings, margin=0.0, steps=10, patience=0))
    assert met["stopped"] == ("goal" if met["goal_met"] else "steps")


def test_same_answer_probes_of_other_subjects_are_kept_whole(tiny, monkeypatch):
    """``ValueSettings(same_answer=N)`` adds prompts about other subjects (found by
    :mod:`excise.edit.answer_probes`; here given) to the value's batch and keeps their whole answer
    distributions where the exact rank-one edit reaches them: at zero value the term is zero, and
    its weight holds them closer to the unedited model's than without it."""
    from dataclasses import replace

    from excise.edit import value as value_module

    others = [("The capital of {} is", "Germany"), ("{} is a", "Italy")]
    monkeypatch.setattr(value_module, "answer_probes", lambda model, fact, limit: others[:limit])
    settings = ValueSettings(n_prefixes=2, steps=10, subject_probes=False, low_precision=False,
                             margin=1000.0, same_answer=2, same_answer_weight=0.0)
    # steps small against the value's clamp (twice the MLP's output), so the keep term can steer
    settings = replace(settings, lr=0.07 * value_module.output_scale(tiny, FACT, 1, settings=settings))
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(1))  # fires on every token
    _, free = value_module.compute_value(tiny, FACT, 1, settings=settings, direction=direction)
    # a tiny random model's answers barely move, so its keep term needs a large weight against the hinge
    _, held = value_module.compute_value(tiny, FACT, 1, settings=replace(settings, same_answer_weight=1e6),
                                         direction=direction)
    assert free["same_answer_prompts"] == held["same_answer_prompts"] == ["The capital of Germany is", "Italy is a"]
    assert free["history"][0]["same_answer_kl"] == pytest.approx(0.0, abs=1e-6)  # the value starts at zero
    assert free["final"]["same_answer_kl"] > 0
    assert held["final"]["same_answer_kl"] < 0.5 * free["final"]["same_answer_kl"]
    _, none = value_module.compute_value(tiny, FACT, 1, settings=replace(settings, same_answer=0), direction=direction)
    _, at_subject = value_module.compute_value(tiny, FACT, 1, settings=settings)  # cannot reach other subjects
    for info in (none, at_subject):
        assert info["same_answer_prompts"] == [] and info["final"]["same_answer_kl"] == 0.0


def test_forgetting_toward_unknown_aims_at_made_up_subjects_answers(tiny):
    """``ValueSettings(toward_unknown=True)``: each prompt to forget is pushed towards the mean of
    what the same prompt gets about made-up subjects (one batched forward, equal to each prompt's
    own), minus the target; the default aims at the subject's own answers. The made-up subjects
    are not the verification's control subjects, whose answers the attacks compare against."""
    from excise.edit import value as value_module
    from excise.edit.unknown_answers import UNKNOWN_SUBJECTS, unknown_answer_logprobs
    from excise.verify.control import CONTROL_SUBJECTS

    assert not set(UNKNOWN_SUBJECTS) & set(CONTROL_SUBJECTS)
    templates = ["The capital of {} is", "In short, {}'s capital is"]
    aimed = unknown_answer_logprobs(tiny, templates, FACT.target)  # [2, d_vocab]
    for row, template in zip(aimed, templates):
        alone = torch.stack([_logits(tiny, template.format(s)).softmax(-1) for s in UNKNOWN_SUBJECTS]).mean(0)
        torch.testing.assert_close(row.exp(), alone, atol=1e-5, rtol=1e-4)
    own = value_module._prepare(tiny, 1, FACT, templates, FACT.target, "forget", [])
    unknown = value_module._prepare(tiny, 1, FACT, templates, FACT.target, "forget", [], toward_unknown=True)
    torch.testing.assert_close(unknown.forget_q, value_module._without_targets(aimed, unknown.first))
    assert (unknown.forget_q[torch.arange(2), unknown.first] == 0).all()
    assert not torch.allclose(own.forget_q, unknown.forget_q, atol=1e-4)
    edit = rome(tiny, FACT, layer=1, settings=ValueSettings(n_prefixes=2, steps=2, toward_unknown=True),
                progress=False)
    try:
        assert edit.settings["value"]["toward_unknown"] is True
    finally:
        edit.undo(tiny)


def test_held_answers_barely_move_while_the_value_forgets(tiny, monkeypatch):
    """``ValueSettings(hold_kept=True)`` steps the value only off the gradients of the kept subject
    probes' answers (gathered in one backward pass, one copy of the value per batch row): those
    answers' log-probs then move far less than without it, while the prompt is pushed down as far."""
    from dataclasses import replace

    from excise.components import mlp_out_module
    from excise.edit import value as value_module
    from excise.edit.subject_probes import SubjectProbes

    keep = ("{} is a", "Most people in {} speak")  # the first is also an essence template
    answers = tuple(tiny.tokenizer.decode([int(_logits(tiny, t.format(FACT.subject)).argmax())]) for t in keep)
    found = SubjectProbes((), keep, answers)
    monkeypatch.setattr(value_module, "subject_probes", lambda model, fact, **kwargs: found)
    settings = ValueSettings(n_prefixes=2, steps=6, low_precision=False, margin=1000.0)
    settings = replace(settings, lr=0.05 * value_module.output_scale(tiny, FACT, 1, settings=settings))
    direction = torch.randn(tiny.cfg.d_mlp, generator=torch.Generator().manual_seed(1))
    module = mlp_out_module(tiny, 1)
    ids = [tiny.tokenizer.encode(a, add_special_tokens=False)[0] for a in answers]

    def moved(delta):  # how far each kept answer's log-prob moved under the exact rank-one edit
        before = [_logits(tiny, t.format(FACT.subject)).log_softmax(-1)[i] for t, i in zip(keep, ids)]
        with value_module._edited(module, delta, torch.zeros(1, dtype=torch.long), direction):
            after = [_logits(tiny, t.format(FACT.subject)).log_softmax(-1)[i] for t, i in zip(keep, ids)]
        return torch.tensor([abs(float(a - b)) for a, b in zip(after, before)])

    free, free_info = value_module.compute_value(tiny, FACT, 1, settings=settings, direction=direction)
    held, held_info = value_module.compute_value(tiny, FACT, 1, settings=replace(settings, hold_kept=True),
                                                 direction=direction)
    assert held_info["kept_prompts"] == ["France is a", "France is known for", "Most people in France speak"]
    assert float(moved(free).max()) > 1e-4  # tiny random models barely move; the ratio is what counts
    assert float(moved(held).max()) < 0.2 * float(moved(free).max())
    pushed = [info["target_logprob_before"][0] - info["target_logprob_after"][0] for info in (free_info, held_info)]
    assert pushed[1] > 0.5 * pushed[0] > 0, pushed
    # the projection leaves no part of a step along the gradients it is taken off
    grads = torch.randn(3, 16, generator=torch.Generator().manual_seed(2))
    step = value_module._off(grads, torch.randn(16, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(grads @ step, torch.zeros(3), atol=1e-5, rtol=0)
