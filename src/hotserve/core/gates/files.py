"""File gates: checks a version's own directory asks for before it goes live.

They run after validation on synthesized inputs and after the runtime's own warm-up
(gates.validation), and work with every runtime:

- ``warmup.json``: a JSON list of TF Serving REST predict bodies, each replayed through
  ``servable.predict`` (``"repeat": N`` replays one N times to warm caches);
- ``golden.json``: cases of inputs and expected outputs; every listed output must come back
  with the same shape and match within tolerance (exactly for integer, bool and string outputs).

Both are optional. Any failure raises LoadError, which the manager turns into END with the
reason in the version's status: the version never receives traffic.

Requests and golden inputs are in TF Serving's REST predict format, so a file holds exactly
what a client would send. The decoder is injected (the server passes protocols.tfserving_rest,
the one the REST front end uses), so core never imports a protocol.
"""

from __future__ import annotations

import json
import math
import io
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hotserve import dtypes
from hotserve.errors import HotserveError, LoadError
from hotserve.repository.storage import LocalStorage, Storage, StorageUnavailable
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Servable, Signature, TensorSpec, check_inputs, get_signature


WARMUP_FILE = "warmup.json"
GOLDEN_FILE = "golden.json"

# Larger files are refused before they are read: these files hold a few representative
# requests, not a data set.
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_REPEAT = 1000
DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-6

_WARMUP_KEYS = ("signature_name", "instances", "inputs", "repeat")
_GOLDEN_KEYS = ("tolerance", "cases", "description")
_CASE_KEYS = ("name", "signature_name", "inputs", "expected")
_TOLERANCE_KEYS = ("rtol", "atol")


class RequestDecoder(Protocol):
    """Reads a TF Serving REST predict body (protocols.tfserving_rest satisfies this)."""

    def signature_name(self, doc: dict) -> str | None:
        ...

    def decode_predict(self, doc: dict, sig: Signature) -> tuple[dict[str, np.ndarray], bool]:
        ...


@dataclass
class GateReport:
    """What the file gates did for one version (all zero when neither file is present)."""

    warmup_requests: int = 0  # entries of warmup.json replayed
    warmup_runs: int = 0  # predict calls for them, counting repeats
    warmup_seconds: float = 0.0
    golden_cases: int = 0  # golden.json cases that passed (all of them, or LoadError)
    golden_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.warmup_seconds + self.golden_seconds

    def summary(self) -> str:
        return (
            f"{WARMUP_FILE}: {self.warmup_requests} request(s), {self.warmup_runs} run(s) in {self.warmup_seconds:.3f}s; "
            f"{GOLDEN_FILE}: {self.golden_cases} case(s) passed in {self.golden_seconds:.3f}s"
        )


def run_file_gates(servable: Servable, version_dir: str, decoder: RequestDecoder) -> GateReport:
    """Replay warmup.json, then check golden.json, for the files version_dir holds.

    Raises LoadError naming the file, the request or case index and the reason on any failure.
    """
    report = GateReport()
    report.warmup_requests, report.warmup_runs, report.warmup_seconds = run_warmup_file(servable, version_dir, decoder)
    report.golden_cases, report.golden_seconds = run_golden_file(servable, version_dir, decoder)
    return report


def run_warmup_file(servable: Servable, version_dir: str, decoder: RequestDecoder) -> tuple[int, int, float]:
    """(requests, runs, seconds) of replaying warmup.json; all zero without the file."""
    warmup = _read_json(version_dir, WARMUP_FILE)
    if warmup is _ABSENT:
        return 0, 0, 0.0
    t0 = time.perf_counter()
    requests, runs = _run_warmup(servable, warmup, decoder)
    return requests, runs, time.perf_counter() - t0


