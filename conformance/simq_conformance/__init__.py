"""simq's conformance suite: certify a broker + worker against Celery's guarantees.

Import path for adapter authors: ``simq_conformance`` (the source lives in the
repository's ``conformance/`` folder).
"""

from simq_conformance.adapter import FAULTS as FAULTS
from simq_conformance.adapter import PROBES as PROBES
from simq_conformance.adapter import Adapter as Adapter
from simq_conformance.adapter import BaseAdapter as BaseAdapter
from simq_conformance.adapter import Capabilities as Capabilities
from simq_conformance.adapter import Deviation as Deviation
from simq_conformance.adapter import Fault as Fault
from simq_conformance.adapter import ProbeCall as ProbeCall
from simq_conformance.adapter import RunError as RunError
from simq_conformance.adapter import RunResult as RunResult
from simq_conformance.adapter import RunSettings as RunSettings
from simq_conformance.adapter import Workload as Workload
from simq_conformance.calibrate import CalibrationError as CalibrationError

__all__ = [
    "FAULTS",
    "PROBES",
    "Adapter",
    "BaseAdapter",
    "CalibrationError",
    "Capabilities",
    "Deviation",
    "Fault",
    "ProbeCall",
    "RunError",
    "RunResult",
    "RunSettings",
    "Workload",
]
