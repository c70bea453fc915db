"""Robustness probes: each looks for a forgotten answer where the edited prompt does not.

One module per probe, each defining ``PROBE``, a :class:`~excise.verify.probes.base.RobustnessProbe`
(what it measures on a model state, how it judges before against after, an optional figure):

* :mod:`.logit_lens`: the answer read out of every layer's residual stream;
* :mod:`.lens_extraction`: the answer among B candidates of the intermediate layers' lens (head
  projection, probability delta);
* :mod:`.question`, :mod:`.multiple_choice`, :mod:`.few_shot`: the fact asked in other formats;
* :mod:`.rephrase`: the answer among the top B answers to wordings the editor never saw;
* :mod:`.generation`: the answer in sampled free text about the subject;
* :mod:`.linear_probe`: a tuned lens trained on other facts of the relation;
* :mod:`.relearn`, :mod:`.relearn_lora`, :mod:`.relearn_split`: brief fine-tuning attacks (all
  weights, LoRA adapters, the sibling forgotten facts) at two budgets (attacks);
* :mod:`.quantization`: round-to-nearest 8- and 4-bit quantization of the edited model (an attack).

Attacks that could succeed on a fact the model never knew are read against made-up subjects
(:mod:`excise.verify.control`).

:mod:`.registry` lists them under the names users select them by. To add a probe, write one module
here with its reading dataclass, ``measure``, ``judge`` and ``PROBE``, and name it in
:data:`~excise.verify.probes.registry.CATALOG`.
"""