def run_golden_file(servable: Servable, version_dir: str, decoder: RequestDecoder) -> tuple[int, float]:
    """(cases passed, seconds) of checking golden.json; zero without the file."""
    golden = _read_json(version_dir, GOLDEN_FILE)
    if golden is _ABSENT:
        return 0, 0.0
    t0 = time.perf_counter()
    cases = _run_golden(servable, golden, decoder)
    return cases, time.perf_counter() - t0


# -- reading -----------------------------------------------------------------------------------
_ABSENT = object()


def has_file(version_dir: str, name: str, storage: Storage = LocalStorage()) -> bool:
    return storage.exists(storage.join(version_dir, name))


def _read_json(version_dir: str, name: str, storage: Storage = LocalStorage()) -> Any:
    path = storage.join(version_dir, name)
    if not storage.exists(path):
        return _ABSENT
    limit = MAX_FILE_BYTES
    try:
        with storage.open_read(path) as f:
            size = f.seek(0, io.SEEK_END)
            if size > limit:
                raise LoadError(_too_large(name, size, limit))
            f.seek(0)
            data = f.read(limit + 1)
    except IsADirectoryError:
        raise LoadError(f"{name}: {path} is not a regular file") from None
    except (OSError, StorageUnavailable) as exc:
        raise LoadError(f"{name}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    if len(data) > limit:  # grew while we looked
        raise LoadError(_too_large(name, len(data), limit))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"{name} is not UTF-8 text: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"{name} is not valid JSON: {exc}") from None
    except RecursionError:
        raise LoadError(f"{name} is not valid JSON: nested too deeply") from None


def _too_large(name: str, size: int, limit: int) -> str:
    hint = ' (use "repeat" to replay one request many times)' if name == WARMUP_FILE else ""
    return (
        f"{name} is {size} bytes, over the limit of {limit} bytes ({limit / 2**20:g} MiB); "
        f"keep it to a few representative requests{hint}"
    )


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, HotserveError) else f"{type(exc).__name__}: {exc}"


