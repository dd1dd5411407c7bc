"""tf.Example inputs and classify/regress results, shared by the REST and gRPC front ends.

REST builds Examples from TF Serving's JSON ("examples" + "context"); gRPC takes them from an
Input message. Either way the runtime receives serialized Examples.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from hotserve.errors import InvalidArgument
from hotserve.protos.tensorflow.core.example import example_pb2
from hotserve.protos.tensorflow_serving.apis import classification_pb2, regression_pb2


def serialized_examples(inp) -> list[bytes]:
    """Serialize an Input's examples; context features are merged into each example, as TF
    Serving does for ExampleListWithContext."""
    which = inp.WhichOneof("kind")
    if which == "example_list":
        examples = list(inp.example_list.examples)
        context = None
    elif which == "example_list_with_context":
        examples = list(inp.example_list_with_context.examples)
        context = inp.example_list_with_context.context
    else:
        raise InvalidArgument("Input must hold example_list or example_list_with_context")
    if not examples:
        raise InvalidArgument("Input holds no examples")
    out = []
    for ex in examples:
        if context is not None:
            merged = type(ex)()
            merged.CopyFrom(context)
            merged.MergeFrom(ex)
            ex = merged
        out.append(ex.SerializeToString())
    return out


def classification_result(outputs: dict[str, np.ndarray], n: int) -> classification_pb2.ClassificationResult:
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise InvalidArgument(f"classify signature returned neither 'classes' nor 'scores' (got {list(outputs)})")
    result = classification_pb2.ClassificationResult()
    for i in range(n):
        cl = result.classifications.add()
        k = (classes.shape[1] if classes is not None and classes.ndim > 1 else
             scores.shape[1] if scores is not None and scores.ndim > 1 else 1)
        for j in range(k):
            c = cl.classes.add()
            if classes is not None:
                label = classes[i, j] if classes.ndim > 1 else classes[i]
                c.label = label.decode() if isinstance(label, bytes) else str(label)
            if scores is not None:
                c.score = float(scores[i, j] if scores.ndim > 1 else scores[i])
    return result


def regression_result(outputs: dict[str, np.ndarray], n: int) -> regression_pb2.RegressionResult:
    values = outputs.get("outputs")
    if values is None:
        if len(outputs) != 1:
            raise InvalidArgument(f"regress signature must return 'outputs', got {list(outputs)}")
        values = next(iter(outputs.values()))
    values = np.asarray(values).reshape(n, -1)
    if values.shape[1] != 1:
        raise InvalidArgument(f"regression output must hold one value per example, got shape {list(values.shape)}")
    result = regression_pb2.RegressionResult()
    for i in range(n):
        result.regressions.add().value = float(values[i, 0])
    return result


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _feature(name: str, value: Any, feature: example_pb2.Feature) -> None:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InvalidArgument(f"feature {name!r} is an empty list")
    kinds = {type(v) for v in values}
    if kinds <= {int}:
        for v in values:
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise InvalidArgument(f"feature {name!r}: {v} does not fit an int64_list (a signed 64-bit integer)")
        feature.int64_list.value.extend(values)
    elif kinds <= {int, float}:
        feature.float_list.value.extend(float(v) for v in values)
    elif kinds <= {str, dict}:
        out = []
        for v in values:
            if isinstance(v, dict):
                if set(v) != {"b64"}:
                    raise InvalidArgument(f"feature {name!r}: objects must be {{\"b64\": ...}}")
                try:
                    out.append(base64.b64decode(v["b64"], validate=True))
                except (binascii.Error, ValueError, TypeError) as exc:
                    raise InvalidArgument(f"feature {name!r}: invalid base64: {exc}") from None
            else:
                out.append(v.encode())
        feature.bytes_list.value.extend(out)
    else:
        raise InvalidArgument(
            f"feature {name!r}: values must be all integers, all numbers, or all strings/{{\"b64\"}}; got {sorted(k.__name__ for k in kinds)}"
        )


def _example(features: Any, where: str) -> example_pb2.Example:
    if not isinstance(features, dict):
        raise InvalidArgument(f"{where} must be an object mapping feature names to values")
    ex = example_pb2.Example()
    for name, value in features.items():
        _feature(name, value, ex.features.feature[name])
    return ex


def json_examples(doc: dict) -> list[bytes]:
    """Serialized Examples from a TF Serving :classify / :regress JSON body."""
    examples = doc.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidArgument("request must hold a non-empty 'examples' list of feature objects")
    context = _example(doc["context"], "'context'") if "context" in doc else None
    out = []
    for i, features in enumerate(examples):
        ex = _example(features, f"'examples'[{i}]")
        if context is not None:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(ex)
            ex = merged
        out.append(ex.SerializeToString())
    return out


def classification_json(result: classification_pb2.ClassificationResult) -> dict:
    return {"result": [[[c.label, c.score] for c in cl.classes] for cl in result.classifications]}


def regression_json(result: regression_pb2.RegressionResult) -> dict:
    return {"result": [r.value for r in result.regressions]}
