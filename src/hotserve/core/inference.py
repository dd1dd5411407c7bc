"""Running one request on one bound version: check inputs, run (directly or through the
model's batcher), classify failures, and record the outcome in the version's stats.

Failures are classified here and nowhere else: input checks raise InvalidArgument (400); a
runtime's own InvalidArgument status (ONNX Runtime, TensorFlow: the graph refused the input) is
the client's too; anything else a model raises is its own bug, INTERNAL (500), with the version.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Mapping

import numpy as np

from hotserve.core.loaded import LoadedVersion
from hotserve.errors import Code, HotserveError, InvalidArgument
from hotserve.runtimes.base import DEFAULT_SIGNATURE, check_inputs, get_signature

# Exception class names runtimes use for "the input was wrong" rather than "the model broke"
# (onnxruntime's InvalidArgument, TensorFlow's InvalidArgumentError).
_CLIENT_FAULTS = {"InvalidArgument", "InvalidArgumentError"}

# Where predict() leaves a request's decoded inputs and outputs for the frame's observers (the
# prediction log): per thread, because a request runs start to finish in one thread.
_capture = threading.local()


def capture_into(target) -> None:
    """Until called again with None, predict() in this thread sets target.inputs and
    target.outputs (numpy, as the model saw them)."""
    _capture.target = target


def model_error(exc: Exception, model: str, version: int) -> HotserveError:
    """A model's (or runtime's) exception as a HotserveError with the fitting code."""
    if isinstance(exc, HotserveError):
        return exc
    code = Code.INVALID_ARGUMENT if type(exc).__name__ in _CLIENT_FAULTS else Code.INTERNAL
    return HotserveError(f"model {model} version {version}: {type(exc).__name__}: {exc}", code)


def _observed(lv: LoadedVersion, call: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Run call(); its outcome and latency feed the version's stats (canary analysis, inline
    threading); a runtime's own exception becomes a HotserveError with a fitting code."""
    t0 = time.perf_counter()
    ok = False
    try:
        out = call()
        ok = True
        return out
    except HotserveError:
        raise
    except Exception as exc:
        raise model_error(exc, lv.model, lv.version) from exc
    finally:
        lv.stats.record(ok, time.perf_counter() - t0)


def predict(lv: LoadedVersion, inputs: Mapping[str, np.ndarray], signature_name: str | None) -> dict[str, np.ndarray]:
    name = signature_name or DEFAULT_SIGNATURE

    def call() -> dict[str, np.ndarray]:
        check_inputs(get_signature(lv.servable, name), inputs)
        if lv.batcher is not None:
            return lv.batcher.run(lv, inputs, name)
        return lv.servable.predict(inputs, name)

    out = _observed(lv, call)
    target = getattr(_capture, "target", None)
    if target is not None:
        target.inputs, target.outputs = inputs, out
    return out


def run_examples(lv: LoadedVersion, method: str, examples: list[bytes], signature_name: str | None) -> dict[str, np.ndarray]:
    """Classify or regress serialized tf.Examples on a signature of that method."""
    name = signature_name or DEFAULT_SIGNATURE
    sig = get_signature(lv.servable, name)
    want = f"tensorflow/serving/{method}"
    runner = getattr(lv.servable, method, None)
    if runner is None or sig.method_name != want:
        raise InvalidArgument(
            f"signature {name!r} of model {lv.model} version {lv.version} has method {sig.method_name!r}; "
            f"{method} needs a signature with method {want!r}"
        )
    return _observed(lv, lambda: runner(examples, name))
