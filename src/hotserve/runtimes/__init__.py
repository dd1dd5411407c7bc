"""Runtimes turn one version directory into a servable: load, signature, predict, unload."""

from hotserve.runtimes.base import Servable, Signature, TensorSpec
from hotserve.runtimes.registry import detect_runtime, load_servable

__all__ = ["Servable", "Signature", "TensorSpec", "detect_runtime", "load_servable"]
