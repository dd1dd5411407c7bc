"""Dynamic batching in front of a servable (TF Serving's --enable_batching)."""

from hotserve.batching.batcher import Batcher
from hotserve.batching.parameters import BatchingParameters, parse_batching_parameters

__all__ = ["Batcher", "BatchingParameters", "parse_batching_parameters"]
