"""TensorFlow SavedModel servable: a version directory holding saved_model.pb (TF Serving's layout:
<base>/<version>/saved_model.pb + variables/ + optional assets/ and assets.extra/).

TensorFlow is imported lazily, the first time a SavedModel is loaded, so a server that serves
no SavedModel never pays for it. Every signature of the SavedModel is served; its SignatureDef
(read from saved_model.pb) supplies what TF Serving reports in metadata: the method name and
the graph tensor name of each input and output.

Tag set: like tensorflow_model_server (whose --saved_model_tags defaults to "serve"), only the
MetaGraphDef tagged exactly {"serve"} is loaded. A SavedModel without one is refused with a
LoadError listing the tag sets it has, rather than serving some other graph (often a training
graph) by guessing: a model that TF Serving would refuse is refused here too, for the same
reason.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import threading
from typing import Mapping, Sequence

import numpy as np

from hotserve import dtypes
from hotserve.errors import Code, HotserveError, InvalidArgument, LoadError
from hotserve.runtimes.base import DEFAULT_SIGNATURE, PREDICT_METHOD, Signature, TensorSpec, get_signature

log = logging.getLogger("hotserve.runtimes.tensorflow")

MODEL_FILE = "saved_model.pb"
MODEL_TEXT_FILE = "saved_model.pbtxt"
SERVE_TAG = "serve"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# tensorflow_model_server refuses warm-up files with more records than this.
MAX_WARMUP_RECORDS = 1000

# Output keys of classify / regress signatures, per TF Serving's conventions
# (tf.saved_model.CLASSIFY_OUTPUT_CLASSES / _SCORES, tf.saved_model.REGRESS_OUTPUTS).
CLASSIFY_OUTPUTS = ("classes", "scores")
REGRESS_OUTPUTS = ("outputs",)

# -- process-wide TensorFlow state ----------------------------------------------------------
_import_lock = threading.Lock()
_tf_module = None
_threads_lock = threading.Lock()
_threads_applied: tuple[int, int] | None = None


def _tf():
    """Import tensorflow once, quietly (TF_CPP_MIN_LOG_LEVEL=2 unless the operator set it)."""
    global _tf_module
    if _tf_module is None:
        # Serialized so two load threads do not race through TF's long, side-effecting import.
        with _import_lock:
            if _tf_module is None:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                import tensorflow as tf

                _tf_module = tf
    return _tf_module


def _configure_threads(tf, intra: int, inter: int) -> None:
    """Apply the op thread pools' sizes once per process; the first load wins.

    TensorFlow fixes them when its runtime initializes (the first op or load), after which
    they cannot change: later, differing values are logged and ignored.
    """
    global _threads_applied
    wanted = (int(intra), int(inter))
    with _threads_lock:
        if _threads_applied is None:
            if wanted != (0, 0):  # 0/0 is TensorFlow's own default: nothing to set.
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(wanted[0])
                    tf.config.threading.set_inter_op_parallelism_threads(wanted[1])
                except RuntimeError as exc:
                    log.warning(
                        "tensorflow was initialized before the first SavedModel load; keeping its thread "
                        "pools (intra_op=%d, inter_op=%d) instead of intra_op=%d, inter_op=%d: %s",
                        tf.config.threading.get_intra_op_parallelism_threads(),
                        tf.config.threading.get_inter_op_parallelism_threads(), *wanted, exc,
                    )
                    wanted = (tf.config.threading.get_intra_op_parallelism_threads(),
                              tf.config.threading.get_inter_op_parallelism_threads())
            _threads_applied = wanted
        elif wanted != _threads_applied:
            log.warning(
                "tensorflow op thread pools are per process and already set to intra_op=%d, inter_op=%d; "
                "ignoring intra_op=%d, inter_op=%d", *_threads_applied, *wanted,
            )


# -- reading the SavedModel ------------------------------------------------------------------
def _read_signature_defs(version_dir: str) -> dict[str, tuple[str, dict[str, str], dict[str, str]]]:
    """{signature: (method_name, {input key: tensor name}, {output key: tensor name})} of the MetaGraphDef
    tagged exactly {"serve"}, parsed with TensorFlow's own protos.

    Plain Python values are returned so that the parsed file (graph constants included) is
    freed at once instead of being kept alive by references into it.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    pb_path = os.path.join(version_dir, MODEL_FILE)
    txt_path = os.path.join(version_dir, MODEL_TEXT_FILE)
    try:
        if os.path.isfile(pb_path):
            with open(pb_path, "rb") as f:
                saved_model.ParseFromString(f.read())
        else:
            from google.protobuf import text_format

            with open(txt_path, encoding="utf-8") as f:
                text_format.Parse(f.read(), saved_model)
    except Exception as exc:
        raise LoadError(f"{version_dir}: cannot parse the SavedModel: {type(exc).__name__}: {exc}") from exc
    tag_sets = [sorted(mg.meta_info_def.tags) for mg in saved_model.meta_graphs]
    for mg in saved_model.meta_graphs:
        if set(mg.meta_info_def.tags) == {SERVE_TAG}:
            out = {}
            for name, sig_def in mg.signature_def.items():
                out[name] = (
                    sig_def.method_name,
                    {k: info.name for k, info in sig_def.inputs.items() if info.name},
                    {k: info.name for k, info in sig_def.outputs.items() if info.name},
                )
            return out
    raise LoadError(
        f"{version_dir}: the SavedModel has no MetaGraphDef tagged {{'{SERVE_TAG}'}} (the tag set TF Serving "
        f"loads); it holds tag sets {tag_sets or 'none'}; re-export it with tags=['{SERVE_TAG}']"
    )