def _jtype(value: Any) -> str:
    """JSON's name for the type of a parsed value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _unknown_keys(obj: dict, allowed: tuple[str, ...], where: str) -> None:
    extra = [k for k in obj if k not in allowed]
    if extra:
        raise LoadError(f"{where}: unknown key(s) {extra}; allowed keys are {list(allowed)}")


# -- warmup.json -------------------------------------------------------------------------------
def _run_warmup(servable: Servable, doc: Any, decoder: RequestDecoder) -> tuple[int, int]:
    if not isinstance(doc, list):
        raise LoadError(
            f"{WARMUP_FILE} must be a JSON array of TF Serving REST predict requests "
            f'(each {{"instances": [...]}} or {{"inputs": ...}}), got a JSON {_jtype(doc)}'
        )
    runs = 0
    for i, req in enumerate(doc):
        where = f"{WARMUP_FILE}: request [{i}]"
        if not isinstance(req, dict):
            raise LoadError(f'{where} must be a JSON object like {{"instances": [...]}}, got a JSON {_jtype(req)}')
        _unknown_keys(req, _WARMUP_KEYS, where)
        repeat = req.get("repeat", 1)
        if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat <= MAX_REPEAT:
            raise LoadError(f"{where}: \"repeat\" must be an integer from 1 to {MAX_REPEAT}, got {json.dumps(repeat)}")
        try:
            sig_name = decoder.signature_name(req)
            sig = get_signature(servable, sig_name)
            inputs, _ = decoder.decode_predict(req, sig)
            check_inputs(sig, inputs)
        except Exception as exc:
            raise LoadError(f"{where} is invalid: {_why(exc)}") from exc
        for n in range(repeat):
            try:
                servable.predict(inputs, sig_name or DEFAULT_SIGNATURE)
            except Exception as exc:
                rep = f" (repeat {n + 1} of {repeat})" if repeat > 1 else ""
                raise LoadError(f"{where} failed to run{rep}: {_why(exc)}") from exc
            runs += 1
    return len(doc), runs


# -- golden.json -------------------------------------------------------------------------------
_GOLDEN_SHAPE = (
    '{"tolerance": {"rtol": ..., "atol": ...} (optional), '
    '"cases": [{"inputs": ..., "expected": {"<output>": [...]}}, ...]}'
)


def _run_golden(servable: Servable, doc: Any, decoder: RequestDecoder) -> int:
    if not isinstance(doc, dict):
        raise LoadError(f"{GOLDEN_FILE} must be a JSON object {_GOLDEN_SHAPE}, got a JSON {_jtype(doc)}")
    _unknown_keys(doc, _GOLDEN_KEYS, GOLDEN_FILE)
    rtol, atol = _tolerance(doc.get("tolerance"))
    if "cases" not in doc:
        raise LoadError(f'{GOLDEN_FILE}: missing key "cases"; expected {_GOLDEN_SHAPE}')
    cases = doc["cases"]
    if not isinstance(cases, list):
        raise LoadError(f'{GOLDEN_FILE}: "cases" must be a JSON array of cases, got a JSON {_jtype(cases)}')
    for i, case in enumerate(cases):
        _run_case(servable, i, case, rtol, atol, decoder)
    return len(cases)


def _tolerance(tol: Any) -> tuple[float, float]:
    if tol is None:
        return DEFAULT_RTOL, DEFAULT_ATOL
    where = f'{GOLDEN_FILE}: "tolerance"'
    if not isinstance(tol, dict):
        raise LoadError(f'{where} must be a JSON object like {{"rtol": 1e-5, "atol": 1e-6}}, got a JSON {_jtype(tol)}')
    _unknown_keys(tol, _TOLERANCE_KEYS, where)
    out = []
    for key, default in (("rtol", DEFAULT_RTOL), ("atol", DEFAULT_ATOL)):
        v = tol.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise LoadError(f"{where}: {key!r} must be a finite number >= 0, got {json.dumps(v)}")
        out.append(float(v))
    return out[0], out[1]


def _run_case(servable: Servable, i: int, case: Any, rtol: float, atol: float, decoder: RequestDecoder) -> None:
    where = f"{GOLDEN_FILE}: case [{i}]"
    if not isinstance(case, dict):
        raise LoadError(f'{where} must be a JSON object {{"inputs": ..., "expected": ...}}, got a JSON {_jtype(case)}')
    if isinstance(case.get("name"), str):
        where += f" ({case['name']!r})"
    _unknown_keys(case, _CASE_KEYS, where)
    for key in ("inputs", "expected"):
        if key not in case:
            raise LoadError(f'{where}: missing key "{key}"; each case is {{"inputs": ..., "expected": ...}}')
    if "name" in case and not isinstance(case["name"], str):
        raise LoadError(f'{where}: "name" must be a string, got a JSON {_jtype(case["name"])}')
    try:
        sig_name = decoder.signature_name(case)
        sig = get_signature(servable, sig_name)
        inputs, _ = decoder.decode_predict({"inputs": case["inputs"]}, sig)
        check_inputs(sig, inputs)
    except Exception as exc:
        raise LoadError(f"{where}: invalid inputs: {_why(exc)}") from exc
    expected = _expected_by_output(case["expected"], sig, where)
    try:
        outputs = servable.predict(inputs, sig_name or DEFAULT_SIGNATURE)
    except Exception as exc:
        raise LoadError(f"{where}: inference failed: {_why(exc)}") from exc
    for oname, want in expected.items():
        if oname not in outputs:
            raise LoadError(
                f"{where}: expected output {oname!r} but the model returned output(s) {sorted(outputs)}"
            )
        _compare(f"{where} output {oname!r}", oname, want, np.asarray(outputs[oname]), rtol, atol, decoder)


def _expected_by_output(expected: Any, sig: Signature, where: str) -> dict[str, Any]:
    names = list(sig.outputs)
    if isinstance(expected, dict) and set(expected) != {"b64"}:
        if not expected:
            raise LoadError(f'{where}: "expected" names no outputs; the signature has outputs {names}')
        return expected
    if len(names) != 1:
        raise LoadError(
            f'{where}: "expected" must be a JSON object naming outputs (the signature has {len(names)} outputs {names}), '
            f"got a JSON {_jtype(expected)}"
        )
    return {names[0]: expected}


def _expected_array(oname: str, values: Any, got: np.ndarray, where: str, decoder: RequestDecoder) -> np.ndarray:
    """The expected JSON values as an array, decoded by the REST decoder as if they were an
    input of the got output's element type (floats in float64 for the comparison)."""
    try:
        dt = dtypes.from_numpy(got.dtype)
    except ValueError as exc:
        raise LoadError(f"{where}: cannot compare: {exc}") from None
    if got.dtype.kind == "f":
        dt = dtypes.BY_TF_NAME["DT_DOUBLE"]
    elif got.dtype.kind == "b" and not _all_bools(values):
        # numpy would read any number (or string) as a bool; a golden file says true/false.
        raise LoadError(f'{where}: bad "expected" value: a DT_BOOL output is compared with JSON true/false values')
    spec = TensorSpec(oname, dt, None)
    try:
        arr, _ = decoder.decode_predict({"inputs": {oname: values}}, Signature(inputs={oname: spec}, outputs={}))
    except HotserveError as exc:
        why = str(exc).replace(f"input {oname!r}: ", "", 1)  # the decoder speaks of inputs
        raise LoadError(f'{where}: bad "expected" value: {why}') from None
    return arr[oname]


