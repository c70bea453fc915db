"""The explorer: locate, edit and check one fact from Jupyter widgets, and undo the edit.

``excise.explore(model)`` shows a small workbench around one fact. Choose a bundled fact or type
a prompt, subject and target. **Locate** runs a causal trace at the chosen site (resid, mlp,
attn), attributes the target to every head and neuron (direct logit attribution, or attribution
patching against a same-relation subject) and, from an MLP trace, pre-fills the layer to edit
(:meth:`~excise.locate.Localization.edit_layer`). **Apply** runs the chosen editor (rome, memit,
zero-ablation of the top located neurons, the fine-tuning baselines) and shows the fact's probe
groups scored before and after (:class:`~excise.comparison.Comparison`), greedy generations
before and after, and the before/after circuit figures of verification. **Undo** restores the
weights bit for bit.

Long jobs run in a background thread, so that the **Cancel** button stays live; a progress bar
counts their steps. Cancellation is checked between those steps and inside them, at each
checkpoint of the work they call (:mod:`excise.interrupt`: a value-optimisation or fine-tuning
step, a traced layer, a batch of key statistics). An edit is computed first and
written last: the editor's Edit is undone as soon as the editor returns it, "before" is measured
on the untouched weights, and only then is the Edit applied for the "after" measurements. A
cancel or an error at any step undoes it, so the model is never left half-edited. The buttons
only read the widgets and call plain methods (:meth:`Explorer.run_locate`,
:meth:`Explorer.apply_edit`, :meth:`Explorer.undo_edit`) that scripts and tests can call too.

This module sits above the stages (it imports locate, edit and verify; none of them imports it).
"""

from __future__ import annotations

import html
import logging
import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from excise.commands.explore_menus import ATTRIBUTIONS, EDITORS
from excise.commands.explore_tables import (
    components_text,
    figure_output,
    generation_prompts,
    generations_html,
    scores_html,
    typed_fact,
)
from excise.comparison import compare
from excise.edit.rank_one import default_layer
from excise.edit.record import EditError
from excise.facts import Fact, load_facts
from excise.generation import generate
from excise.interrupt import Cancelled, cancel_on, checkpoint
from excise.locate.dla import direct_logit_attribution
from excise.locate.trace import SITES, causal_trace
from excise.verify.circuits import pair_states, trace_facts
from excise.verify.figures import attention_change, attribution_diff, circuit_diff

log = logging.getLogger(__name__)

# -- jobs: progress and cancellation -------------------------------------------------------------

@contextmanager
def _progress(name: str, total: int, cancel: threading.Event, box):
    """Count a job's ``total`` steps on a tqdm bar shown in ``box``; yields ``step(label)``,
    which starts the next step, or raises :class:`~excise.interrupt.Cancelled` once ``cancel``
    is set."""
    from tqdm.notebook import tqdm

    bar = tqdm(total=total, desc=name, display=False)
    box.children = (bar.container,)
    started = []

    def step(label: str) -> None:
        checkpoint(label)
        if started:
            bar.update(1)
        started.append(label)
        bar.set_description(f"{name}: {label}")

    try:
        yield step
        bar.update(total - bar.n)
        bar.set_description(f"{name}: done")
    finally:
        bar.close()


def _require_ipywidgets():
    """The ``ipywidgets`` module, or an ImportError saying how to install it."""
    try:
        import ipywidgets
    except ImportError as err:
        raise ImportError("excise.explore needs ipywidgets; install it with pip install "
                          "'excise[notebooks]' (or pip install ipywidgets)") from err
    return ipywidgets


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _excise_notes(caught) -> list[str]:
    """The first line of each warning excise itself raised (e.g. "the model does not know it")."""
    return [_first_line(w.message) for w in caught
            if issubclass(w.category, UserWarning) and "excise" in str(w.filename)]


# -- the explorer ---------------------------------------------------------------------------------

