"""Running one request on one bound version: check inputs, run (directly or through the
model's batcher), classify failures, and record the outcome in the version's stats."""

from __future__ import annotations

import time
from typing import Callable, Mapping

import numpy as np

from hotserve.core.loaded import LoadedVersion
from hotserve.errors import Code, HotserveError, InvalidArgument
from hotserve.runtimes.base import DEFAULT_SIGNATURE, check_inputs, get_signature

# Runtime exception class names that mean "the input was wrong" rather than "the server broke".
_CLIENT_FAULTS = {"InvalidArgument", "ValueError", "TypeError", "IndexError"}


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
        code = Code.INVALID_ARGUMENT if type(exc).__name__ in _CLIENT_FAULTS else Code.INTERNAL
        raise HotserveError(f"model {lv.model} version {lv.version}: {type(exc).__name__}: {exc}", code) from exc
    finally:
        lv.stats.record(ok, time.perf_counter() - t0)


def predict(lv: LoadedVersion, inputs: Mapping[str, np.ndarray], signature_name: str | None) -> dict[str, np.ndarray]:
    name = signature_name or DEFAULT_SIGNATURE

    def call() -> dict[str, np.ndarray]:
        check_inputs(get_signature(lv.servable, name), inputs)
        if lv.batcher is not None:
            return lv.batcher.run(lv, inputs, name)
        return lv.servable.predict(inputs, name)

    return _observed(lv, call)


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
