"""Editors on the real default model: a few facts, the claims of the issue in miniature."""

from __future__ import annotations

import pytest

from excise.criteria import forgotten, kept
from excise.edit import rome
from excise.facts import Fact, Probe
from excise.model import weights_hash
from excise.scoring import score_targets
from excise.text import perplexity

pytestmark = pytest.mark.real

FACTS = [
    Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
         neighbors=(Probe("The capital of Germany is", " Berlin"),
                    Probe("The capital of Italy is", " Rome"))),
    Fact(id="capital-japan", subject="Japan", prompt="The capital of {} is", target=" Tokyo",
         neighbors=(Probe("The capital of Germany is", " Berlin"),
                    Probe("The capital of Italy is", " Rome"))),
]


@pytest.fixture(scope="module")
def single_edits(real_model):
    """Each of FACTS forgotten alone by rome at layer 4, computed once and undone: the tests
    re-apply them (an Edit applies to the weights it was computed on)."""
    base = weights_hash(real_model)
    edits = {}
    for fact in FACTS:
        assert score_targets(real_model, [fact.text], [fact.target]).known.all(), \
            "the default model should know these facts"
        edits[fact.id] = rome(real_model, fact, layer=4, progress=False)
        edits[fact.id].undo(real_model)
    assert weights_hash(real_model) == base
    return edits


def test_rome_forgets_and_keeps_neighbours(real_model, single_edits):
    model = real_model
    base, ppl0 = weights_hash(model), perplexity(model)
    for fact in FACTS:
        prompts = [fact.text] + [p.prompt for p in fact.neighbors]
        targets = [fact.target] + [p.target for p in fact.neighbors]
        before = score_targets(model, prompts, targets)
        assert before.known.all(), "the default model should know these facts"
        edit = single_edits[fact.id].apply(model)
        try:
            after = score_targets(model, prompts, targets)
            assert forgotten(_row(before, 0), _row(after, 0)).all()
            assert kept(after)[1:].all()
            assert perplexity(model) <= 1.02 * ppl0
            assert edit.info["key_tokens"] > 1000
        finally:
            edit.undo(model)
    assert weights_hash(model) == base


def test_rome_sequence_keeps_earlier_edits_and_its_leaks_add_up(real_model, single_edits):
    """Two rank-one edits in sequence: the second does not bring the first fact back, and the
    neighbours lose more than under either edit alone (why batch editors exist)."""
    from excise.edit.sequence import rome_sequence

    model = real_model
    base, ppl0 = weights_hash(model), perplexity(model)
    neighbours = FACTS[0].neighbors
    prompts = [f.text for f in FACTS] + [p.prompt for p in neighbours]
    targets = [f.target for f in FACTS] + [p.target for p in neighbours]
    before = score_targets(model, prompts, targets)
    edit = rome_sequence(model, FACTS, layer=4, progress=False)
    try:
        after = score_targets(model, prompts, targets)
        assert all(forgotten(_row(before, i), _row(after, i)).all() for i in range(len(FACTS)))
        assert perplexity(model) <= 1.02 * ppl0
        assert [e["layer"] for e in edit.info["edits"]] == [4, 4]
    finally:
        edit.undo(model)
    assert weights_hash(model) == base
    n = len(FACTS)
    together = float((before.logprob - after.logprob)[n:].sum())
    for fact in FACTS:
        single = single_edits[fact.id].apply(model)
        try:
            alone = float((before.logprob - score_targets(model, prompts, targets).logprob)[n:].sum())
        finally:
            single.undo(model)
        assert together > alone, (fact.id, together, alone)


def _row(scores, i):
    return scores.take(slice(i, i + 1))


def test_the_shipped_key_sample_belongs_to_the_default_model(real_model):
    """``make key-sample`` wrote it for these weights: a stale one would be silently unused."""
    from excise.edit.stats import SampleSpec, bundled_sample_path
    from excise.model import weights_hash

    assert bundled_sample_path(SampleSpec(), weights_hash(real_model)).is_file(), "run `make key-sample`"


