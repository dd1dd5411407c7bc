"""Model server configuration: TF Serving's `model_config_list` text proto, or the same content
as YAML, parsed into validated ModelConfig objects.

YAML may also carry hotserve's own per-model settings (`canary`), which the text proto has no
field for. A config that fails to parse or validate raises ConfigError and changes nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hotserve.batching.parameters import BatchingConfigError, BatchingParameters
from hotserve.core.policy import All, Latest, Specific, VersionPolicy

KNOWN_PLATFORMS = {"", "tensorflow", "onnx", "onnxruntime", "python"}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class CanaryConfig:
    """Weighted split between the `stable` and `canary` labels, with automatic analysis."""

    weight: float = 10.0  # percent of default-routed requests sent to the canary
    auto: bool = False  # a newly available version becomes the canary instead of the default
    window_seconds: float = 30.0  # promote after this long if the canary stayed healthy
    min_requests: int = 50  # no decision before the canary served this many requests
    max_error_rate_increase: float = 0.01  # canary error rate may exceed stable's by this much
    max_latency_ratio: float = 1.5  # canary p99 may be this many times stable's p99
    on_success: str = "promote"  # promote | hold
    on_failure: str = "rollback"  # rollback | hold

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 100.0:
            raise ConfigError(f"canary weight is a percentage from 0 to 100, got {self.weight}")
        if self.window_seconds <= 0 or self.min_requests < 1:
            raise ConfigError("canary window_seconds must be > 0 and min_requests >= 1")
        if self.max_error_rate_increase < 0 or self.max_latency_ratio <= 0:
            raise ConfigError("canary max_error_rate_increase must be >= 0 and max_latency_ratio > 0")
        if self.on_success not in ("promote", "hold") or self.on_failure not in ("rollback", "hold"):
            raise ConfigError("canary on_success is promote|hold and on_failure is rollback|hold")


@dataclass(frozen=True)
class ModelConfig:
    name: str
    base_path: str
    policy: VersionPolicy = field(default_factory=Latest)
    labels: dict[str, int] = field(default_factory=dict)
    platform: str = ""
    canary: CanaryConfig | None = None
    # None: the server's --enable_batching setting; False: off for this model; parameters: its own.
    batching: BatchingParameters | bool | None = None
    # Admission control (None: the server's --max_concurrent_requests / --max_queued_requests).
    max_concurrent_requests: int | None = None
    max_queued_requests: int | None = None
    # TF Serving's logging_config { sampling_config { sampling_rate } }: the share of predict
    # requests written to the prediction log (0: off). Needs a feedback store on the server.
    logging_sampling_rate: float = 0.0


def _policy_from_proto(p) -> VersionPolicy:
    which = p.WhichOneof("policy_choice")
    if which == "specific":
        if not p.specific.versions:
            raise ConfigError("model_version_policy specific {} lists no versions")
        return Specific(frozenset(int(v) for v in p.specific.versions))
    if which == "all":
        return All()
    if which == "latest":
        return Latest(p.latest.num_versions or 1)
    return Latest(1)  # TF Serving's default


def _from_proto(server_config) -> list[ModelConfig]:
    if server_config.WhichOneof("config") != "model_config_list":
        raise ConfigError("config must hold a model_config_list (custom_model_config is not supported)")
    return [
        ModelConfig(
            name=c.name,
            base_path=c.base_path,
            policy=_policy_from_proto(c.model_version_policy),
            labels={k: int(v) for k, v in c.version_labels.items()},
            platform=c.model_platform,
            logging_sampling_rate=c.logging_config.sampling_config.sampling_rate if c.HasField("logging_config") else 0.0,
        )
        for c in server_config.model_config_list.config
    ]


def parse_text_proto(text: str) -> list[ModelConfig]:
    from google.protobuf import text_format

    from hotserve.protos.tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise ConfigError(f"not a valid ModelServerConfig text proto: {exc}") from None
    return validate(_from_proto(msg))


def from_proto(server_config) -> list[ModelConfig]:
    """From a ModelServerConfig message (gRPC HandleReloadConfigRequest)."""
    return validate(_from_proto(server_config))


_MODEL_KEYS = {"name", "base_path", "model_platform", "model_version_policy", "version_labels", "canary", "batching",
               "max_concurrent_requests", "max_queued_requests", "logging_config"}


def _limit(m: dict, key: str, where: str, minimum: int) -> int | None:
    value = m.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _sampling_rate_from_yaml(doc, where: str) -> float:
    """logging_config: {sampling_config: {sampling_rate: 0.5}}, as the text proto spells it."""
    if doc is None:
        return 0.0
    shape = f"{where}: logging_config must be {{sampling_config: {{sampling_rate: R}}}} with R from 0 to 1"
    if not isinstance(doc, dict) or set(doc) != {"sampling_config"} or not isinstance(doc["sampling_config"], dict):
        raise ConfigError(shape)
    rate = doc["sampling_config"].get("sampling_rate", 0.0)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool):
        raise ConfigError(shape)
    return float(rate)


def _policy_from_yaml(p, where: str) -> VersionPolicy:
    if p is None:
        return Latest(1)
    if not isinstance(p, dict) or len(p) != 1:
        raise ConfigError(f"{where}: model_version_policy must be one of {{latest: {{num_versions: N}}}}, {{all: {{}}}}, {{specific: {{versions: [...]}}}}")
    kind, body = next(iter(p.items()))
    body = body or {}
    try:
        if kind == "latest":
            return Latest(int(body.get("num_versions", 1)))
        if kind == "all":
            return All()
        if kind == "specific":
            versions = body.get("versions")
            if not isinstance(versions, list) or not versions:
                raise ConfigError(f"{where}: specific policy needs a non-empty versions list")
            return Specific(frozenset(int(v) for v in versions))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: model_version_policy: {exc}") from None
    raise ConfigError(f"{where}: unknown version policy {kind!r}; expected latest, all or specific")


def parse_yaml(text: str) -> list[ModelConfig]:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or "model_config_list" not in doc:
        raise ConfigError("YAML config must be a mapping with a model_config_list key")
    entries = doc["model_config_list"]
    if isinstance(entries, dict):
        entries = entries.get("config")
    if not isinstance(entries, list):
        raise ConfigError("model_config_list must be a list of models (or {config: [...]})")
    out = []
    for i, m in enumerate(entries):
        where = f"model_config_list[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(f"{where} must be a mapping")
        unknown = set(m) - _MODEL_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(_MODEL_KEYS)}")
        labels = m.get("version_labels") or {}
        if not isinstance(labels, dict):
            raise ConfigError(f"{where}: version_labels must map label -> version")
        canary = m.get("canary")
        if canary is not None:
            if not isinstance(canary, dict):
                raise ConfigError(f"{where}: canary must be a mapping")
            try:
                canary = CanaryConfig(**canary)
            except TypeError as exc:
                raise ConfigError(f"{where}: canary: {exc}") from None
        batching = m.get("batching")
        if batching is not None:
            if batching is False:
                pass
            elif batching is True:
                batching = BatchingParameters()
            elif isinstance(batching, dict):
                try:
                    batching = BatchingParameters.from_mapping(batching)
                except BatchingConfigError as exc:
                    raise ConfigError(f"{where}: batching: {exc}") from None
            else:
                raise ConfigError(f"{where}: batching must be true, false, or a mapping of batching parameters")
        try:
            labels = {str(k): int(v) for k, v in labels.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: version_labels values must be version numbers") from None
        out.append(ModelConfig(
            name=str(m.get("name", "")),
            base_path=str(m.get("base_path", "")),
            policy=_policy_from_yaml(m.get("model_version_policy"), where),
            labels=labels,
            platform=str(m.get("model_platform", "")),
            canary=canary,
            batching=batching,
            max_concurrent_requests=_limit(m, "max_concurrent_requests", where, 1),
            max_queued_requests=_limit(m, "max_queued_requests", where, 0),
            logging_sampling_rate=_sampling_rate_from_yaml(m.get("logging_config"), where),
        ))
    return validate(out)


def validate(models: list[ModelConfig]) -> list[ModelConfig]:
    if not models:
        raise ConfigError("the config lists no models")
    seen = set()
    for m in models:
        if not m.name:
            raise ConfigError("every model needs a name")
        if m.name in seen:
            raise ConfigError(f"model name {m.name!r} appears twice")
        seen.add(m.name)
        if not m.base_path:
            raise ConfigError(f"model {m.name!r} needs a base_path")
        if m.platform not in KNOWN_PLATFORMS:
            raise ConfigError(f"model {m.name!r}: model_platform {m.platform!r} unknown; expected one of {sorted(KNOWN_PLATFORMS - {''})}")
        if not 0.0 <= m.logging_sampling_rate <= 1.0:
            raise ConfigError(f"model {m.name!r}: logging_config sampling_rate is a share from 0 to 1, "
                              f"got {m.logging_sampling_rate}")
        for label, version in m.labels.items():
            if not label or version < 0:
                raise ConfigError(f"model {m.name!r}: label {label!r} -> {version} is not a label and a version number")
    return models


def load_config_file(path: str) -> list[ModelConfig]:
    """Parse a config file: YAML when it ends in .yaml/.yml, TF Serving text proto otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    if os.path.splitext(path)[1].lower() in (".yaml", ".yml"):
        return parse_yaml(text)
    return parse_text_proto(text)
