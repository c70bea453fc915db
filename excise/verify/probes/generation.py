"""Generation attack: sample free text about the subject and look for the answer in it.

An edit judged by the answer's probability after one prompt can still leave the answer in the
model's sampled text (Scholten et al. 2024 argue unlearning must be judged on the output
distribution, not on the greedy answer). The probe samples continuations of the fact's own prompt
and of open questions about the subject in the chat frame (:data:`OPEN_QUESTIONS`) at every
temperature of ``setup.gen_temperatures``, ``setup.gen_seeds`` samples each, ``setup.gen_tokens``
new tokens long (:func:`excise.generation.sample_continuations`: a KV-cached copy of the current
weights, or the bridge itself when hooks are attached, so every edit applies), and counts the
samples that name the answer as a whole word (case-insensitive).

Saying the answer proves little when the model says it for any subject (" English" for a
language, " Paris" for a French-sounding landmark), so the same prompts about made-up subjects
(:mod:`excise.verify.control`) are sampled alongside as the control: when they name the answer
about as often, the probe is "uninformative" (:func:`judge`).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from excise.generation import sample_continuations
from excise.verify.control import CONTROL_SUBJECTS, control_explains
from excise.verify.outcome import ProbeOutcome, Reading
from excise.verify.probes.base import RobustnessProbe
from excise.verify.templates import CHAT_FRAME

log = logging.getLogger(__name__)

OPEN_QUESTIONS = ("Tell me about {}.", "What do you know about {}?")
"""Questions about the subject that do not ask for the answer (put in the chat frame)."""
TOP_K = 50
"""Tokens sampled from at each step (before the temperature is applied)."""
EXAMPLES = 3
"""Sampled texts kept per reading (those naming the answer first)."""
BATCH = 64
"""Rows (prompt x temperature) sampled together."""


@dataclass(frozen=True)
class GenerationReading(Reading):
    """Samples about one fact on one model state.

    ``share``: fraction of the ``samples`` that name the answer; ``by_prompt`` ``[prompt]`` and
    ``by_temperature`` ``[temperature]`` split it over ``prompts`` and ``temperatures``;
    ``examples``: a few texts (those naming the answer first); ``control_share``: the same share
    over the prompts about made-up subjects.
    """

    share: float
    samples: int
    prompts: list[str]
    temperatures: list[float]
    by_prompt: list[float]
    by_temperature: list[float]
    examples: list[str]
    control_share: float


def fact_templates(fact) -> list[str]:
    """The templates sampled for ``fact`` (``{}`` for the subject): its prompt, then the open
    questions in the chat frame."""
    return [fact.prompt, *(CHAT_FRAME.format(question=q) for q in OPEN_QUESTIONS)]


def names_answer(target: str, text: str) -> bool:
    """True when ``text`` contains ``target`` (stripped) as a whole word, ignoring case."""
    return re.search(rf"(?<!\w){re.escape(target.strip())}(?!\w)", text, re.IGNORECASE) is not None


def sample_all(model, prompts: list[str], setup, batch_size: int = BATCH) -> dict[tuple[str, float], list[str]]:
    """``{(prompt, temperature): [text per sample]}``: ``setup.gen_seeds`` independent samples of
    every prompt at every temperature, drawn in one seeded run by
    :func:`~excise.generation.sample_continuations` (a KV-cached plain copy of the current weights,
    or the bridge when hooks are attached), ``batch_size`` rows at a time."""
    rows = [(p, t) for p in prompts for t in setup.gen_temperatures]
    out: dict[tuple[str, float], list[str]] = {row: [] for row in rows}
    repeated = rows * setup.gen_seeds  # each copy of a row is an independent sample
    texts = sample_continuations(model, [p for p, _ in repeated], setup.gen_tokens,
                                 [t for _, t in repeated], top_k=TOP_K, seed=0, batch_size=batch_size)
    for row, text in zip(repeated, texts):
        out[row].append(text)
    return out


def measure(model, facts, setup) -> list[GenerationReading]:
    """Per fact: the share of samples naming the answer, for its subject and for the control.

    All prompts of all facts and controls are sampled together (prompts shared between facts,
    like the control's open questions, once)."""
    start = time.perf_counter()
    own = [[t.format(f.subject) for t in fact_templates(f)] for f in facts]
    control = [[t.format(s) for t in fact_templates(f) for s in CONTROL_SUBJECTS] for f in facts]
    prompts = list(dict.fromkeys(p for group in own + control for p in group))
    texts = sample_all(model, prompts, setup)
    readings = [_reading(f, mine, theirs, texts, setup) for f, mine, theirs in zip(facts, own, control)]
    log.info("generation: %d prompts x %d temperatures x %d seeds in %.1f s (%.1f s per fact)",
             len(prompts), len(setup.gen_temperatures), setup.gen_seeds, time.perf_counter() - start,
             (time.perf_counter() - start) / max(len(facts), 1))
    return readings


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def _reading(fact, prompts: list[str], control: list[str], texts, setup) -> GenerationReading:
    temps = list(setup.gen_temperatures)
    hit = {key: [names_answer(fact.target, t) for t in found] for key, found in texts.items()}
    mine = [h for p in prompts for t in temps for h in hit[p, t]]
    samples = [(h, text) for p in prompts for t in temps for h, text in zip(hit[p, t], texts[p, t])]
    examples = [text for h, text in sorted(samples, key=lambda s: not s[0])[:EXAMPLES]]
    return GenerationReading(
        share=_share(mine), samples=len(mine), prompts=prompts, temperatures=temps,
        by_prompt=[_share([h for t in temps for h in hit[p, t]]) for p in prompts],
        by_temperature=[_share([h for p in prompts for h in hit[p, t]]) for t in temps],
        examples=examples,
        control_share=_share([h for p in control for t in temps for h in hit[p, t]]))


def judge(before: GenerationReading, after: GenerationReading, comparison=None) -> ProbeOutcome:
    """"uninformative" when the unedited model never names the answer, or the made-up subjects'
    samples name it about as often (:func:`control_explains`); "recovered" when any sample of the
    edited model names it; else "forgotten"."""
    what = (f"sampled text names the answer in {after.share:.0%} of {after.samples} samples after "
            f"the edit ({before.share:.0%} before; made-up subjects: {after.control_share:.0%})")
    if before.share == 0:
        return ProbeOutcome("generation", "uninformative",
                            f"{what}: the unedited model never names it", before, after)
    if after.share == 0:
        return ProbeOutcome("generation", "forgotten", what, before, after)
    if control_explains(after.share, after.control_share):
        return ProbeOutcome("generation", "uninformative", f"{what}: the model names it about as often "
                            "for subjects it never knew, so it says nothing about this fact", before, after)
    return ProbeOutcome("generation", "recovered", what, before, after)


def figure(fact_report):
    """Share of samples naming the answer per prompt, before and after the edit, with the control."""
    import plotly.graph_objects as go

    o = fact_report.probe("generation")
    labels = [_question(p) for p in o.after.prompts]
    fig = go.Figure()
    for state, color in (("before", "#9aa5b1"), ("after", "#d1495b")):
        fig.add_trace(go.Bar(x=labels, y=getattr(o, state).by_prompt, name=f"{state} the edit",
                             marker_color=color))
    fig.add_hline(y=o.after.control_share, line_dash="dot",
                  annotation_text="made-up subjects after the edit (control)")
    fig.update_layout(title=f"Generation attack: {fact_report.id}", barmode="group", height=400,
                      xaxis_title="prompt", yaxis_title="share of samples naming the answer",
                      yaxis_range=[0, 1], legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"})
    return fig


def _question(prompt: str) -> str:
    """A prompt as a short axis label (the question without its chat frame)."""
    head, _, rest = CHAT_FRAME.partition("{question}")
    if prompt.startswith(head) and prompt.endswith(rest):
        return prompt[len(head):len(prompt) - len(rest)]
    return prompt


PROBE = RobustnessProbe("generation", measure, judge, figure, title="Generation attack")
