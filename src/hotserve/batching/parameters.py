"""BatchingParameters with TF Serving's names and meanings, read from the text-proto file
`--batching_parameters_file` takes (or a YAML mapping for per-model overrides)."""

from __future__ import annotations

import os
import re
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


# `name { value: N }` (TF's Int64Value wrappers), `name: N` (repeated/bool fields), comments.
_WRAPPED = re.compile(r"^\s*(\w+)\s*\{\s*value\s*:\s*([-\w.]+)\s*\}\s*$")
_PLAIN = re.compile(r"^\s*(\w+)\s*:\s*([-\w.]+)\s*$")
_INT_FIELDS = {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"}
_IGNORED = {"thread_pool_name", "enable_large_batch_splitting", "max_execution_batch_size"}


def parse_batching_parameters(text: str) -> BatchingParameters:
    values: dict = {}
    sizes: list[int] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _WRAPPED.match(line) or _PLAIN.match(line)
        if not m:
            raise BatchingConfigError(f"line {n}: cannot read {raw.strip()!r}; expected 'name {{ value: N }}' or 'name: value'")
        name, value = m.group(1), m.group(2).strip("'\"")
        try:
            if name in _INT_FIELDS:
                values[name] = int(value)
            elif name == "allowed_batch_sizes":
                sizes.append(int(value))
            elif name == "pad_variable_length_inputs":
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                values[name] = value.lower() == "true"
            elif name in _IGNORED:
                continue
            else:
                raise BatchingConfigError(f"line {n}: unknown batching parameter {name!r}")
        except BatchingConfigError:
            raise
        except ValueError:
            raise BatchingConfigError(f"line {n}: {name} has an invalid value {value!r}") from None
    if sizes:
        values["allowed_batch_sizes"] = tuple(sizes)
    return BatchingParameters(**values)


def load_batching_parameters(path: str) -> BatchingParameters:
    try:
        with open(path, encoding="utf-8") as f:
            return parse_batching_parameters(f.read())
    except OSError as exc:
        raise BatchingConfigError(f"cannot read {path}: {exc.strerror}") from None
