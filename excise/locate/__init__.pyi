"""Type stub for excise.locate: the names its lazy ``__getattr__`` serves (kept in step by a test)."""

from excise.locate.attribution import attribution_patch as attribution_patch
from excise.locate.dla import direct_logit_attribution as direct_logit_attribution
from excise.locate.localization import Localization as Localization
from excise.locate.neurons import attributed_neurons as attributed_neurons
from excise.locate.neurons import gradient_attribution as gradient_attribution
from excise.locate.neurons import knowledge_neurons as knowledge_neurons
from excise.locate.patch import activation_patch as activation_patch
from excise.locate.patch import fact_activation_patch as fact_activation_patch
from excise.locate.side_by_side import compare as compare
from excise.locate.trace import causal_trace as causal_trace

__all__: list[str]
