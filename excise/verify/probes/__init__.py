"""Robustness probes: each looks for a forgotten answer where the edited prompt does not.

One module per probe, each defining ``PROBE``, a :class:`~excise.verify.probes.base.RobustnessProbe`
(what it measures on a model state, how it judges before against after, an optional figure):

* :mod:`.logit_lens`: the answer read out of every layer's residual stream;
* :mod:`.question`, :mod:`.multiple_choice`, :mod:`.few_shot`: the fact asked in other formats;
* :mod:`.linear_probe`: a tuned lens trained on other facts of the relation;
* :mod:`.relearn`: a brief fine-tuning attack on other facts of the relation.

:mod:`.registry` lists them under the names users select them by. To add a probe, write one module
here with its reading dataclass, ``measure``, ``judge`` and ``PROBE``, and name it in
:data:`~excise.verify.probes.registry.CATALOG`.
"""
