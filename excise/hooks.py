"""Hook names and hooks: the one site vocabulary, and one context manager for module hooks.

**Sites.** Every locator speaks of the same activations by the same names (:data:`SITES`):

=========  ==========================  ====================================  ==========
site       TransformerLens hook        what it is                            axis
=========  ==========================  ====================================  ==========
resid      ``blocks.L.hook_resid_pre``  residual stream entering block L      position
attn       ``blocks.L.hook_attn_out``   attention output of block L           position
mlp        ``blocks.L.hook_mlp_out``    MLP output of block L                 position
head       ``blocks.L.attn.hook_z``     per-head attention values (z)         head
neuron     ``blocks.L.mlp.hook_post``   MLP hidden activations                neuron
=========  ==========================  ====================================  ==========

TransformerLens' spellings (``resid_pre``, ``attn_out``, ``mlp_out``, ``z``, ``post``) are
accepted as aliases and normalised by :func:`site_name`. :func:`act_name` spells a hook name;
nothing else in excise builds one by hand.

**Module hooks.** TransformerLens hook points cover activations; editors also need the *input*
of a live ``nn.Module`` (an MLP output projection's input is the key of a rank-one edit) or to
add to a module's output. :func:`trace` does both, for any number of modules, in the spirit of
baukit's ``TraceDict``: inside ``with trace(...) as seen`` every forward records
``seen[key].input`` / ``.output`` (and the call's ``args``/``kwargs``), ``edit_output`` may
replace the output, and every hook is removed on exit, even on error. :func:`forward_until` runs
a forward pass only as far as the modules whose inputs are wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

SITES = {
    "resid": "hook_resid_pre",
    "attn": "hook_attn_out",
    "mlp": "hook_mlp_out",
    "head": "attn.hook_z",
    "neuron": "mlp.hook_post",
}
"""Site name -> the hook's name inside ``blocks.L.``."""

ALIASES = {"resid_pre": "resid", "attn_out": "attn", "mlp_out": "mlp", "z": "head", "post": "neuron"}

OTHER_HOOKS = {"resid_post": "hook_resid_post", "pattern": "attn.hook_pattern"}
"""Hooks that are not sites but that probes read: the residual stream leaving a block (logit
lens) and attention patterns."""

AXIS = {"resid": "position", "attn": "position", "mlp": "position", "head": "head", "neuron": "neuron"}
"""The second axis of a ``[layer, ...]`` localization of each site."""


def site_name(site: str, allowed=tuple(SITES)) -> str:
    """The canonical name of ``site`` (aliases resolved); raise if it is not in ``allowed``."""
    name = ALIASES.get(site, site)
    if name not in allowed:
        raise ValueError(f"site must be one of {sorted(allowed)}, got {site!r}")
    return name


def act_name(site: str, layer: int) -> str:
    """The TransformerLens hook name of ``site`` at ``layer`` (``"blocks.4.hook_mlp_out"``).

    Besides the sites, :data:`OTHER_HOOKS` (``"resid_post"``, ``"pattern"``) are spelled too.
    """
    suffix = OTHER_HOOKS.get(site) or SITES[site_name(site)]
    return f"blocks.{layer}.{suffix}"


@dataclass
class Seen:
    """What one traced module saw in its latest forward call."""

    input: Any = None
    output: Any = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


@contextmanager
def trace(modules: Mapping[Any, nn.Module], *, inputs: bool = False, outputs: bool = False,
          call_args: bool = False, edit_output: Callable | None = None, detach: bool = True):
    """Hook ``modules`` (key -> module) for the duration of the ``with`` block.

    Yields ``{key: Seen}``. ``inputs``: record each module's first positional input;
    ``outputs``: its output; ``call_args``: the whole call (positional ``args`` after the first,
    and ``kwargs``), as a block's forward receives them. ``edit_output(key, input, output)``
    returns the output to use instead. Recorded tensors are detached unless ``detach=False``.
    The hooks are removed on exit, whatever happens inside.
    """
    seen = {key: Seen() for key in modules}
    handles = []

    def keep(value):
        return value.detach() if detach and hasattr(value, "detach") else value

    for key, module in modules.items():
        if inputs or call_args:
            def pre_hook(mod, args, kwargs, key=key):
                if inputs:
                    seen[key].input = keep(args[0])
                if call_args:
                    seen[key].args, seen[key].kwargs = tuple(args[1:]), dict(kwargs)
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if outputs or edit_output is not None:
            def hook(mod, args, output, key=key):
                if edit_output is not None:
                    output = edit_output(key, args[0], output)
                if outputs:
                    seen[key].output = keep(output)
                return output
            handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


class _Reached(Exception):
    """Raised inside a forward pass by :func:`forward_until` once every module it waits for ran."""


def forward_until(model, tokens, modules) -> None:
    """``model(tokens)``, stopped as soon as each of ``modules`` has been called.

    For reading early layers' inputs over much text (key statistics, mean inputs, subject keys):
    the blocks above the last module wanted, and the unembedding, would only compute logits that
    are thrown away. Hooks already on those modules (a :func:`trace` around the call) see their
    inputs first; the outputs of the last module reached are never computed.
    """
    waiting = {id(module) for module in modules}

    def reached(module, args):
        waiting.discard(id(module))
        if not waiting:
            raise _Reached

    handles = [module.register_forward_pre_hook(reached) for module in modules]
    try:
        model(tokens)
    except _Reached:
        return
    finally:
        for handle in handles:
            handle.remove()
    raise RuntimeError(f"the forward pass never called {len(waiting)} of the modules it was to stop at")


def retain_grad_into(store: dict, key):
    """A TransformerLens hook that keeps its activation in ``store[key]`` with its gradient
    retained, so that after ``backward()`` ``store[key].grad`` holds d(metric)/d(activation)."""
    def keep(act, hook):
        act.retain_grad()
        store[key] = act
        return act
    return keep
