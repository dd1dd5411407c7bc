"""What every runtime provides, and the one place inputs are checked against a signature."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

import numpy as np

from hotserve import dtypes
from hotserve.errors import InvalidArgument

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature; -1 marks a dynamic dimension, None an unknown rank."""

    name: str
    dtype: dtypes.DType
    shape: tuple[int, ...] | None

    def describe(self) -> str:
        shape = "unknown rank" if self.shape is None else "[" + ", ".join(str(d) for d in self.shape) + "]"
        return f"{self.dtype.tf_name} {shape}"


@dataclass(frozen=True)
class Signature:
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method_name: str = PREDICT_METHOD
    # The name the runtime knows each tensor by, when it differs from the signature key
    # (TF Serving reports these in metadata); inputs and outputs may reuse a key.
    input_tensor_names: dict[str, str] = field(default_factory=dict)
    output_tensor_names: dict[str, str] = field(default_factory=dict)


class Servable(Protocol):
    """One loaded model version, ready to run."""

    runtime: str
    signatures: dict[str, Signature]

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        ...

    def unload(self) -> None:
        ...


# Live parameters (core/parameters.py, runtimes/parameters.py). A servable that takes deltas has
#   param_specs: dict[str, ParamSpec]      the tensors a delta may write
#   current: ParamState                    the state plain predict() reads (revision 0 at load)
#   predict_state(state, inputs, signature_name) -> outputs
#   state_extra(old_state, tensors, touched) -> the runtime's per-state object (e.g. a session)
# and `not_updatable` ("" when it takes deltas, else why not). Others take no deltas.


def updatable(servable: Servable) -> str:
    """'' when the servable takes parameter deltas, else why not (for metadata and the 400)."""
    if getattr(servable, "param_specs", None) is None or not hasattr(servable, "predict_state"):
        return getattr(servable, "not_updatable", "") or (
            f"the {servable.runtime} runtime does not take parameter deltas; publish a new version instead")
    return getattr(servable, "not_updatable", "")


class StateView:
    """A servable seen through one parameter state: what a request bound to a revision runs."""

    __slots__ = ("servable", "state", "signatures", "runtime")

    def __init__(self, servable: Servable, state) -> None:
        self.servable = servable
        self.state = state
        self.signatures = servable.signatures
        self.runtime = servable.runtime

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        return self.servable.predict_state(self.state, inputs, signature_name)

    def __getattr__(self, name: str):
        return getattr(self.servable, name)


def get_signature(servable: Servable, signature_name: str | None) -> Signature:
    name = signature_name or DEFAULT_SIGNATURE
    try:
        return servable.signatures[name]
    except KeyError:
        known = ", ".join(sorted(servable.signatures)) or "none"
        raise InvalidArgument(
            f"Serving signature name: \"{name}\" not found in signature def; available signatures: {known}"
        ) from None


def check_inputs(signature: Signature, inputs: Mapping[str, np.ndarray]) -> None:
    """Reject inputs whose names, dtypes or shapes do not match, saying expected vs got."""
    missing = [n for n in signature.inputs if n not in inputs]
    extra = [n for n in inputs if n not in signature.inputs]
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing input(s) " + ", ".join(repr(n) for n in missing))
        if extra:
            parts.append("unexpected input(s) " + ", ".join(repr(n) for n in extra))
        expected = ", ".join(repr(n) for n in signature.inputs)
        raise InvalidArgument(f"{'; '.join(parts)}; the signature expects inputs: {expected}")
    for name, spec in signature.inputs.items():
        arr = inputs[name]
        got = dtypes.from_numpy(arr.dtype)
        if got is not spec.dtype:
            raise InvalidArgument(
                f"input {name!r}: expected dtype {spec.dtype.tf_name}, got {got.tf_name}"
            )
        if spec.shape is None:
            continue
        if arr.ndim != len(spec.shape) or any(
            want != -1 and want != have for want, have in zip(spec.shape, arr.shape)
        ):
            raise InvalidArgument(
                f"input {name!r}: expected shape {_fmt_shape(spec.shape)}, got {_fmt_shape(arr.shape)}"
            )


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def synthesize_inputs(signature: Signature, batch: int = 1) -> dict[str, np.ndarray]:
    """Inputs matching a signature, dynamic dimensions set to `batch`; used to validate loads."""
    out: dict[str, np.ndarray] = {}
    for name, spec in signature.inputs.items():
        shape = (batch,) if spec.shape is None else tuple(batch if d == -1 else d for d in spec.shape)
        if spec.dtype is dtypes.STRING:
            arr = np.empty(shape, dtype=object)
            arr.fill(b"")
        else:
            arr = np.zeros(shape, dtype=spec.dtype.numpy)
        out[name] = arr
    return out
