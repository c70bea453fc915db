"""Target scoring: multi-token sequence log-probabilities against a token-by-token oracle."""

from __future__ import annotations

import pytest
import torch

from excise.scoring import build_batch, encode_prompt, encode_target, score_targets


def _oracle_logprob(model, prompt: str, target: str) -> float:
    """log p(target | prompt), one unbatched forward per target token."""
    ids = encode_prompt(model, prompt)
    total = 0.0
    for token in encode_target(model, target):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1]
        total += logits.log_softmax(-1)[token].item()
        ids.append(token)
    return total


def test_multi_token_scores_match_hand_computation(tiny):
    prompts = ["The capital of France is", "Harry Potter was written by", "Toyota"]
    targets = [" Paris", " J.K. Rowling", " is a company from Japan"]
    assert len(encode_target(tiny, targets[1])) > 1
    scores = score_targets(tiny, prompts, targets, batch_size=2)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        assert scores.logprob[i].item() == pytest.approx(_oracle_logprob(tiny, p, t), abs=1e-4)


def test_rank_and_known_follow_the_argmax(tiny):
    prompt = "The capital of France is"
    with torch.no_grad():
        logits = tiny(tiny.to_tokens(prompt))[0, -1]
    best = tiny.tokenizer.decode([int(logits.argmax())])
    worst = tiny.tokenizer.decode([int(logits.argmin())])
    scores = score_targets(tiny, [prompt, prompt], [best, worst])
    if encode_target(tiny, best) == [int(logits.argmax())]:
        assert scores.rank[0] == 0 and scores.known[0]
    assert scores.rank[1] == tiny.cfg.d_vocab - 1 and not scores.known[1]


def test_overlong_prompt_is_refused(tiny):
    with pytest.raises(ValueError, match="context length"):
        build_batch(tiny, ["Paris " * 400], [" Paris"])


@pytest.mark.real
def test_real_model_multi_token_target(real_model):
    prompt, target = "Harry Potter was written by", " J.K. Rowling"
    assert len(encode_target(real_model, target)) > 1
    score = score_targets(real_model, [prompt], [target])
    assert score.logprob[0].item() == pytest.approx(_oracle_logprob(real_model, prompt, target), abs=1e-4)


def _full_forward_answers(model, batch):
    """Reference: the full forward's logits at every answer position, row by row."""
    rows, positions = batch.answer_index()
    return model(batch.tokens)[rows, positions]


def _check_answer_logits(model):
    """Stopping at the final norm and unembedding only the answer positions gives the full
    forward's logits there, the same gradients, and leaves no hook behind."""
    from excise.generation import has_hooks
    from excise.scoring import answer_logits, answer_logprobs, sequence_logprobs

    batch = build_batch(model, ["The capital of France is", "Toyota", "A"],
                        [" Paris", " is a company from Japan", " b"])
    params = [p for p in model.original_model.parameters() if p.requires_grad]
    fast = answer_logits(model, batch)
    assert fast.shape == (sum(len(t) for t in batch.target_ids), model.cfg.d_vocab)
    torch.testing.assert_close(fast, _full_forward_answers(model, batch), atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(answer_logprobs(model, batch).sum(), params)
    full = sequence_logprobs(batch, _full_forward_answers(model, batch))
    for got, want in zip(grads, torch.autograd.grad(full.sum(), params)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not has_hooks(model)


def test_answer_logits_equal_the_full_forward_and_train_alike(tiny):
    _check_answer_logits(tiny)


@pytest.mark.parametrize("family", ["Gemma 2", "Phi-3", "OLMo 2"])
def test_answer_logits_on_families_whose_logits_or_blocks_differ(family, tmp_path):
    """Gemma 2 soft-caps its logits after the unembedding; Phi-3 and OLMo 2 blocks differ."""
    from excise.model import load_model
    from excise.testing import save_tiny_model

    _check_answer_logits(load_model(str(save_tiny_model(family, tmp_path / "model")), device="cpu"))


def test_hooks_after_the_blocks_fire_once_through_the_full_forward(tiny):
    """A hook on the unembedding (or the final norm) cannot run in a forward stopped before it:
    answer_logits falls back to the full forward, and the hook fires exactly once."""
    from excise.scoring import answer_logits

    batch = build_batch(tiny, ["The capital of France is"], [" Paris"])
    calls = []

    def boost(logits, hook):
        calls.append(hook.name)
        return logits + 5.0 * (torch.arange(logits.shape[-1]) == 7)

    hooked = answer_logits(tiny, batch, fwd_hooks=[("unembed.hook_out", boost)])
    assert len(calls) == 1
    plain = answer_logits(tiny, batch)
    torch.testing.assert_close(hooked[:, 7] - plain[:, 7], torch.full_like(plain[:, 7], 5.0))
    scores = score_targets(tiny, ["The capital of France is"], [" Paris"],
                           fwd_hooks=[("unembed.hook_out", boost)])
    assert len(calls) == 2 and scores.logprob[0] < score_targets(tiny, ["The capital of France is"], [" Paris"]).logprob[0]