def _dtype(tf_dtype, where: str) -> dtypes.DType:
    try:
        return dtypes.BY_TF_ENUM[tf_dtype.as_datatype_enum]
    except KeyError:
        raise LoadError(f"{where} has element type {tf_dtype.name}, which hotserve cannot serve") from None


def _shape(tf_shape) -> tuple[int, ...] | None:
    if tf_shape.rank is None:
        return None
    return tuple(-1 if d is None else int(d) for d in tf_shape.as_list())


def _spec(name: str, tensor, where: str) -> TensorSpec:
    # `tensor` is a tf.TensorSpec (inputs, TF2 outputs) or a symbolic tf.Tensor (TF1 outputs).
    return TensorSpec(name, _dtype(tensor.dtype, f"{where} {name!r}"), _shape(tensor.shape))


def _build_signature(name: str, fn, sig_def: tuple[str, dict[str, str], dict[str, str]] | None,
                     version_dir: str) -> Signature:
    where = f"{version_dir}: signature {name!r}"
    args, kwargs = fn.structured_input_signature
    if args:
        raise LoadError(f"{where} takes positional inputs; serving signatures take named inputs only")
    inputs = {key: _spec(key, spec, f"{where} input") for key, spec in kwargs.items()}
    outs = fn.structured_outputs
    if not isinstance(outs, Mapping):
        raise LoadError(f"{where} returns {type(outs).__name__}; serving signatures return a dict of tensors")
    outputs = {key: _spec(key, t, f"{where} output") for key, t in outs.items()}
    method, in_names, out_names = sig_def if sig_def is not None else (PREDICT_METHOD, {}, {})
    return Signature(inputs=inputs, outputs=outputs, method_name=method or PREDICT_METHOD,
                     input_tensor_names=dict(in_names), output_tensor_names=dict(out_names))


# -- errors ------------------------------------------------------------------------------------
_OP_CODES = {
    1: Code.UNKNOWN,  # CANCELLED: no closer canonical code in our set
    3: Code.INVALID_ARGUMENT,
    4: Code.DEADLINE_EXCEEDED,
    5: Code.NOT_FOUND,
    8: Code.RESOURCE_EXHAUSTED,
    9: Code.FAILED_PRECONDITION,
    11: Code.INVALID_ARGUMENT,  # OUT_OF_RANGE
    12: Code.UNIMPLEMENTED,
    13: Code.INTERNAL,
    14: Code.UNAVAILABLE,
    15: Code.DATA_LOSS,
}


def _op_error_message(message: str) -> str:
    """TF's op error text without the Python stack TF attaches ("Detected at node ... File ...")."""
    kept: list[str] = []
    in_stack = False
    for line in message.splitlines():
        if line.startswith("Graph execution error:"):
            continue
        if line.startswith("Detected at node"):
            in_stack = True
            continue
        if in_stack and (not line.strip() or line.startswith("  ") or line.startswith("<stack traces")):
            continue
        in_stack = False
        if line.strip():
            kept.append(line.strip())
    text = re.sub(r"\s*\[Op:__inference_\w+\]", "", " ".join(kept)).strip()
    return text or message