def test_memit_forgets_several_facts_at_once(real_model):
    """One batch edit forgets facts of four relations; other subjects' facts stay."""
    from excise.edit import memit
    from excise.facts import find_fact, load_facts

    model = real_model
    bundled = load_facts("all")
    facts = [find_fact(bundled, i) for i in ("capital-france", "language-germany", "landmark-city-eiffel-tower",
                                             "company-country-toyota")]
    keep = [("The capital of Germany is", " Berlin"), ("The official language of Italy is", " Italian"),
            ("The Colosseum is located in the city of", " Rome")]
    prompts = [f.text for f in facts] + [p for p, _ in keep]
    targets = [f.target for f in facts] + [t for _, t in keep]
    base = weights_hash(model)
    before = score_targets(model, prompts, targets)
    assert before.known.all(), "the default model should know these facts"
    edit = memit(model, facts, progress=False)
    try:
        after = score_targets(model, prompts, targets)
        gone = [bool(forgotten(_row(before, i), _row(after, i))[0]) for i in range(len(facts))]
        assert sum(gone) >= 3, (gone, after.rank[:len(facts)])
        assert kept(after)[len(facts):].sum() >= 2, after.rank[len(facts):]
        assert edit.settings["layers"] == [3, 4, 5]
    finally:
        edit.undo(model)
    assert weights_hash(model) == base


def test_contrast_keys_keep_the_rank_one_direction_off_other_subjects(real_model):
    """Other countries' keys in the statistics cut how strongly an edit of Germany fires on
    held-out countries (its bench neighbours, never among the contrast subjects), while the edit
    still fires fully on Germany."""
    import torch

    from excise.edit.keys import balanced_key, contrast_keys, subject_key
    from excise.edit.prompts import rewriting_prompts
    from excise.edit.rank_one import protected_direction, rank_one_direction
    from excise.edit.stats import SampleSpec, key_stats
    from excise.edit.value import ValueSettings
    from excise.facts import find_fact, load_facts

    model, layer = real_model, 4
    fact = find_fact(load_facts("all"), "capital-germany")
    held_out = ["Malaysia", "Peru", "Australia", "Austria"]
    stats = key_stats(model, [layer], SampleSpec(), progress=False, base_hash=weights_hash(model))[layer]
    templates = rewriting_prompts(model, fact.prompt, ValueSettings().n_prefixes)
    key = balanced_key(model, layer, templates, fact.subject)
    keys, subjects = contrast_keys(model, layer, fact, 32)
    assert len(subjects) == 32 and not set(held_out) & set(subjects)
    others = torch.stack([subject_key(model, layer, [fact.prompt], s) for s in held_out])  # [4, d_mlp]
    plain, _ = rank_one_direction(layer, key, stats.second_moment)
    protected, _, _, weight = protected_direction(layer, key, stats.second_moment, keys, 10.0)
    assert weight == 10.0  # no fallback needed on the real model
    reach = {}
    for name, u in {"plain": plain, "contrast": protected}.items():
        assert float(key @ u) == pytest.approx(1.0, rel=1e-3)
        reach[name] = float((others @ u).abs().mean())
    assert reach["contrast"] < 0.5 * reach["plain"], reach


