"""Robustness probes that look for a forgotten answer where the edited prompt does not.

Each probe measures one model state (before or after the edit) for a list of facts and returns
one plain dict of numbers per fact; :func:`excise.verify.outcome.judge` compares the two states.

* **logit lens**: decode the residual stream after every layer at the prompt's last position with
  the model's own final norm and unembedding, and record the target's rank and probability per
  layer. An edit that only suppresses the answer at the output leaves it visible mid-stack.
* **formats**: ask the fact as a question (chat frame, greedy answer checked for the target), as a
  lettered multiple-choice question (the right letter must outscore the other three, in a
  majority of ``mc_orders`` shuffles), and as a fill-in after ``k`` completed facts of the same
  relation (scored like the prompt).
"""

from __future__ import annotations

import torch

from excise.scoring import encode_target, score_targets
from excise.verify import templates
from excise.verify.generation import generate


@torch.no_grad()
def logit_lens(model, facts) -> list[dict]:
    """Per fact: the first target token's ``layer_rank`` and ``layer_prob`` ``[layer]`` in the lens.

    Layer ``l`` reads ``blocks.{l}.hook_resid_post`` (the last entry is the model's own output).
    Adds ``best_rank``, ``best_prob`` and ``best_layer`` (the layer of the best probability).
    """
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    results = []
    for fact in facts:
        tokens = model.to_tokens(fact.text)  # [1, pos]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        resid = torch.stack([cache[n][0, -1] for n in names])  # [layer, d_model]
        logits = model.unembed(model.ln_final(resid[None]))[0].float()  # [layer, d_vocab]
        target = encode_target(model, fact.target)[0]
        ranks = (logits > logits[:, target, None]).sum(-1)  # [layer]
        probs = logits.softmax(-1)[:, target]  # [layer]
        results.append({
            "layer_rank": ranks.tolist(), "layer_prob": probs.tolist(), "best_rank": int(ranks.min()),
            "best_prob": float(probs.max()), "best_layer": int(probs.argmax()),
        })
    return results


def question(model, facts, max_new_tokens: int = 12) -> list[dict]:
    """Per fact: the greedy answer to the fact's question and whether it contains the target."""
    prompts = [templates.question_prompt(f) for f in facts]
    answers = generate(model, prompts, max_new_tokens)
    return [{"question": templates.question_text(f), "answer": a,
             "known": f.target.strip().lower() in a.lower()} for f, a in zip(facts, answers)]


@torch.no_grad()
def multiple_choice(model, facts, distractors: list[list[str]], orders: int = 3) -> list[dict]:
    """Per fact: share of ``orders`` shuffles where the right letter beats the other three.

    ``distractors[i]`` are candidate wrong answers for ``facts[i]``. ``prob`` is the right
    letter's probability renormalised over the four letters, averaged over shuffles.
    """
    letters = [encode_target(model, " " + letter)[0] for letter in templates.LETTERS]
    results = []
    for fact, wrong in zip(facts, distractors):
        questions = [templates.multiple_choice(fact, wrong, seed) for seed in range(orders)]
        correct, probs = 0, []
        for mc in questions:
            logits = model(model.to_tokens(mc.prompt))[0, -1, letters].float()  # [4]
            correct += int(logits.argmax()) == mc.answer
            probs.append(float(logits.softmax(-1)[mc.answer]))
        results.append({"correct": correct, "orders": orders, "prob": sum(probs) / orders,
                        "known": correct * 2 > orders, "example": questions[0].prompt})
    return results


def few_shot(model, facts, examples: list[list]) -> list[dict]:
    """Per fact: rank, probability and greedy-known of the target after ``examples[i]`` as context."""
    prompts = [templates.few_shot_prompt(f, ex) for f, ex in zip(facts, examples)]
    scores = score_targets(model, prompts, [f.target for f in facts])
    return [{"rank": int(scores.rank[i]), "prob": float(scores.prob[i]),
             "known": bool(scores.known[i]), "example": prompts[i]} for i in range(len(facts))]
