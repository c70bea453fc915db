"""The rephrasing-extraction and generation probes: judging logic and shapes (hand-made readings,
tiny models), and known answers on the real default model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from excise.facts import Fact
from excise.generation import generate
from excise.verify.outcome import ProbeOutcome
from excise.verify.probes import generation, rephrase
from excise.verify.probes.base import Setup, Skipped

FRANCE = Fact(id="capital-france", subject="France", prompt="The capital of {} is", target=" Paris",
              relation="capital", held_out_paraphrases=("Q: What is the capital of {}?\nA:", "{}'s capital is"))
MADE_UP = Fact(id="capital-made-up", subject="Quorvath Plinsky", prompt="The capital of {} is",
               target=" Paris", relation="capital", held_out_paraphrases=("{}'s capital is",))


def reph(rank: int, control: float = 0.0, sizes=(1, 20)) -> rephrase.RephraseReading:
    return rephrase.RephraseReading(
        known=rank < sizes[-1], rank=rank, candidates=list(sizes), hits=[rank < b for b in sizes],
        wordings=["a", "b"], wording_rank=[rank, rank + 1], wording_prob=[0.1, 0.05], top=[" Paris"],
        control_subjects=["Zorbla Quaxton"], control_hits=[0.0, control])


def gen(share: float, control: float = 0.0) -> generation.GenerationReading:
    return generation.GenerationReading(
        share=share, samples=8, prompts=["p", "q"], temperatures=[0.7, 1.0], by_prompt=[share, share],
        by_temperature=[share, share], examples=["x"], control_share=control)


# --- judging logic (hand-made readings) ---

def test_rephrase_judge_follows_candidates_and_control():
    assert rephrase.judge(reph(0), reph(11)).status == "recovered"  # in the top 20 after
    assert rephrase.judge(reph(0), reph(25)).status == "forgotten"
    assert rephrase.judge(reph(30), reph(0)).status == "uninformative"  # not a candidate before
    taught = rephrase.judge(reph(0), reph(3, control=2 / 3))  # made-up subjects find it too
    assert taught.status == "uninformative" and "never knew" in taught.reason
    assert rephrase.judge(reph(0), reph(3, control=1 / 3)).status == "recovered"
    assert "rank 11" in rephrase.judge(reph(0), reph(11)).reason


def test_generation_judge_follows_shares_and_control():
    assert generation.judge(gen(0.5), gen(0.125)).status == "recovered"  # any sample counts
    assert generation.judge(gen(0.5), gen(0.0)).status == "forgotten"
    assert generation.judge(gen(0.0), gen(0.5)).status == "uninformative"  # never said before
    taught = generation.judge(gen(0.5), gen(0.25, control=0.25))
    assert taught.status == "uninformative" and "never knew" in taught.reason
    assert generation.judge(gen(0.5), gen(0.5, control=0.1)).status == "recovered"


def test_names_answer_is_whole_word_and_case_insensitive():
    assert generation.names_answer(" Paris", "I love paris, really")
    assert generation.names_answer(" Paris", "Paris.")
    assert not generation.names_answer(" Paris", "a Parisian cafe")
    assert not generation.names_answer(" Paris", "Comparison")
    assert generation.names_answer(" William Shakespeare", "by william shakespeare in 1600")
    assert not generation.names_answer(" William Shakespeare", "William wrote it")
    assert generation.names_answer(" F. Scott Fitzgerald", "(F. Scott Fitzgerald)")


def test_wording_templates_are_unseen_and_deduplicated():
    wordings = rephrase.wording_templates(FRANCE)
    assert wordings[:2] == list(FRANCE.held_out_paraphrases)
    assert wordings.count("Q: What is the capital of {}?\nA:") == 1  # the QA question was held out
    assert any("<|im_start|>" in w for w in wordings)  # the chat-frame question
    assert FRANCE.prompt not in wordings
    other = Fact(id="x", subject="Y", prompt="{} is", target=" z", held_out_paraphrases=("{} was",))
    assert rephrase.wording_templates(other) == ["{} was"]  # no generic question quoting the prompt
    assert rephrase.wording_templates(Fact(id="x", subject="Y", prompt="{} is", target=" z")) == []


def test_pooled_rank_matches_a_naive_ranking():
    gen_ = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 50, generator=gen_).softmax(-1)  # [wording, d_vocab]
    best = {tok: max(float(probs[w, tok]) for w in range(4)) for tok in range(50)}
    order = sorted(best, key=lambda t: -best[t])
    for ids in ([7], [3, 41], [order[0]], [order[-1], order[5]]):
        assert rephrase.pooled_rank(probs, ids) == min(order.index(i) for i in ids)


# --- shapes on tiny models ---

def test_rephrase_measure_shapes_and_skip(tiny):
    bare = Fact(id="bare", subject="France", prompt="The capital of {} is", target=" Paris")
    setup = Setup(related=[[], []], rephrase_candidates=(1, 5))
    readings = rephrase.measure(tiny, [FRANCE, bare], setup)
    assert isinstance(readings[1], Skipped) and readings[1].reason == rephrase.NO_WORDINGS
    r = readings[0]
    n = len(rephrase.wording_templates(FRANCE))
    assert len(r.wordings) == len(r.wording_rank) == len(r.wording_prob) == n
    assert r.wordings[0] == "Q: What is the capital of France?\nA:"
    assert r.hits == [r.rank < 1, r.rank < 5] and r.known == r.hits[-1] and r.candidates == [1, 5]
    assert len(r.control_hits) == 2 and all(0 <= c <= 1 for c in r.control_hits)
    best = r.wording_prob.index(max(r.wording_prob))  # tokens beating the answer there beat it pooled
    assert r.rank >= r.wording_rank[best]
    json.dumps(r.to_dict())
    alone = rephrase.measure(tiny, [FRANCE], setup)[0]  # batching changes nothing
    assert alone.rank == r.rank and alone.wording_rank == r.wording_rank


def test_cached_sampling_matches_the_bridge_and_falls_back_under_hooks(tiny):
    from excise.generation import has_hooks, sample_continuations
    from excise.hooks import act_name

    prompts = ["The capital of France is", "Hamlet was written by a man who"]
    greedy = generate(tiny, prompts, 6)
    # near-zero temperature samples the argmax: the KV-cached copy continues as the bridge does
    assert not has_hooks(tiny)
    assert sample_continuations(tiny, prompts, 6, [1e-4, 1e-4], seed=1) == greedy
    hot = sample_continuations(tiny, prompts * 4, 6, [1.5] * 8, seed=1)
    assert len(set(hot)) > 2  # really sampled
    flip = lambda act, hook: -act  # noqa: E731
    with tiny.hooks(fwd_hooks=[(act_name("resid_post", tiny.cfg.n_layers - 1), flip)]):
        assert has_hooks(tiny)  # a hooked model is sampled through the bridge, hooks applied
        hooked = sample_continuations(tiny, prompts, 6, [1e-4, 1e-4], seed=1)
        assert hooked == generate(tiny, prompts, 6) != greedy
    assert not has_hooks(tiny)
    # the output capturing Hugging Face installs on its layers on first use changes nothing
    from transformers.utils.output_capturing import maybe_install_capturing_hooks

    from excise.export import _hf_model

    maybe_install_capturing_hooks(_hf_model(tiny))
    assert any(m._forward_hooks for m in tiny.modules()) and not has_hooks(tiny)


def test_generate_temperature_default_is_unchanged_and_cold_is_greedy(tiny):
    prompts = ["The capital of France is", "Hamlet was written by"]
    sampled = generate(tiny, prompts, 5, sample=True, seed=3)
    assert generate(tiny, prompts, 5, sample=True, seed=3, temperature=1.0) == sampled
    assert generate(tiny, prompts, 5, sample=True, seed=3, temperature=[1e-4, 1.0])[0] == \
        generate(tiny, prompts[:1], 5)[0]  # per-row temperature: near zero samples the argmax


def test_generation_measure_shapes(tiny):
    setup = Setup(related=[[]], gen_temperatures=(0.7, 1.0), gen_seeds=2, gen_tokens=3)
    r = generation.measure(tiny, [FRANCE], setup)[0]
    n_prompts = len(generation.fact_templates(FRANCE))
    assert r.samples == n_prompts * 2 * 2 and r.prompts[0] == FRANCE.text
    assert len(r.by_prompt) == n_prompts and len(r.by_temperature) == 2
    assert 1 <= len(r.examples) <= generation.EXAMPLES and 0 <= r.control_share <= 1
    json.dumps(r.to_dict())


def test_figures_draw_before_and_after():
    chat = "<|im_start|>user\nTell me about France.<|im_end|>\n<|im_start|>assistant\n"
    samples = generation.GenerationReading(**{**gen(0.25).to_dict(),
                                              "prompts": ["The capital of France is", chat]})
    outcomes = {"rephrase": ProbeOutcome("rephrase", "recovered", "", reph(0), reph(11)),
                "generation": ProbeOutcome("generation", "recovered", "", gen(0.5), samples)}
    report = SimpleNamespace(id="capital-france", probe=outcomes.__getitem__)
    fig = rephrase.figure(report)
    assert [t.name for t in fig.data] == ["before the edit", "after the edit"]
    assert list(fig.data[1].y) == [12, 13] and fig.layout.title.text.endswith("capital-france")
    fig = generation.figure(report)
    assert list(fig.data[0].x) == ["The capital of France is", "Tell me about France."]


# --- known answers on the real default model ---

class HiddenOnPrompt:
    """A hook that hides the answer after the fact's exact prompt only: where the final normed
    residual equals the prompt's last position, it is moved along the answer's unembedding so
    that the answer's logit is very low. Any other wording reads the unchanged model."""

    def __init__(self, model, fact):
        from excise.tokens import encode_target

        _, cache = model.run_with_cache(model.to_tokens(fact.text), names_filter="unembed.hook_in")
        self.ref = cache["unembed.hook_in"][0, -1].clone()  # [d_model]
        self.w = model.unembed.W_U[:, encode_target(model, fact.target)[0]].detach()  # [d_model]

    def __call__(self, x, hook):  # x: [batch, pos, d_model]
        near = (x - self.ref).norm(dim=-1) < 1e-2 * self.ref.norm()  # [batch, pos]
        if not near.any():
            return x
        x = x.clone()
        rows = x[near]
        x[near] = rows - ((rows @ self.w + 20.0) / (self.w @ self.w))[:, None] * self.w
        return x


