"""Which model families the whole pipeline supports, checked step by step on tiny random models.

For each family of :data:`excise.testing.FAMILIES` (a tiny random model built from the family's own
Hugging Face config class, its quirks kept) :func:`check_family` runs every stage a user runs and
reports, per step, "ok" or one line saying why not:

* **load** through :func:`excise.load_model`, and the bridge's **logits** against plain
  transformers on the same weights, on a text longer than the sliding windows;
* **facts check**, **causal trace**, **activation patching** (heads), **attribution patching**
  (heads and neurons, the top ones re-checked exactly), **knowledge neurons** (and gradient
  attribution): each must return finite scores of the right shape; **DLA** (heads and neurons)
  must also equal naive direct effects (:func:`direct_effects`), which see every norm the model has;
* the editors **rome**, **memit**, **ablate**, **finetune**: each must change the model's logits
  and its ``undo`` must restore every parameter bit for bit;
* **verify**: every probe, on small budgets, after an ablation; it must judge the fact and leave
  the edited weights as it found them;
* **save + reload**: each editor's edited model written by :func:`excise.save_model` and read back
  by ``AutoModelForCausalLM.from_pretrained`` gives the edited logits.

A step never raises: an exception becomes "fails: ..." in the table. ``python -m
excise.commands.support --out PATH`` builds a tiny model of every family, checks it and writes
the markdown table (:func:`support_table`) the README shows.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import einops
import torch

from excise.components import Head, Neuron
from excise.facts import Fact, Probe
from excise.hooks import act_name

log = logging.getLogger(__name__)

STEPS = ("load", "logits", "facts check", "causal trace", "activation patching",
         "attribution patching", "knowledge neurons", "DLA", "rome", "memit", "ablate", "finetune",
         "verify", "save + reload")
"""The table's columns, in pipeline order."""

LOGITS_TOLERANCE = 1e-4
"""Largest |logit difference| allowed between the bridge and plain transformers (float32)."""

LONG_TEXT = ("The capital of France is Paris. The capital of Germany is Berlin. "
             "The Eiffel Tower is in the city of Paris.")
"""Longer than the families' sliding windows, so that local attention layers are exercised."""

CAPITALS = (("France", " Paris"), ("Germany", " Berlin"), ("Italy", " Rome"), ("Spain", " Madrid"))


def capital_fact(subject: str, target: str) -> Fact:
    """A capital fact the tiny tokenizer spells, with a paraphrase, neighbours and a new target."""
    others = tuple(Probe(f"The capital of {s} is", t) for s, t in CAPITALS if s != subject)
    return Fact(id=f"capital-{subject.lower()}", subject=subject, prompt="The capital of {} is",
                target=target, paraphrases=("{}'s capital city is",), neighbors=others,
                same_subject=(Probe(f"{subject} is a country in", " Europe"),), relation="capital",
                new_target=" Rome" if target != " Rome" else " Paris")


FACTS = tuple(capital_fact(s, t) for s, t in CAPITALS)
FACT = FACTS[0]

VERIFY_BUDGETS = dict(relearn_long_steps=2, lora_steps=(2,), lora_rank=2, lens_candidates=(1, 2),
                      rephrase_candidates=(1, 2), quant_bits=(8,), gen_temperatures=(1.0,),
                      gen_seeds=1, gen_tokens=2)
"""The smallest budgets that still run every attack once."""


class SupportError(AssertionError):
    """A step ran but its result is wrong; the message is the table's reason."""


# -- one step -> "ok" or a reason -----------------------------------------------------------------

def outcome(step: Callable, *args) -> str:
    """Run ``step(*args)``: "ok", or "fails: ..." with the first line of what went wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a random model knows no facts: locators warn so
            step(*args)
    except Exception as err:  # the table records every failure instead of stopping at the first
        log.debug("step %s failed", getattr(step, "__name__", step), exc_info=True)
        if isinstance(err, SupportError):
            return f"fails: {err}"[:200]
        message = str(err).strip().splitlines()[0] if str(err).strip() else f"in {_where(err)}"
        return f"fails: {type(err).__name__}: {message}"[:200]
    return "ok"


def _where(err: Exception) -> str:
    """``excise/locate/dla.py:24 (_unembed_direction)``: the innermost excise frame of ``err``."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if "/excise/" in f.filename.replace("\\", "/")] or frames
    frame = ours[-1]
    path = frame.filename.replace("\\", "/")
    path = path[path.rindex("/excise/") + 1:] if "/excise/" in path else Path(path).name
    return f"{path}:{frame.lineno} ({frame.name})"