def _all_bools(values: Any) -> bool:
    if isinstance(values, list):
        return all(_all_bools(v) for v in values)
    return isinstance(values, bool)


def _fmt_index(idx: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(k)) for k in idx) + "]"


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _scalar(v: Any) -> str:
    if isinstance(v, bytes):
        try:
            return repr(v.decode("utf-8"))
        except UnicodeDecodeError:
            return repr(v)
    if isinstance(v, np.generic):
        v = v.item()
    return repr(v)


def _compare(where: str, oname: str, values: Any, got: np.ndarray, rtol: float, atol: float,
             decoder: RequestDecoder) -> None:
    want = _expected_array(oname, values, got, where, decoder)
    if want.shape != got.shape:
        raise LoadError(f"{where}: expected shape {_fmt_shape(want.shape)}, got {_fmt_shape(got.shape)}")
    kind = got.dtype.kind
    if kind == "f":
        g = got.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            ok = np.isclose(g, want, rtol=rtol, atol=atol, equal_nan=True)
            diff = np.abs(g - want)
        tol = f"rtol={rtol:g}, atol={atol:g}"
    elif kind in "OUS":
        g = _as_bytes(got)
        ok = np.array([a == b for a, b in zip(g.ravel(), want.ravel())], dtype=bool).reshape(got.shape)
        diff = None
        tol = "exact match (string output)"
    else:
        g = got
        ok = np.asarray(got == want, dtype=bool)
        diff = None if kind == "b" else np.abs(got.astype(np.float64) - want.astype(np.float64))
        tol = f"exact match ({dtypes.from_numpy(got.dtype).tf_name} output)"
    if bool(np.all(ok)):
        return
    bad = np.argwhere(~ok)
    first = tuple(bad[0])
    if diff is not None:
        finite = diff[np.isfinite(diff)]
        max_abs = f"{float(finite.max()):g}" if finite.size else "nan"
        if finite.size and finite.size < diff.size:
            max_abs += " (and non-finite differences)"
    else:
        max_abs = "n/a"
    raise LoadError(
        f"{where}: {len(bad)} of {got.size} value(s) differ; max abs difference {max_abs}, tolerance {tol}; "
        f"first mismatch at index {_fmt_index(first)}: expected {_scalar(want[first])}, got {_scalar(g[first])}"
    )


def _as_bytes(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    for idx, v in np.ndenumerate(arr):
        out[idx] = v.encode("utf-8") if isinstance(v, str) else v
    return out
