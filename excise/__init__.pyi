"""Type stub for excise: the names its lazy ``__getattr__`` serves (kept in step by a test)."""

from excise import edit as edit
from excise import locate as locate
from excise import verify as verify
from excise.commands.explore import explore as explore
from excise.commands.workflows import run_demo as run_demo
from excise.comparison import Comparison as Comparison
from excise.comparison import compare as compare
from excise.components import MLP as MLP
from excise.components import Head as Head
from excise.components import Neuron as Neuron
from excise.criteria import forgotten as forgotten
from excise.criteria import kept as kept
from excise.criteria import weakened as weakened
from excise.edit.ablation import ablate as ablate
from excise.edit.batch import memit as memit
from excise.edit.rank_one import rome as rome
from excise.edit.record import Edit as Edit
from excise.export import save_model as save_model
from excise.facts import Fact as Fact
from excise.facts import Probe as Probe
from excise.facts import load_facts as load_facts
from excise.facts import write_facts as write_facts
from excise.interrupt import Cancelled as Cancelled
from excise.interrupt import cancel_on as cancel_on
from excise.locate.localization import Localization as Localization
from excise.locate.trace import causal_trace as causal_trace
from excise.model import load_model as load_model
from excise.scoring import score_fact as score_fact
from excise.scoring import score_targets as score_targets

__version__: str

__all__: list[str]