def _as_hotserve_error(tf, exc: Exception, signature_name: str) -> Exception:
    if isinstance(exc, tf.errors.OpError):
        code = _OP_CODES.get(exc.error_code, Code.INTERNAL)
        return HotserveError(f"signature {signature_name!r}: {_op_error_message(exc.message)}", code)
    return exc


def _to_numpy(t) -> np.ndarray:
    arr = t.numpy()
    if not isinstance(arr, np.ndarray):  # 0-d tensors come back as numpy scalars or bytes
        arr = np.asarray(arr, dtype=object if isinstance(arr, bytes) else None)
    return arr


class SavedModelServable:
    runtime = "tensorflow"
    # Live parameters: a SavedModel's variables live inside TensorFlow's graph and its traced
    # functions capture them; giving each revision its own copy of the touched variables would
    # mean re-tracing every signature. Publish a new version instead.
    not_updatable = ("TensorFlow SavedModels take no parameter deltas: their variables are captured by the traced "
                     "signatures, so a revision cannot get its own copy without a reload; publish a new version")

    def __init__(self, version_dir: str, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        tf = _tf()
        _configure_threads(tf, intra_op_threads, inter_op_threads)
        self._version_dir = version_dir
        sig_defs = _read_signature_defs(version_dir)
        try:
            loaded = tf.saved_model.load(version_dir, tags=[SERVE_TAG])
        except Exception as exc:  # TF raises OSError, ValueError, OpError... per failure
            raise LoadError(f"tensorflow could not load the SavedModel in {version_dir}: {type(exc).__name__}: {exc}") from exc
        self._loaded = loaded
        self._functions = dict(loaded.signatures)
        if not self._functions:
            raise LoadError(f"{version_dir}: the SavedModel's 'serve' MetaGraphDef has no signatures to serve")
        self.signatures: dict[str, Signature] = {
            name: _build_signature(name, fn, sig_defs.get(name), version_dir)
            for name, fn in self._functions.items()
        }
        self._tf_dtypes = {
            name: {key: tf.as_dtype(spec.dtype.tf_enum) for key, spec in sig.inputs.items()}
            for name, sig in self.signatures.items()
        }

    # -- inference ------------------------------------------------------------------------------
    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        get_signature(self, signature_name)
        name = signature_name or DEFAULT_SIGNATURE
        tf = _tf_module
        fn = self._functions[name]
        wanted = self._tf_dtypes[name]
        try:
            # convert_to_tensor wraps an aligned numpy buffer without copying it where TF can.
            feeds = {key: tf.convert_to_tensor(arr, wanted.get(key)) for key, arr in inputs.items()}
            results = fn(**feeds)
        except Exception as exc:
            raise _as_hotserve_error(tf, exc, name) from exc
        return {key: _to_numpy(t) for key, t in results.items()}

    def _run_examples(self, serialized_examples: Sequence[bytes], signature_name: str, method: str,
                      verb: str, output_keys: tuple[str, ...]) -> dict[str, np.ndarray]:
        sig = get_signature(self, signature_name)
        name = signature_name or DEFAULT_SIGNATURE
        if sig.method_name != method:
            others = self._signatures_with(method)
            raise InvalidArgument(
                f"signature {name!r} has method {sig.method_name!r}; {verb} needs a signature with method "
                f"{method!r}, and this model's are: {', '.join(repr(n) for n in others) if others else 'none'}"
            )
        if len(sig.inputs) != 1:
            raise InvalidArgument(f"{verb} signature {name!r} must have exactly one input, it has {len(sig.inputs)}: {list(sig.inputs)}")
        (key, spec), = sig.inputs.items()
        if spec.dtype is not dtypes.STRING:
            raise InvalidArgument(f"{verb} signature {name!r}: input {key!r} is {spec.dtype.tf_name}, expected DT_STRING serialized tf.Example")
        if not serialized_examples:
            raise InvalidArgument(f"{verb} request holds no examples; send at least one")
        batch = np.empty(len(serialized_examples), dtype=object)
        for i, ex in enumerate(serialized_examples):
            if not isinstance(ex, (bytes, bytearray, memoryview)):
                raise InvalidArgument(f"{verb} example {i}: expected a serialized tf.Example (bytes), got {type(ex).__name__}")
            batch[i] = bytes(ex)
        outputs = self.predict({key: batch}, name)
        found = {k: outputs[k] for k in output_keys if k in outputs}
        if not found:
            raise HotserveError(
                f"{verb} signature {name!r} returned outputs {sorted(outputs)}; expected "
                + " and/or ".join(repr(k) for k in output_keys),
                Code.FAILED_PRECONDITION,
            )
        return found

    def _signatures_with(self, method: str) -> list[str]:
        return sorted(n for n, s in self.signatures.items() if s.method_name == method)

    def classify(self, serialized_examples: Sequence[bytes], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        """Run a classify signature on serialized tf.Examples: {"classes": [n, k] bytes, "scores": [n, k]}
        (either may be absent if the signature lacks it)."""
        return self._run_examples(serialized_examples, signature_name, CLASSIFY_METHOD, "classify", CLASSIFY_OUTPUTS)

    def regress(self, serialized_examples: Sequence[bytes], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        """Run a regress signature on serialized tf.Examples: {"outputs": [n] or [n, 1]}."""
        return self._run_examples(serialized_examples, signature_name, REGRESS_METHOD, "regress", REGRESS_OUTPUTS)

    # -- warm-up ------------------------------------------------------------------------------------
    def warmup_requests(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        """(signature name, inputs) for each record of assets.extra/tf_serving_warmup_requests,
        a TFRecord file of tensorflow.serving.PredictionLog; [] when the file is absent.

        predict_log records give their request's inputs; classify_log and regress_log records
        become the serialized tf.Examples fed to that signature's single string input (with
        the context Example merged into each, as TF Serving does). An unreadable file, an
        undecodable record or another log type raises LoadError: TF Serving refuses to load
        such a version too.
        """
        path = os.path.join(self._version_dir, WARMUP_FILE)
        if not os.path.isfile(path):
            return []
        from hotserve.protos import tensors, tfrecord
        from hotserve.protos.tensorflow_serving.apis import prediction_log_pb2

        requests: list[tuple[str, dict[str, np.ndarray]]] = []
        try:
            for n, record in enumerate(tfrecord.read_records(path), 1):
                if n > MAX_WARMUP_RECORDS:
                    raise LoadError(f"{path} holds more than {MAX_WARMUP_RECORDS} warm-up records, the most TF Serving accepts")
                entry = prediction_log_pb2.PredictionLog()
                entry.ParseFromString(record)
                kind = entry.WhichOneof("log_type")
                if kind == "predict_log":
                    request = entry.predict_log.request
                    inputs = {key: tensors.to_numpy(tp) for key, tp in request.inputs.items()}
                elif kind in ("classify_log", "regress_log"):
                    request = getattr(entry, kind).request
                    inputs = self._example_inputs(request, kind)
                else:
                    raise LoadError(
                        f"{path}: warm-up request {n} is a {kind or 'empty'} record; supported are "
                        "predict_log, classify_log and regress_log"
                    )
                requests.append((request.model_spec.signature_name or DEFAULT_SIGNATURE, inputs))
        except LoadError:
            raise
        except OSError as exc:
            raise LoadError(f"cannot read warm-up file {path}: {exc.strerror or exc}") from exc
        except Exception as exc:  # a corrupt record (ValueError), an undecodable proto or tensor
            # Every record before the failing one was appended, so it is number len(requests) + 1.
            raise LoadError(f"{path}: warm-up request {len(requests) + 1} is unreadable: "
                            f"{type(exc).__name__}: {exc}") from exc
        return requests

    def _example_inputs(self, request, kind: str) -> dict[str, np.ndarray]:
        """A classify/regress request's Examples as a [n] DT_STRING batch keyed by the input of
        the signature it names (TF Serving's key "inputs" when that signature is unknown)."""
        which = request.input.WhichOneof("kind")
        if which == "example_list":
            serialized = [ex.SerializeToString() for ex in request.input.example_list.examples]
        elif which == "example_list_with_context":
            lst = request.input.example_list_with_context
            context = lst.context.SerializeToString()
            # Concatenated serializations parse as a merge: the example's features win.
            serialized = [context + ex.SerializeToString() for ex in lst.examples]
        else:
            raise ValueError(f"{kind} request has no examples")
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = self.signatures.get(name)
        want = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
        if sig is not None and sig.method_name != want:
            raise ValueError(f"{kind} record names signature {name!r}, whose method is {sig.method_name!r}, not {want!r}")
        key = next(iter(sig.inputs)) if sig is not None and len(sig.inputs) == 1 else "inputs"
        batch = np.empty(len(serialized), dtype=object)
        batch[:] = serialized
        return {key: batch}

    def unload(self) -> None:
        # The loaded object holds the variables and functions; TF's object graph has cycles.
        self._functions = {}
        self._tf_dtypes = {}
        self._loaded = None
        gc.collect()