@pytest.fixture(scope="module")
def france(real_model):
    from excise.facts import find_fact, load_facts

    return find_fact(load_facts("all"), "capital-france")


@pytest.fixture(scope="module")
def rephrase_before(real_model, france):
    made_up = Fact(id="capital-made-up", subject="Quorvath Plinsky", prompt=france.prompt,
                   target=france.target, relation="capital",
                   held_out_paraphrases=france.held_out_paraphrases)
    return rephrase.measure(real_model, [france, made_up], Setup(related=[[], []]))


@pytest.mark.real
@pytest.mark.slow
def test_rephrase_unedited_finds_the_fact_and_not_a_made_up_one(rephrase_before):
    known, never = rephrase_before
    assert known.rank == 0 and known.hits == [True, True]  # " Paris" tops the pooled candidates
    assert rephrase.judge(known, known).status == "recovered"
    assert known.control_hits[-1] < 0.5  # most made-up countries do not get Paris in their top 20
    assert not never.known and rephrase.judge(never, never).status == "uninformative"


@pytest.mark.real
@pytest.mark.slow
def test_rephrase_catches_an_answer_hidden_on_the_prompt_only(real_model, france, rephrase_before):
    from excise.scoring import score_targets

    hook = ("unembed.hook_in", HiddenOnPrompt(real_model, france))
    with real_model.hooks(fwd_hooks=[hook]):
        prompt = score_targets(real_model, [france.text], [france.target])
        after = rephrase.measure(real_model, [france], Setup(related=[[]]))[0]
    assert prompt.rank[0] > 1000 and prompt.prob[0] < 1e-9  # the prompt looks forgotten
    judged = rephrase.judge(rephrase_before[0], after)
    assert judged.status == "recovered" and after.rank == 0, judged.reason


