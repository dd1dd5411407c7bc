"""The validation gate a version passes before it becomes routable."""

from __future__ import annotations

import numpy as np

from hotserve.errors import LoadError
from hotserve.runtimes.base import Servable, synthesize_inputs


def validate(servable: Servable) -> None:
    """Run one inference per signature on synthesized inputs; check every output comes back."""
    for name, sig in servable.signatures.items():
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