def explore(model, facts=None, *, background: bool = True) -> Explorer:
    """Open the explorer on ``model`` (a TransformerBridge) in Jupyter; returns the
    :class:`Explorer`, which displays itself as the last expression of a cell.

    ``facts``: the facts offered in the menu (a list of :class:`Fact`, or a bundled set's name
    or a JSONL path); default every bundled fact. ``background=False`` runs jobs in the calling
    thread (then Cancel cannot interrupt them from the page). Needs ipywidgets
    (``pip install 'excise[notebooks]'``).
    """
    return Explorer(model, facts, background=background)


class Explorer:
    """The explorer's widgets (attributes, so a script can set values and ``.click()`` buttons)
    and its state: the last localization (``trace``, ``heads``, ``neurons``), the applied
    ``edit`` with its ``comparison`` and ``generations``, every drawn figure in ``figures``,
    and the status line as plain text in ``message`` (``failed`` when it reports an error).

    ``trace_samples``, ``circuit_samples`` (noise samples of the causal traces) and
    ``generation_tokens`` may be changed; ``editor_options[name]`` adds keyword arguments to an
    editor's call (e.g. ``{"settings": ValueSettings(steps=10)}`` for rome).
    """

    def __init__(self, model, facts=None, *, background: bool = True):
        widgets = _require_ipywidgets()
        self.model = model
        self.facts = _fact_list(facts)
        self.background = background
        self.cancel = threading.Event()
        self.trace_samples, self.circuit_samples, self.generation_tokens = 10, 5, 12
        self.editor_options: dict[str, dict] = {name: {} for name in EDITORS}
        self.trace = self.heads = self.neurons = None
        self._located_on_edit = False
        self.edit = self.comparison = None
        self.generations: dict[str, list] = {}
        self.figures: dict = {}
        self.message, self.failed = "", False
        self._busy, self._worker = False, None
        self._build_fact_widgets(widgets)
        self._build_step_widgets(widgets)
        self._build_result_widgets(widgets)
        self.widget = widgets.VBox([
            widgets.HBox([self.fact_menu, self.prompt]), widgets.HBox([self.subject, self.target]),
            widgets.HBox([self.site, self.attribution, self.locate_button]),
            widgets.HBox([self.layer, self.editor, self.n_neurons, self.circuits]),
            widgets.HBox([self.layer_why, self.editor_about]),
            widgets.HBox([self.apply_button, self.undo_button, self.cancel_button]),
            self.progress, self.status, self.tabs])
        if self.facts:
            self._fill_fields(self.facts[0])

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- widgets --------------------------------------------------------------------------------
    def _build_fact_widgets(self, widgets) -> None:
        wide, narrow = widgets.Layout(width="60%"), widgets.Layout(width="40%")
        options = [("type a fact below", -1)] + [(f.id, i) for i, f in enumerate(self.facts)]
        self.fact_menu = widgets.Dropdown(options=options, value=0 if self.facts else -1,
                                          description="fact", layout=narrow)
        self.prompt = widgets.Text(description="prompt", layout=wide,
                                   placeholder="The capital of France is")
        self.subject = widgets.Text(description="subject", layout=narrow, placeholder="France")
        self.target = widgets.Text(description="target", layout=narrow, placeholder=" Paris")
        self.fact_menu.observe(self._on_fact_chosen, names="value")

    def _build_step_widgets(self, widgets) -> None:
        cfg = self.model.cfg
        self.site = widgets.ToggleButtons(options=list(SITES), value="mlp",
                                          description="trace site")
        self.attribution = widgets.Dropdown(options=list(ATTRIBUTIONS), description="attribution")
        self.locate_button = widgets.Button(description="Locate", button_style="info")
        start = default_layer(self.model)
        self.layer = widgets.Dropdown(options=list(range(cfg.n_layers)), value=start,
                                      description="layer")
        self.layer_why = widgets.HTML(f"layer {start}: the rank-one editor's default lookup layer; "
                                      "locate at the mlp site to choose it from the trace")
        self.editor = widgets.Dropdown(options=list(EDITORS), value="rome", description="editor")
        self.editor_about = widgets.HTML(EDITORS["rome"].about)
        self.n_neurons = widgets.BoundedIntText(value=20, min=1, max=cfg.n_layers * cfg.d_mlp,
                                                description="neurons", layout={"display": "none"})
        self.circuits = widgets.Checkbox(value=True, description="before/after circuits")
        self.apply_button = widgets.Button(description="Apply", button_style="warning")
        self.undo_button = widgets.Button(description="Undo")
        self.cancel_button = widgets.Button(description="Cancel", button_style="danger",
                                            disabled=True)
        self.editor.observe(self._on_editor_chosen, names="value")
        self.locate_button.on_click(self._on_locate)
        self.apply_button.on_click(self._on_apply)
        self.undo_button.on_click(self._on_undo)
        self.cancel_button.on_click(self._on_cancel)

    def _build_result_widgets(self, widgets) -> None:
        self.progress = widgets.HBox()
        self.status = widgets.HTML()
        self.locate_view = widgets.Output()
        self.scores_view = widgets.HTML()
        self.generation_view = widgets.HTML()
        self.circuit_view = widgets.Output()
        self.tabs = widgets.Tab(
            children=[self.locate_view, self.scores_view, self.generation_view, self.circuit_view],
            titles=["localization", "scores before/after", "generations", "circuits"])

    # -- callbacks: read the widgets, call a plain method ---------------------------------------
    def _on_fact_chosen(self, change) -> None:
        if change["new"] >= 0:
            self._fill_fields(self.facts[change["new"]])

    def _fill_fields(self, fact) -> None:
        self.prompt.value, self.subject.value = fact.text, fact.subject
        self.target.value = fact.target

    def _on_editor_chosen(self, change) -> None:
        choice = EDITORS[change["new"]]
        self.editor_about.value = choice.about
        self.n_neurons.layout.display = "" if choice.needs_neurons else "none"

    def _on_locate(self, _button) -> None:
        self._start("locate", lambda: self.run_locate(self.current_fact(), self.site.value,
                                                      self.attribution.value))

    def _on_apply(self, _button) -> None:
        self._start("apply", lambda: self.apply_edit(self.current_fact(), self.editor.value,
                                                     self.layer.value, self.n_neurons.value,
                                                     self.circuits.value))

    def _on_undo(self, _button) -> None:
        self._start("undo", self.undo_edit, background=False)

    def _on_cancel(self, _button) -> None:
        self.cancel.set()
        if self._busy:
            self._say("cancelling: the job stops at its next step (a value-optimisation or "
                      "fine-tuning step, a traced layer) and leaves the model as it was")

    def current_fact(self) -> Fact:
        """The fact in the fields: the chosen bundled fact (with all its probes) while the fields
        still show it, else a :func:`typed_fact` (the prompt only)."""
        index = self.fact_menu.value
        if index >= 0:
            fact = self.facts[index]
            if (fact.text, fact.subject, fact.target) == (self.prompt.value, self.subject.value,
                                                          self.target.value):
                return fact
        return typed_fact(self.prompt.value, self.subject.value, self.target.value)

    # -- running jobs ---------------------------------------------------------------------------
    def _start(self, job: str, work: Callable[[], str], background: bool | None = None) -> None:
        """Run ``work`` (it returns the status line) as ``job``, in a thread unless told not to."""
        if self._busy:
            self._say(f"cannot {job} now: a job is running (wait, or cancel it)", error=True)
            return
        self.cancel.clear()
        self._set_busy(True)
        self._say(f"{job}: running")
        if self.background if background is None else background:
            self._worker = threading.Thread(target=self._run, args=(job, work), daemon=True)
            self._worker.start()
        else:
            self._run(job, work)

    def _run(self, job: str, work: Callable[[], str]) -> None:
        """Run ``work``; its result, a cancellation or its error becomes the one-line status."""
        try:
            with warnings.catch_warnings(record=True) as caught:  # process-wide while it runs
                warnings.simplefilter("always")
                with cancel_on(self.cancel):  # editors, traces: checked at each of their steps
                    message = work()
            self._say("; note: ".join([message, *_excise_notes(caught)[:1]]))
        except Cancelled:
            self._say(f"{job} cancelled; the model's weights are as they were before it")
        except Exception as err:  # shown as one line; the traceback goes to the log
            log.debug("explorer: %s failed", job, exc_info=True)
            self._say(f"{job} failed: {_first_line(err)}", error=True)
        finally:
            self._set_busy(False)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the job running in the background, if any."""
        if self._worker is not None:
            self._worker.join(timeout)

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for button in (self.locate_button, self.apply_button, self.undo_button):
            button.disabled = busy
        self.cancel_button.disabled = not busy

    def _say(self, message: str, error: bool = False) -> None:
        self.message, self.failed = message, error
        text = html.escape(message)
        self.status.value = f'<span style="color:#b00020">{text}</span>' if error else text

    # -- the plain methods ----------------------------------------------------------------------
    def run_locate(self, fact, site: str = "mlp",
                   attribution: str = "direct logit attribution") -> str:
        """Causal trace of ``fact`` at ``site`` and ``attribution`` of every head and neuron; draws
        them and, from an MLP trace, pre-fills the layer. Returns the status line."""
        attribute = ATTRIBUTIONS.get(attribution)
        if attribute is None:
            raise ValueError(f"unknown attribution {attribution!r}; choose one of "
                             f"{', '.join(ATTRIBUTIONS)}")
        with _progress("locate", 3, self.cancel, self.progress) as step:
            step(f"causal trace ({site})")
            trace = causal_trace(self.model, fact, site=site, samples=self.trace_samples,
                                 progress=False)
            step(f"heads ({attribution})")
            heads = attribute(self.model, fact, self.facts, "head")
            step(f"neurons ({attribution})")
            neurons = attribute(self.model, fact, self.facts, "neuron")
        self.trace, self.heads, self.neurons = trace, heads, neurons
        self._located_on_edit = self.edit is not None
        self.figures.update(trace=trace.plot(), heads=heads.plot(), neurons=neurons.plot())
        self.locate_view.outputs = tuple(figure_output(self.figures[name])
                                         for name in ("trace", "heads", "neurons"))
        self.tabs.selected_index = 0
        state = " on the edited model" if self._located_on_edit else ""
        return (f"located {fact.id}{state}: causal trace ({site}), {attribution}; "
                f"{self._prefill_layer(trace)}")

    def _prefill_layer(self, trace) -> str:
        if trace.site != "mlp":
            return "trace the mlp site to pre-fill the layer"
        layer, why = trace.edit_layer()
        self.layer.value = layer
        self.layer_why.value = html.escape(why)
        return f"layer {layer} pre-filled from the trace"

    def apply_edit(self, fact, editor: str = "rome", layer: int | None = None, n_neurons: int = 20,
                   circuits: bool = True) -> str:
        """Compute ``editor``'s edit of ``fact``, measure before, apply it, measure after.

        ``layer``: the MLP layer (default the rank-one lookup layer); ``n_neurons``: how many top
        located neurons ``"ablate neurons"`` zeroes; ``circuits``: also trace the circuits before
        and after. On success the edit stays applied (``self.edit``); a cancel or an error leaves
        the weights as they were. Returns the status line.
        """
        if self._applied_edit() is not None:
            raise EditError(f"a {self.edit.method} edit is applied: undo it first (the explorer "
                            "holds one edit at a time)")
        if editor not in EDITORS:
            raise ValueError(f"unknown editor {editor!r}; choose one of {', '.join(EDITORS)}")
        layer = default_layer(self.model) if layer is None else layer
        with _progress("apply", 6 + 2 * circuits, self.cancel, self.progress) as step:
            step(f"computing the {editor} edit")
            edit = self._computed_edit(editor, fact, layer, n_neurons)
            try:
                comparison, prompts, before, after, paired = self._measure(edit, fact, circuits, step)
                step("drawing")
                self._show_outcome(edit, comparison, prompts, before, after, paired)
            except BaseException:
                if edit.is_applied:
                    edit.undo(self.model)
                raise
        self.edit, self.comparison = edit, comparison
        self.generations = {"prompts": prompts, "before": before, "after": after}
        gone = "forgotten" if comparison.prompt_forgotten else "not forgotten"
        return (f"{edit.method} edit of {components_text(edit)} applied: the prompt is {gone}; "
                "Undo restores the weights")

    def _computed_edit(self, editor: str, fact, layer: int, n_neurons: int):
        """The editor's Edit, undone at once: editors write their edit as they return it, and the
        explorer writes it only after measuring the state before."""
        choice = EDITORS[editor]
        neurons = self._located_neurons(fact, n_neurons) if choice.needs_neurons else None
        options = self.editor_options.get(editor, {})
        edit = choice.run(self.model, fact, layer=layer, neurons=neurons, **options)
        edit.undo(self.model)
        return edit

    def _located_neurons(self, fact, k: int) -> list:
        """The ``k`` top neurons of ``fact``'s last localization on the unedited model, else of its
        direct logit attribution."""
        located = self.neurons
        if (located is None or self._located_on_edit
                or (located.prompt, located.target) != (fact.text, fact.target)):
            located = direct_logit_attribution(self.model, fact, site="neuron")
        return located.top(k)

    def _measure(self, edit, fact, circuits: bool, step) -> tuple:
        """Generations (and circuits) before, then apply ``edit``; scores, generations (and
        circuits) after. Returns ``(comparison, prompts, texts before, texts after, circuits or
        None)``."""
        prompts = generation_prompts(fact)
        texts = [prompt for _, prompt in prompts]
        step("greedy generations before")
        before = generate(self.model, texts, self.generation_tokens)
        if circuits:
            step("circuits before")
            circuits_before = trace_facts(self.model, [fact], samples=self.circuit_samples)
        step("applying the edit")
        edit.apply(self.model)
        step("scores before and after")
        comparison = compare(self.model, [fact], before=edit.reverted(self.model))[0]
        step("greedy generations after")
        after = generate(self.model, texts, self.generation_tokens)
        paired = None
        if circuits:
            step("circuits after")
            circuits_after = trace_facts(self.model, [fact], samples=self.circuit_samples)
            paired = pair_states(circuits_before, circuits_after)
        return comparison, prompts, before, after, paired

    def _show_outcome(self, edit, comparison, prompts, before, after, paired) -> None:
        """Draw the scores table, the generations and (when traced) the circuit figures."""
        self.scores_view.value = scores_html(comparison, edit)
        self.generation_view.value = generations_html(prompts, before, after)
        figures = ()
        if paired is not None:
            b, a = paired["before"][0], paired["after"][0]
            self.figures.update(circuit=circuit_diff(b, a), attribution=attribution_diff(b, a),
                                attention=attention_change(b, a))
            figures = tuple(self.figures[name] for name in ("circuit", "attribution", "attention"))
        self.circuit_view.outputs = tuple(figure_output(f) for f in figures)
        self.tabs.selected_index = 1

    def undo_edit(self) -> str:
        """Undo the applied edit: the weights become the originals again, bit for bit."""
        edit = self._applied_edit()
        if edit is None:
            raise ValueError("no edit to undo: apply one first")
        edit.undo(self.model)
        self.edit = None
        return f"{edit.method} edit undone: the weights are the originals again, bit for bit"

    def _applied_edit(self):
        """The explorer's edit while it is applied; one undone by hand is forgotten."""
        if self.edit is not None and not self.edit.is_applied:
            self.edit = None
        return self.edit


def _fact_list(facts) -> list[Fact]:
    """The menu's facts: every bundled fact, a set's name or path, one Fact, or a list."""
    if facts is None:
        return load_facts("all")
    if isinstance(facts, str | Path):
        return load_facts(facts)
    return [facts] if isinstance(facts, Fact) else list(facts)
