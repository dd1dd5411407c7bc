"""The gates a version passes before it becomes routable: validation on synthesized inputs,
then the model's own warm-up requests."""

from __future__ import annotations

import numpy as np

from hotserve.errors import HotserveError, LoadError
from hotserve.runtimes.base import Servable, check_inputs, get_signature, synthesize_inputs

# Signatures fed serialized tf.Examples: an Example synthesized without knowing the features the
# graph parses (b"", no features) fails any required feature, so these are exercised by the
# model's warm-up requests instead of by synthesized inputs.
_EXAMPLE_METHODS = frozenset({"tensorflow/serving/classify", "tensorflow/serving/regress"})


def validate(servable: Servable) -> None:
    """Run one inference per signature on synthesized inputs; check every output comes back."""
    for name, sig in servable.signatures.items():
        if sig.method_name in _EXAMPLE_METHODS:
            continue
        try:
            outputs = servable.predict(synthesize_inputs(sig), name)
        except Exception as exc:
            raise LoadError(f"validation inference on signature {name!r} failed: {type(exc).__name__}: {exc}") from exc
        missing = [o for o in sig.outputs if o not in outputs]
        if missing:
            raise LoadError(f"validation inference on signature {name!r} did not return output(s) {missing}")
        for oname, arr in outputs.items():
            if not isinstance(arr, np.ndarray):
                raise LoadError(f"validation inference on signature {name!r}: output {oname!r} is {type(arr).__name__}, expected a numpy array")


def warm_up(servable: Servable) -> int:
    """Replay the servable's warm-up requests (TF Serving's assets.extra file for SavedModels);
    any failure ends the version like a failed validation. Returns how many were replayed."""
    warmup_requests = getattr(servable, "warmup_requests", None)
    if warmup_requests is None:
        return 0
    try:
        requests = warmup_requests()
    except HotserveError:
        raise
    except Exception as exc:
        raise LoadError(f"cannot read warm-up requests: {type(exc).__name__}: {exc}") from exc
    for n, (sig_name, inputs) in enumerate(requests, 1):
        try:
            check_inputs(get_signature(servable, sig_name), inputs)
            servable.predict(inputs, sig_name)
        except Exception as exc:
            why = str(exc) if isinstance(exc, HotserveError) else f"{type(exc).__name__}: {exc}"
            raise LoadError(f"warm-up request {n} failed: {why}") from exc
    return len(requests)