@pytest.mark.real
@pytest.mark.slow
def test_rephrase_catches_a_rank_one_edit_given_only_the_prompt(real_model, france, rephrase_before):
    from excise.criteria import forgotten
    from excise.edit import rome
    from excise.edit.value import ValueSettings
    from excise.scoring import score_targets

    settings = ValueSettings(paraphrases=False, subject_probes=False)
    original = score_targets(real_model, [france.text], [france.target])
    edit = rome(real_model, france, settings=settings, progress=False)
    try:
        prompt = score_targets(real_model, [france.text], [france.target])
        after = rephrase.measure(real_model, [france], Setup(related=[[]]))[0]
    finally:
        edit.undo(real_model)
    assert forgotten(original, prompt)[0]  # on its own prompt: dethroned, 90% of its probability gone
    judged = rephrase.judge(rephrase_before[0], after)
    assert judged.status == "recovered" and 0 < after.rank < 20, judged.reason
    assert after.wording_rank[after.wordings.index("France's capital is")] == 0  # an unseen wording


@pytest.mark.real
@pytest.mark.slow
def test_generation_unedited_names_a_capital_but_not_a_made_up_ones(real_model, france):
    setup = Setup(related=[[], []], gen_temperatures=(0.7,), gen_seeds=1, gen_tokens=12)
    known, never = generation.measure(real_model, [france, MADE_UP], setup)
    assert known.by_prompt[0] == 1.0 and "Paris" in known.examples[0]  # "The capital of France is"
    assert generation.judge(known, known).status == "recovered"
    assert never.share == 0 and generation.judge(never, never).status == "uninformative"