def test_nearest_contrast_keys_keep_the_direction_off_subjects_that_share_the_answer(real_model):
    """Protecting the other subjects the plain direction reaches most (``contrast_nearest``) cuts
    how strongly an edit of Spain's language fires on the Spanish-speaking countries of its
    same-answer probes, which the contrast keys never use, against the default's subjects of the
    fact's kind; the edit still fires fully on Spain."""
    import torch

    from excise.edit.keys import (
        balanced_key,
        contrast_keys,
        nearest_contrast_keys,
        probe_text,
        subject_key,
    )
    from excise.edit.prompts import rewriting_prompts
    from excise.edit.rank_one import protected_direction, rank_one_direction
    from excise.edit.stats import SampleSpec, key_stats
    from excise.edit.value import ValueSettings
    from excise.facts import find_fact, load_facts

    model, layer = real_model, 4
    facts = load_facts("all")
    fact = find_fact(facts, "language-spain")
    stats = key_stats(model, [layer], SampleSpec(), progress=False, base_hash=weights_hash(model))[layer]
    key = balanced_key(model, layer, rewriting_prompts(model, fact.prompt, ValueSettings().n_prefixes), fact.subject)
    plain, _ = rank_one_direction(layer, key, stats.second_moment)
    near, chosen = nearest_contrast_keys(model, layer, fact, 32, plain)
    assert not [s for s in chosen if s in probe_text(fact)]
    shared = []  # [probes, d_mlp]: each same-answer probe's key at its subject
    for probe in fact.same_answer:
        subject = max((f.subject for f in facts if f.subject in probe.prompt), key=len)
        shared.append(subject_key(model, layer, [probe.prompt.replace(subject, "{}", 1)], subject))
    shared = torch.stack(shared)
    reach = {}
    for name, others in {"kind": contrast_keys(model, layer, fact, 32)[0], "nearest": near}.items():
        u, _, _, weight = protected_direction(layer, key, stats.second_moment, others, 10.0)
        assert weight == 10.0 and float(key @ u) == pytest.approx(1.0, rel=1e-3)
        reach[name] = float((shared @ u).abs().mean())
    assert reach["nearest"] < 0.7 * reach["kind"], reach


def test_default_rome_keeps_the_subjects_other_facts_without_being_told(real_model):
    """A user lists the fact and its paraphrases, none of the subject's other facts; the editor's own
    probes of France find its other facts (kept, France's language weakened) and other wordings of
    the capital (forgotten), and other subjects with the answer Paris keep it. (Given the prompt
    alone, without paraphrases, France's language and currency do break: see the README's forget
    section.)"""
    from dataclasses import replace

    from excise.comparison import compare
    from excise.edit.subject_probes import subject_probes
    from excise.facts import find_fact, load_facts

    model = real_model
    bundled = find_fact(load_facts("all"), "capital-france")
    told = replace(bundled, neighbors=(), same_subject=(), same_answer=(), held_out_paraphrases=())
    found = subject_probes(model, told)
    assert "The city where the government of {} sits is" in found.forget
    assert any("language" in t for t in found.keep) and " French" in found.keep_answers
    edit = rome(model, told, progress=False)
    try:
        (c,) = compare(model, [bundled], before=edit.reverted(model))
    finally:
        edit.undo(model)
    # the direction barely reaches France where it opens the text (its key differs right after
    # BOS): those wordings are named; the prompt itself, in running text, is reached
    low = edit.info["value"]["low_reach_prompts"]
    assert low and all(p.startswith("France") for p in low), low
    assert told.text not in low and edit.info["value"]["left_out_prompts"] == []
    assert c.prompt_forgotten
    assert c.tally("same_subject") == (2, 2)  # the language and the currency of France
    # but "kept" hides damage, which the weakened tally counts: French is still the top answer
    # for France's language at less than half its probability before the edit
    weak = dict(zip((p for p, _ in c.pairs["same_subject"]), c.weakened("same_subject").tolist()))
    assert weak == {"The official language of France is": True, "The currency used in France is the": False}
    assert c.weakened_tally()[0] == 1, c.rows()
    hits, total = c.tally("same_answer")  # the Eiffel Tower, the Louvre, ... are still in Paris
    assert total >= 3 and hits == total
    hits, total = c.tally("held_out_paraphrases")
    assert hits >= total - 1, c.rows()  # "France's capital is" opens with the subject (see value.py)


