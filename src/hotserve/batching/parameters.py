"""BatchingParameters with TF Serving's names and meanings, read from the text-proto file
`--batching_parameters_file` takes (or a YAML mapping for per-model overrides)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields


class BatchingConfigError(ValueError):
    pass


@dataclass(frozen=True)
class BatchingParameters:
    max_batch_size: int = 1000  # rows in one batch, as TF Serving's default
    batch_timeout_micros: int = 0  # 0: a batch closes as soon as a batch thread is free
    max_enqueued_batches: int = 100  # beyond this, new requests get UNAVAILABLE at once
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()  # pad each batch up to the next of these
    pad_variable_length_inputs: bool = False  # pad non-batch dimensions to the batch's largest

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise BatchingConfigError("max_batch_size, num_batch_threads and max_enqueued_batches must be >= 1")
        if self.batch_timeout_micros < 0:
            raise BatchingConfigError("batch_timeout_micros must be >= 0")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes != sorted(set(sizes)) or sizes[0] < 1:
                raise BatchingConfigError(f"allowed_batch_sizes must increase strictly and be >= 1, got {sizes}")
            if sizes[-1] != self.max_batch_size:
                raise BatchingConfigError(
                    f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size ({self.max_batch_size})")

    @classmethod
    def from_mapping(cls, values: dict) -> "BatchingParameters":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise BatchingConfigError(f"unknown batching parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        values = dict(values)
        if "allowed_batch_sizes" in values:
            values["allowed_batch_sizes"] = tuple(int(v) for v in values["allowed_batch_sizes"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise BatchingConfigError(str(exc)) from None


_INT_FIELDS = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
_message_class = None


def _batching_parameters_class():
    """tensorflow.serving.BatchingParameters (session_bundle_config.proto: names, types and field
    numbers as TF Serving has them), built once in a private pool. No pip package ships this
    message, so it is described here rather than generated with the rest of hotserve.protos,
    whose parity test checks every message against an upstream package."""
    global _message_class
    if _message_class is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

        f = descriptor_pb2.FieldDescriptorProto
        fd = descriptor_pb2.FileDescriptorProto(name="hotserve/batching_parameters.proto", package="tensorflow.serving",
                                                syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
        msg = fd.message_type.add(name="BatchingParameters")
        for number, name, wrapper in [(1, "max_batch_size", "Int64Value"), (2, "batch_timeout_micros", "Int64Value"),
                                      (3, "max_enqueued_batches", "Int64Value"), (4, "num_batch_threads", "Int64Value"),
                                      (5, "thread_pool_name", "StringValue"),
                                      # newer TF Serving releases: accepted so their files parse, not acted on
                                      (8, "enable_large_batch_splitting", "BoolValue"),
                                      (9, "max_execution_batch_size", "Int64Value")]:
            msg.field.add(name=name, number=number, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                          type_name=f".google.protobuf.{wrapper}")
        msg.field.add(name="allowed_batch_sizes", number=6, type=f.TYPE_INT64, label=f.LABEL_REPEATED)
        msg.field.add(name="pad_variable_length_inputs", number=7, type=f.TYPE_BOOL, label=f.LABEL_OPTIONAL)
        pool = descriptor_pool.DescriptorPool()
        pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
        pool.Add(fd)
        _message_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
    return _message_class


def _explain(exc: Exception, text: str) -> str:
    """protobuf's parse error in the words of a batching file."""
    import re

    msg = str(exc)
    m = re.search(r'has no field named "(\w+)"', msg)
    if m:
        return f"unknown batching parameter {m.group(1)!r}; known: {', '.join(sorted(_KNOWN))}"
    m = re.search(r"^(\d+):", msg)
    line = text.splitlines()[int(m.group(1)) - 1].strip() if m and int(m.group(1)) <= len(text.splitlines()) else ""
    name = line.split("{")[0].split(":")[0].strip()
    if re.search(r"Couldn.t parse|Invalid value|Expected (integer|identifier|bool|\"true\")", msg) and name:
        return f"line {m.group(1)}: {name} has an invalid value ({msg.split(' : ', 1)[-1]})"
    return f"cannot read {line!r}: expected 'name {{ value: N }}' or 'name: value' ({msg})"


_KNOWN = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads", "thread_pool_name",
          "allowed_batch_sizes", "pad_variable_length_inputs", "enable_large_batch_splitting", "max_execution_batch_size"}


def parse_batching_parameters(text: str) -> BatchingParameters:
    """TF Serving's BatchingParameters text proto, read by protobuf's text format parser (so
    every valid spelling works: wrappers on one line or several, comments, field order)."""
    from google.protobuf import text_format

    msg = _batching_parameters_class()()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise BatchingConfigError(_explain(exc, text)) from None
    values: dict = {}
    for name in _INT_FIELDS:
        if msg.HasField(name):
            values[name] = getattr(msg, name).value
    if msg.allowed_batch_sizes:
        values["allowed_batch_sizes"] = tuple(msg.allowed_batch_sizes)
    if msg.pad_variable_length_inputs:
        values["pad_variable_length_inputs"] = True
    return BatchingParameters(**values)


def load_batching_parameters(path: str) -> BatchingParameters:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_batching_parameters(f.read())
    except OSError as exc:
        raise BatchingConfigError(f"cannot read {path}: {exc.strerror}") from None
