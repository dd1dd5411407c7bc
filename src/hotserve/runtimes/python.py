"""Python runtime: a version directory holding model.py.

The module declares its signature and a predict function:

    SIGNATURE = {"inputs": {"x": ("float32", [-1, 4])}, "outputs": {"y": ("float32", [-1, 4])}}
    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

and may define load(version_dir) and unload() hooks. Each version is imported as its own
module object, so two versions of one model never share module state.

Live parameters: a module that declares its named tensors takes deltas

    PARAMETERS = {"w": np.ones((4, 4), np.float32)}     # or def parameters() -> dict (after load)
    def predict(inputs, params): ...                    # params: the bound revision's tensors (read-only)
    def update_parameters(params, updates) -> dict: ... # optional hook: the next params from the
                                                        # current ones and the validated updates

Without the hook hotserve writes the updates copy-on-write itself (a touched tensor is a new
array, the others are shared). With it the module builds the next state (it must not modify
`params`: requests bound to the old revision are still reading it); each update has `name`,
`values` and `rows` (None for a whole tensor).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
from typing import Mapping

import numpy as np

from hotserve import dtypes
from hotserve.errors import LoadError
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec, get_signature
from hotserve.runtimes.parameters import ParamSpec, ParamState

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
            self._init_parameters(module, path)
        except LoadError:
            raise
        except Exception as exc:
            raise LoadError(f"{path}: {type(exc).__name__}: {exc}") from exc
        self._module = module

    def _init_parameters(self, module, path: str) -> None:
        self.param_specs: dict[str, ParamSpec] | None = None
        self.not_updatable = ""
        self.current: ParamState | None = None
        source = getattr(module, "parameters", None)
        params = source() if callable(source) else getattr(module, "PARAMETERS", None)
        if params is None:
            self.not_updatable = (f"{path} declares no PARAMETERS (or parameters()); a Python model takes deltas "
                                  "when it names its tensors and its predict takes them: predict(inputs, params)")
            return
        if len(inspect.signature(module.predict).parameters) < 2:
            self.not_updatable = f"{path}: predict(inputs) takes no params; define predict(inputs, params) to take deltas"
            return
        tensors = {}
        for name, value in dict(params).items():
            arr = np.array(value, copy=True)
            arr.flags.writeable = False
            tensors[str(name)] = arr
        self.param_specs = {n: ParamSpec(n, a.dtype, tuple(a.shape)) for n, a in tensors.items()}
        self.current = ParamState(tensors)
        self._initial = dict(tensors)  # shared with revision 0; only tensors deltas replaced cost memory
        self._hook = getattr(module, "update_parameters", None)

    # -- live parameters (core/parameters.py) -----------------------------------------------
    def initial_values(self, names: list[str]) -> dict[str, np.ndarray]:
        return {n: self._initial[n] for n in names}

    def state_extra(self, old: ParamState, tensors: dict, touched: set[str]):
        return None

    def build_with_hook(self, old: ParamState, updates: list) -> dict | None:
        """The model's own next state (its update_parameters hook), or None without a hook."""
        if self._hook is None:
            return None
        out = self._hook(old.tensors, updates)
        tensors = {}
        for name, value in dict(out).items():
            spec = self.param_specs.get(name)
            arr = np.asarray(value)
            if spec is None or arr.shape != spec.shape or arr.dtype != spec.dtype:
                raise ValueError(f"update_parameters returned {name!r} as {arr.dtype} {list(arr.shape)}; expected "
                                 + (f"{spec.dtype} {list(spec.shape)}" if spec else f"one of {sorted(self.param_specs)}"))
            tensors[name] = arr
        missing = set(self.param_specs) - set(tensors)
        if missing:
            raise ValueError(f"update_parameters dropped tensor(s) {sorted(missing)}; return every tensor")
        return tensors

    def predict_state(self, state: ParamState, inputs: Mapping[str, np.ndarray],
                      signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        get_signature(self, signature_name)
        return {k: np.asarray(v) for k, v in self._predict(dict(inputs), state.tensors).items()}

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        if self.current is not None:
            return self.predict_state(self.current, inputs, signature_name)
        get_signature(self, signature_name)
        return {k: np.asarray(v) for k, v in self._predict(dict(inputs)).items()}

    def unload(self) -> None:
        hook = getattr(self._module, "unload", None)
        if hook is not None:
            hook()
        self._module = None