def _logits(model, text: str = LONG_TEXT) -> torch.Tensor:
    """The bridge's logits ``[pos d_vocab]`` on ``text``."""
    with torch.no_grad():
        return model(model.to_tokens(text))[0].float()


def _plain_logits(folder, tokens: torch.Tensor) -> torch.Tensor:
    """Plain transformers' logits ``[pos d_vocab]`` for ``tokens`` from the folder ``folder``."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return plain(tokens.cpu()).logits[0].float()


def _check_finite(loc, shape: tuple[int, ...], what: str) -> None:
    scores = loc.scores
    if tuple(scores.shape) != shape:
        raise SupportError(f"{what}: scores of shape {tuple(scores.shape)}, expected {shape}")
    if not torch.isfinite(scores).all():
        raise SupportError(f"{what}: non-finite scores")


# -- load and locate ------------------------------------------------------------------------------

def check_logits(model, folder) -> None:
    """The bridge's logits match plain transformers' on the same weights and tokens."""
    tokens = model.to_tokens(LONG_TEXT)
    diff = float((_logits(model) - _plain_logits(folder, tokens)).abs().max())
    if not diff <= LOGITS_TOLERANCE:
        raise SupportError(f"bridge vs transformers: max |logit diff| {diff:.2e} > {LOGITS_TOLERANCE:g}")


def check_facts_step(model, folder) -> None:
    from excise.check import check_facts

    rows = check_facts(model, list(FACTS), progress=False)
    if len(rows) != len(FACTS) or not all(0 <= r.prob <= 1 for r in rows):
        raise SupportError("facts check: wrong rows or probabilities")


def check_trace(model, folder) -> None:
    from excise.locate import causal_trace

    loc = causal_trace(model, FACT, site="mlp", samples=2, window=2, progress=False)
    _check_finite(loc, (model.cfg.n_layers, model.to_tokens(FACT.text).shape[1]), "causal trace")


def check_activation_patching(model, folder) -> None:
    from excise.locate import fact_activation_patch

    loc = fact_activation_patch(model, FACT, FACTS, site="head", progress=False)
    _check_finite(loc, (model.cfg.n_layers, model.cfg.n_heads), "activation patching")


def check_attribution_patching(model, folder) -> None:
    from excise.locate import attribution_patch
    from excise.locate.patch import counterfactual_pair

    pair = counterfactual_pair(model, FACT, FACTS)
    heads = attribution_patch(model, *pair, site="head", verify_top=2, progress=False)
    _check_finite(heads, (model.cfg.n_layers, model.cfg.n_heads), "attribution patching (head)")
    neurons = attribution_patch(model, *pair, site="neuron", verify_top=2, progress=False)
    _check_finite(neurons, (model.cfg.n_layers, model.cfg.d_mlp), "attribution patching (neuron)")


def check_neurons(model, folder) -> None:
    from excise.locate import gradient_attribution, knowledge_neurons

    shape = (model.cfg.n_layers, model.cfg.d_mlp)
    _check_finite(knowledge_neurons(model, FACT, steps=2, progress=False), shape, "knowledge neurons")
    _check_finite(gradient_attribution(model, FACT), shape, "gradient attribution")


def check_dla(model, folder) -> None:
    """DLA's head and neuron scores equal naive direct effects (:func:`direct_effects`) for the
    heads and neurons that write the most."""
    from excise.locate import direct_logit_attribution

    cfg = model.cfg
    for site, outputs in component_outputs(model).items():
        loc = direct_logit_attribution(model, FACT, site=site)
        _check_finite(loc, (cfg.n_layers, len(outputs) // cfg.n_layers), f"DLA ({site})")
        picked = outputs.norm(dim=-1).topk(min(8, len(outputs))).indices
        layers = [int(i) // loc.scores.shape[1] for i in picked]
        expected = direct_effects(model, site, layers, outputs[picked])
        found = loc.scores.reshape(-1)[picked.cpu()].double()
        worst = int((found - expected).abs().argmax())
        if not torch.allclose(found, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max())):
            layer, index = divmod(int(picked[worst]), loc.scores.shape[1])
            raise SupportError(f"DLA ({site} {layer}.{index}) {float(found[worst]):.4g}, naive "
                               f"direct effect {float(expected[worst]):.4g}")


@torch.no_grad()
def component_outputs(model) -> dict[str, torch.Tensor]:
    """What each head (``z_h @ W_O[h]``) and each neuron (``post_i * W_out[i]``) adds to its
    attention or MLP output at FACT's last prompt position: ``{site: [layer * index, d_model]}``."""
    from excise.components import attn_out_weight, out_proj_weight

    cfg = model.cfg
    names = [act_name(site, layer) for layer in range(cfg.n_layers) for site in ("head", "neuron")]
    _, cache = model.run_with_cache(model.to_tokens(FACT.text), names_filter=lambda n: n in names)
    heads, neurons = [], []
    for layer in range(cfg.n_layers):
        w_o = einops.rearrange(attn_out_weight(model, layer), "(head d_head) d_model -> head d_head d_model",
                               head=cfg.n_heads)
        z = cache[act_name("head", layer)][0, -1]  # [head, d_head]
        heads.append(einops.einsum(z, w_o, "head d_head, head d_head d_model -> head d_model"))
        post = cache[act_name("neuron", layer)][0, -1]  # [d_mlp]
        neurons.append(post[:, None] * out_proj_weight(model, layer))
    return {"head": torch.cat(heads), "neuron": torch.cat(neurons)}


