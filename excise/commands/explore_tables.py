"""The explorer's text: facts typed into it, and its before/after tables as HTML.

Used by :mod:`excise.commands.explore`; widget-free, so it is tested without a browser.
"""

from __future__ import annotations

import html

from excise.comparison import GROUPS, TO_FORGET, Comparison, fact_pairs
from excise.facts import Fact

GROUP_NAMES = {"prompt": "prompt", "paraphrases": "paraphrase",
               "held_out_paraphrases": "held-out wording", "neighbors": "neighbour",
               "same_subject": "same subject", "same_answer": "same answer"}
"""How the tables name each probe group of :data:`excise.comparison.GROUPS`."""

GENERATION_PROMPTS = {"prompt": 1, "paraphrases": 2, "held_out_paraphrases": 1, "neighbors": 1,
                      "same_subject": 1, "same_answer": 1}
"""How many prompts of each group the explorer continues greedily before and after an edit."""



def typed_fact(prompt: str, subject: str, target: str) -> Fact:
    """A :class:`Fact` (id ``"typed"``, no probes of its own) from text typed into the explorer.

    ``prompt`` is the filled-in prompt, where ``subject`` must occur (its first occurrence is the
    subject), or a template with ``{}`` where the subject goes. A ``target`` without a leading
    space gets one: answers continue the prompt after a space. Raises ValueError with one line
    saying what is missing.
    """
    prompt, subject, target = prompt.strip(), subject.strip(), target.rstrip()
    if not prompt:
        raise ValueError("the prompt is empty: type one, or choose a bundled fact")
    if not subject:
        raise ValueError("the subject is empty: type the entity the prompt is about")
    if not target.strip():
        raise ValueError("the target is empty: type the answer that follows the prompt, e.g. Paris")
    template = prompt
    if "{}" not in prompt:
        if subject not in prompt:
            raise ValueError(f"the subject {subject!r} does not occur in the prompt: type it as "
                             "the prompt spells it, or put {} where it goes")
        escaped = prompt.replace("{", "{{").replace("}", "}}")
        template = escaped.replace(subject.replace("{", "{{").replace("}", "}}"), "{}", 1)
    target = target if target[0].isspace() else " " + target
    return Fact.from_dict({"id": "typed", "subject": subject, "prompt": template, "target": target},
                          where="typed fact")


def generation_prompts(fact) -> list[tuple[str, str]]:
    """``(group, prompt)`` pairs the explorer continues greedily (:data:`GENERATION_PROMPTS`)."""
    pairs = fact_pairs(fact)
    return [(group, prompt) for group, n in GENERATION_PROMPTS.items()
            for prompt, _ in pairs[group][:n]]


def scores_html(comparison: Comparison, edit) -> str:
    """The before/after table of ``comparison`` as HTML: a summary of each group, then one row
    per probe (:meth:`Comparison.rows`) with its probability and rank before and after."""
    known = {group: comparison.known_before(group).tolist() for group in GROUPS}
    seen = dict.fromkeys(GROUPS, 0)
    rows = []
    for row in comparison.rows():
        group = row["kind"]
        verdict = _verdict(row, known[group][seen[group]])
        seen[group] += 1
        rows.append([GROUP_NAMES[group], row["prompt"], row["target"], f"{row['prob_before']:.3f}",
                     f"{row['prob_after']:.3f}", row["rank_before"], row["rank_after"], verdict])
    header = ["group", "prompt", "target", "p before", "p after", "rank before", "rank after",
              "verdict"]
    title = f"{edit.method} edit of {components_text(edit)}: {_summary(comparison)}"
    return f"<p><b>{html.escape(title)}</b></p>" + _table(header, rows)


def _verdict(row: dict, known_before: bool) -> str:
    if row["kind"] in TO_FORGET:
        return "forgotten" if row["forgotten"] else "not forgotten"
    if not known_before:
        return "not known before"
    if not row["kept"]:
        return "lost"
    return "kept, p more than halved" if row["weakened"] else "kept"


def _summary(comparison: Comparison) -> str:
    """Per non-empty group: how many were forgotten, or kept of those known before."""
    parts = []
    for group in GROUPS:
        hits, total = comparison.tally(group)
        if comparison.pairs[group]:
            what = "forgotten" if group in TO_FORGET else "of those known before kept"
            parts.append(f"{GROUP_NAMES[group]}: {hits}/{total} {what}")
    return "; ".join(parts)


def components_text(edit) -> str:
    keys = [c.key for c in edit.components]
    if not keys:
        return f"{len(edit.deltas)} parameters"
    if len(keys) <= 4:
        return ", ".join(keys)
    return f"{len(keys)} components ({', '.join(keys[:3])}, ...)"


def generations_html(prompts: list[tuple[str, str]], before: list[str], after: list[str]) -> str:
    """Greedy continuations before and after the edit, one row per prompt, as an HTML table."""
    rows = [[GROUP_NAMES[group], prompt, b, a]
            for (group, prompt), b, a in zip(prompts, before, after)]
    return _table(["group", "prompt", "greedy before", "greedy after"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    cell = 'style="padding:2px 8px; text-align:left; white-space:pre-wrap"'
    head = "".join(f"<th {cell}>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(str(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure_output(fig) -> dict:
    """A display_data output drawing ``fig`` in an Output widget (plotly's mime type: JupyterLab,
    VS Code), built without ``display()`` so that a background thread can show it."""
    import plotly.io as pio

    data = pio.renderers["plotly_mimetype"].to_mimebundle(fig.to_dict())
    data["text/plain"] = f"<plotly figure: {fig.layout.title.text or 'untitled'}>"
    return {"output_type": "display_data", "data": data, "metadata": {}}
