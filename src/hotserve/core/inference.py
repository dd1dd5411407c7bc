"""Running one request on one bound version: check inputs, predict, classify failures."""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from hotserve.core.loaded import LoadedVersion
from hotserve.errors import Code, HotserveError, InvalidArgument
from hotserve.runtimes.base import check_inputs, get_signature

# Runtime exception class names that mean "the input was wrong" rather than "the server broke".
_CLIENT_FAULTS = {"InvalidArgument", "ValueError", "TypeError", "IndexError"}


def predict(lv: LoadedVersion, inputs: Mapping[str, np.ndarray], signature_name: str | None) -> dict[str, np.ndarray]:
    """Run one bound request; its outcome and latency feed the version's stats (canary analysis)."""
    t0 = time.perf_counter()
    ok = False
    try:
        sig = get_signature(lv.servable, signature_name)
        check_inputs(sig, inputs)
        if lv.batcher is not None:
            out = lv.batcher.run(lv, inputs, signature_name or "serving_default")
        else:
            out = lv.servable.predict(inputs, signature_name or "serving_default")
        ok = True
        return out
    except HotserveError:
        raise
    except Exception as exc:
        code = Code.INVALID_ARGUMENT if type(exc).__name__ in _CLIENT_FAULTS else Code.INTERNAL
        raise HotserveError(f"model {lv.model} version {lv.version}: {type(exc).__name__}: {exc}", code) from exc
    finally:
        lv.stats.record(ok, time.perf_counter() - t0)


def run_examples(lv: LoadedVersion, method: str, examples: list[bytes], signature_name: str | None) -> dict[str, np.ndarray]:
    """Classify or regress serialized tf.Examples on a signature of that method."""
    sig_name = signature_name or "serving_default"
    sig = get_signature(lv.servable, sig_name)
    want = f"tensorflow/serving/{method}"
    runner = getattr(lv.servable, method, None)
    if runner is None or sig.method_name != want:
        raise InvalidArgument(
            f"signature {sig_name!r} of model {lv.model} version {lv.version} has method {sig.method_name!r}; "
            f"{method} needs a signature with method {want!r}"
        )
    t0 = time.perf_counter()
    ok = False
    try:
        out = runner(examples, sig_name)
        ok = True
        return out
    except HotserveError:
        raise
    except Exception as exc:
        code = Code.INVALID_ARGUMENT if type(exc).__name__ in _CLIENT_FAULTS else Code.INTERNAL
        raise HotserveError(f"model {lv.model} version {lv.version}: {type(exc).__name__}: {exc}", code) from exc
    finally:
        lv.stats.record(ok, time.perf_counter() - t0)
