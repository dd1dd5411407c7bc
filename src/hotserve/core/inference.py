"""Running one request on one bound version: check inputs, predict, classify failures."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from hotserve.core.loaded import LoadedVersion
from hotserve.errors import Code, HotserveError, InvalidArgument
from hotserve.runtimes.base import check_inputs, get_signature

# Runtime exception class names that mean "the input was wrong" rather than "the server broke".
_CLIENT_FAULTS = {"InvalidArgument", "ValueError", "TypeError", "IndexError"}


def predict(lv: LoadedVersion, inputs: Mapping[str, np.ndarray], signature_name: str | None) -> dict[str, np.ndarray]:
    sig = get_signature(lv.servable, signature_name)
    check_inputs(sig, inputs)
    try:
        return lv.servable.predict(inputs, signature_name or "serving_default")
    except HotserveError:
        raise
    except Exception as exc:
        code = Code.INVALID_ARGUMENT if type(exc).__name__ in _CLIENT_FAULTS else Code.INTERNAL
        raise HotserveError(f"model {lv.model} version {lv.version}: {type(exc).__name__}: {exc}", code) from exc