@torch.no_grad()
def direct_effects(model, site: str, layers: list[int], outputs: torch.Tensor) -> torch.Tensor:
    """Naive direct effects ``[k]`` on FACT's target logit of component ``outputs`` ``[k, d_model]``
    (written by the attention, ``site="head"``, or the MLP of ``layers[k]``).

    Row 0 of a batch runs clean; row ``k + 1`` removes output ``k`` from its attention or MLP output
    at the last prompt position. Every attention and MLP output elsewhere is frozen at its clean
    value and every norm's scale too, so the removal reaches the logit only directly: through the
    block's own post-norm if it has one, the residual stream, the final norm and the unembedding.
    The drop of the target's logit (before any final soft-capping) is what DLA attributes.
    """
    tokens = model.to_tokens(FACT.text)
    target = model.tokenizer(FACT.target, add_special_tokens=False)["input_ids"][0]
    kinds = {"head": "attn", "neuron": "mlp"}
    frozen = [f"blocks.{layer}.{kind}.hook_out" for layer in range(model.cfg.n_layers) for kind in ("attn", "mlp")]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in frozen or n.endswith("hook_scale"))

    def clean(act, hook):
        act = cache[hook.name].expand_as(act).clone()
        for row, layer in enumerate(layers, start=1):
            if hook.name == f"blocks.{layer}.{kinds[site]}.hook_out":
                act[row, -1] -= outputs[row - 1].to(act.dtype)
        return act

    hooks = [(name, clean) for name in cache.keys()]
    logits = model.run_with_hooks(tokens.expand(len(outputs) + 1, -1), fwd_hooks=hooks)[:, -1, target]
    cap = float(getattr(model.cfg, "output_logits_soft_cap", 0.0) or 0.0)
    logits = logits.double()
    if cap > 0:
        logits = cap * torch.atanh(logits / cap)
    return (logits[0] - logits[1:]).cpu()


# -- edit, save, undo -----------------------------------------------------------------------------

def rome_edit(model):
    from excise.edit import ValueSettings, rome

    return rome(model, FACT, settings=ValueSettings(n_prefixes=2, steps=4), progress=False)


def memit_edit(model):
    from excise.edit import ValueSettings, memit

    values = ValueSettings(n_prefixes=2, steps=4, subject_probes=False)  # memit's default has none
    return memit(model, FACTS[:2], passes=1, settings=values, progress=False)


def ablate_edit(model):
    from excise.edit import ablate

    last = model.cfg.n_layers - 1
    return ablate(model, [Neuron(0, 3), Head(last, 1)], progress=False)


def finetune_edit(model):
    from excise.edit import finetune

    return finetune(model, FACT, steps=2, lr=1e-2, n_prefixes=1, progress=False)


EDITORS: dict[str, Callable] = {"rome": rome_edit, "memit": memit_edit, "ablate": ablate_edit,
                                "finetune": finetune_edit}
"""Editor name -> a function that applies a small edit of that kind to a model and returns it."""


