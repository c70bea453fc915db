"""Type stub for excise.verify: the names its lazy ``__getattr__`` serves (kept in step by a test)."""

from excise.verify.core import verify as verify
from excise.verify.outcome import ProbeOutcome as ProbeOutcome
from excise.verify.probes.relearn import relearn as relearn
from excise.verify.report import FactReport as FactReport
from excise.verify.report import Report as Report

__all__: list[str]
