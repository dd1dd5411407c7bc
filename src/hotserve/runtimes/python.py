"""Python runtime: a version directory holding model.py.

The module declares its signature and a predict function:

    SIGNATURE = {"inputs": {"x": ("float32", [-1, 4])}, "outputs": {"y": ("float32", [-1, 4])}}
    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

and may define load(version_dir) and unload() hooks. Each version is imported as its own
module object, so two versions of one model never share module state.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from typing import Mapping

import numpy as np

from hotserve import dtypes
from hotserve.errors import LoadError
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec, get_signature

MODEL_FILE = "model.py"
_counter = itertools.count()


def _specs(section: dict, path: str) -> dict[str, TensorSpec]:
    specs = {}
    for name, (dtype, shape) in section.items():
        try:
            dt = dtypes.from_numpy(np.dtype(dtype))
        except (TypeError, ValueError) as exc:
            raise LoadError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}") from exc
        specs[name] = TensorSpec(name, dt, None if shape is None else tuple(int(d) for d in shape))
    return specs


class PythonServable:
    runtime = "python"

    def __init__(self, version_dir: str) -> None:
        path = os.path.join(version_dir, MODEL_FILE)
        name = f"hotserve_user_model_{next(_counter)}"
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            if hasattr(module, "load"):
                module.load(version_dir)
            sig = module.SIGNATURE
            self.signatures = {
                DEFAULT_SIGNATURE: Signature(
                    inputs=_specs(sig["inputs"], path), outputs=_specs(sig["outputs"], path)
                )
            }
            self._predict = module.predict
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
        self._module = module

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        get_signature(self, signature_name)
        return {k: np.asarray(v) for k, v in self._predict(dict(inputs)).items()}

    def unload(self) -> None:
        hook = getattr(self._module, "unload", None)
        if hook is not None:
            hook()
        self._module = None