def _parameters(model) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the bridge, cloned."""
    return {n: t.detach().clone() for n, t in model.original_model.state_dict(keep_vars=True).items()}


def _check_same(model, before: dict[str, torch.Tensor], what: str) -> None:
    now = model.original_model.state_dict(keep_vars=True)
    changed = [n for n, t in before.items() if not torch.equal(now[n].detach(), t)]
    if changed:
        raise SupportError(f"{what}: {len(changed)} tensors differ, e.g. {changed[0]}")


def check_saved(model, edited: torch.Tensor, original: torch.Tensor, folder: Path) -> None:
    """The model saved by :func:`excise.save_model` reloads in plain transformers with the
    ``edited`` logits, and the edit is large enough for the comparison to tell it apart."""
    from excise.export import save_model

    effect = float((edited - original).abs().max())
    if not effect > 10 * LOGITS_TOLERANCE:
        raise SupportError(f"edit too small to check a reload (max |logit change| {effect:.1e})")
    save_model(model, folder, overwrite=True)
    diff = float((_plain_logits(folder, model.to_tokens(LONG_TEXT)) - edited).abs().max())
    if not diff <= LOGITS_TOLERANCE:
        raise SupportError(f"reloaded logits differ from the edited model's by {diff:.2e}")


def check_editor(model, make_edit: Callable, saved: dict[str, str], name: str, out: Path) -> None:
    """``make_edit`` changes the logits; its saved model reloads (outcome in ``saved[name]``); its
    undo restores every parameter bit for bit."""
    before, original = _parameters(model), _logits(model)
    edit = make_edit(model)
    try:
        edited = _logits(model)
        if torch.equal(edited, original):
            raise SupportError(f"{name} did not change the logits")
        saved[name] = outcome(check_saved, model, edited, original, out / name)
    finally:
        edit.undo(model)
    _check_same(model, before, "undo")


def check_verify(model, folder) -> None:
    """Every probe runs on an ablated model, judges the fact, and leaves the weights as they were."""
    from excise.verify import verify

    edit = ablate_edit(model)
    try:
        edited = _parameters(model)
        report = verify(model, FACT, pool=list(FACTS), relearn_steps=2, relearn_facts=2, fluency_tokens=2,
                        few_shot_k=1, mc_orders=1, progress=False, budgets=VERIFY_BUDGETS)
        if report[FACT.id].verdict not in ("not forgotten", "recoverable", "forgotten"):
            raise SupportError(f"verify: unexpected verdict {report[FACT.id].verdict!r}")
        _check_same(model, edited, "verify changed the edited weights")
    finally:
        edit.undo(model)


LOCATE_STEPS: dict[str, Callable] = {
    "logits": check_logits,
    "facts check": check_facts_step,
    "causal trace": check_trace,
    "activation patching": check_activation_patching,
    "attribution patching": check_attribution_patching,
    "knowledge neurons": check_neurons,
    "DLA": check_dla,
}
"""Steps that only read the model: name -> ``check(model, folder)``."""


# -- a family, the table --------------------------------------------------------------------------

def check_family(folder) -> dict[str, str]:
    """Run every step of :data:`STEPS` on the model in ``folder``: ``{step: "ok" | "fails: ..."}``."""
    from excise.model import load_model

    loaded: list = []
    results = {"load": outcome(lambda: loaded.append(load_model(str(folder), device="cpu")))}
    if not loaded:
        return {step: results.get(step, "fails: not loaded") for step in STEPS}
    model = loaded[0]
    for step, check in LOCATE_STEPS.items():
        results[step] = outcome(check, model, folder)
    saved: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="excise-support-") as tmp:
        for name, make_edit in EDITORS.items():
            results[name] = outcome(check_editor, model, make_edit, saved, name, Path(tmp))
    results["verify"] = outcome(check_verify, model, folder)
    results["save + reload"] = _saved_outcome(saved)
    return results


def _saved_outcome(saved: dict[str, str]) -> str:
    """One cell for the editors' save + reload checks: "ok" when each editor's reload matched."""
    if not saved:
        return "fails: no editor ran"
    failed = [f"{name}: {result.removeprefix('fails: ')}" for name, result in saved.items() if result != "ok"]
    return "fails: " + "; ".join(failed) if failed else "ok"


def support_table(results: dict[str, dict[str, str]]) -> str:
    """A markdown table: one row per family, one column per step, "ok" or the reason it fails."""
    lines = ["| family | " + " | ".join(STEPS) + " |", "|---|" + "---|" * len(STEPS)]
    for family, steps in results.items():
        cells = [steps.get(step, "not run").replace("|", "/") for step in STEPS]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_families(families, root: Path) -> dict[str, dict[str, str]]:
    """Build a tiny model of each family under ``root`` and check it."""
    from excise.testing import save_tiny_model

    results = {}
    for family in families:
        folder = save_tiny_model(family, root / family.replace(" ", "-"))
        results[family] = check_family(folder)
        log.info("%s: %s", family, results[family])
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m excise.commands.support``: print the support table of every family (and write
    it to ``--out``)."""
    from excise.testing import FAMILIES

    parser = argparse.ArgumentParser(prog="python -m excise.commands.support",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help=f"comma-separated (default: all: {', '.join(FAMILIES)})")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {unknown[0]!r}; choose from {', '.join(FAMILIES)}")
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="excise-families-") as tmp:
        table = support_table(check_families(families, Path(tmp)))
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
