"""Gates a version passes before it serves (see pipeline.py)."""

from hotserve.core.gates.files import GOLDEN_FILE, WARMUP_FILE, GateReport, RequestDecoder, run_file_gates
from hotserve.core.gates.pipeline import FILES, SERVABLE, Gate, GateContext, GatePipeline
from hotserve.core.gates.standard import standard_gates

__all__ = ["FILES", "GOLDEN_FILE", "SERVABLE", "WARMUP_FILE", "Gate", "GateContext", "GatePipeline", "GateReport",
           "RequestDecoder", "run_file_gates", "standard_gates"]