def test_specific_subject_probes_keep_the_subjects_own_answers_not_template_continuations(real_model):
    """By default most kept probes of Japan answer a template's continuation (" its", " the"); with
    ``specificity=`` every kept answer is far likelier after Japan than after made-up subjects, so
    the kept probes ask Japan's capital and language (the default's miss the language)."""
    from excise.edit.subject_probes import subject_probes
    from excise.edit.unknown_answers import unknown_answer_logprobs
    from excise.facts import find_fact, load_facts

    fact = find_fact(load_facts("all"), "currency-japan")
    plain = subject_probes(real_model, fact)
    specific = subject_probes(real_model, fact, min_confidence=0.1, specificity=10.0)
    assert " Japanese" not in plain.keep_answers and {" its", " the"} <= set(plain.keep_answers), plain
    assert {" Tokyo", " Japanese"} <= set(specific.keep_answers), specific
    assert not {" its", " the", "<|im_end|>"} & set(specific.keep_answers), specific
    assert specific.forget == plain.forget and " yen" not in specific.keep_answers
    # each kept answer, read back: at least 10x likelier after Japan than after made-up subjects
    generic = unknown_answer_logprobs(real_model, list(specific.keep), " .").exp()
    japan = unknown_answer_logprobs(real_model, list(specific.keep), " .", subjects=(fact.subject,)).exp()
    for row, answer in enumerate(specific.keep_answers):
        token = real_model.tokenizer.encode(answer, add_special_tokens=False)[0]
        assert float(japan[row, token]) >= max(0.1, 10 * float(generic[row, token])), (specific.keep[row], answer)


def test_holding_the_kept_answers_keeps_japans_capital_and_language_under_the_deeper_push(real_model):
    """Forgetting the yen with the log-1000 margin moves Japan's whole representation: with the
    specific probes kept by the KL term alone, Tokyo and Japanese both lose first place (the goal is
    met in a few Adam steps, which the keep term barely bends); stepping off the kept answers'
    gradients (``hold_kept``) keeps both, and the yen is forgotten either way."""
    from dataclasses import replace

    from excise.comparison import compare
    from excise.edit.value import ValueSettings
    from excise.facts import find_fact, load_facts

    fact = find_fact(load_facts("all"), "currency-japan")
    deeper = ValueSettings(margin=6.907755, specific_probes=True)
    results = {}
    for hold in (False, True):
        edit = rome(real_model, fact, progress=False, settings=replace(deeper, hold_kept=hold))
        try:
            (results[hold],) = compare(real_model, [fact], before=edit.reverted(real_model))
        finally:
            edit.undo(real_model)
    assert [p for p, _ in results[True].pairs["same_subject"]] == [
        "The capital of Japan is", "The official language of Japan is"]
    assert results[False].tally("same_subject") == (0, 2)
    assert results[True].tally("same_subject") == (2, 2)
    assert results[False].prompt_forgotten and results[True].prompt_forgotten


def test_answer_probes_find_other_subjects_with_the_answer_and_leave_the_probes_out(real_model):
    """The editor's own same-answer probes (:mod:`excise.edit.answer_probes`): every prompt found is
    about another subject and the unedited model answers the fact's target there; subjects that
    the fact's own probes name are left out (they stay held out for verification), and found once
    the user lists no probes."""
    from dataclasses import replace

    from excise.edit.answer_probes import answer_probes
    from excise.facts import find_fact, load_facts
    from excise.scoring import build_batch, first_answer_logprobs
    from excise.tokens import encode_target

    model = real_model
    macbeth = find_fact(load_facts("all"), "author-macbeth")
    named = " ".join(p.prompt for p in (*macbeth.neighbors, *macbeth.same_subject, *macbeth.same_answer))
    assert "Hamlet" in named  # another Shakespeare play among its same-answer probes
    found = answer_probes(model, macbeth, 16)
    assert all(subject not in named and subject != macbeth.subject for _, subject in found), found
    told = replace(macbeth, neighbors=(), same_subject=(), same_answer=())
    found_told = answer_probes(model, told, 16)
    assert any(subject == "Hamlet" for _, subject in found_told), found_told

    germany = find_fact(load_facts("all"), "continent-germany")
    found = answer_probes(model, germany, 8)
    assert len(found) == 8 and all(t == germany.prompt for t, _ in found)  # other countries' continent
    prompts = [t.format(subject) for t, subject in found]
    batch = build_batch(model, prompts, [germany.target] * len(prompts))
    top = first_answer_logprobs(model, batch).argmax(-1)
    assert (top == encode_target(model, germany.target)[0]).all(), prompts
