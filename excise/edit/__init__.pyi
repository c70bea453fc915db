"""Type stub for excise.edit: the names its lazy ``__getattr__`` serves (kept in step by a test)."""

from excise.edit.ablation import ablate as ablate
from excise.edit.baselines import FinetuneSettings as FinetuneSettings
from excise.edit.baselines import finetune as finetune
from excise.edit.batch import MemitSettings as MemitSettings
from excise.edit.batch import memit as memit
from excise.edit.rank_one import RomeSettings as RomeSettings
from excise.edit.rank_one import rome as rome
from excise.edit.record import Edit as Edit
from excise.edit.record import EditError as EditError
from excise.edit.record import attach as attach
from excise.edit.record import load as load
from excise.edit.record import load_saved_edits as load_saved_edits
from excise.edit.sequence import rome_sequence as rome_sequence
from excise.edit.value import ValueSettings as ValueSettings
from excise.export import save_model as save_model

__all__: list[str]
