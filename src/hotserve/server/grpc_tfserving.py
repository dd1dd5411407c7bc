"""tensorflow.serving.PredictionService and ModelService handlers."""

from __future__ import annotations

from hotserve.core import config as cfg
from hotserve.core import inference
from hotserve.errors import InvalidArgument
from hotserve.protocols import tf_examples
from hotserve.protocols import tfserving_grpc as codec
from hotserve.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    predict_pb2,
    regression_pb2,
)
from hotserve.runtimes.base import DEFAULT_SIGNATURE
from hotserve.server.context import ServerContext
from hotserve.server.frame import Call
from hotserve.server.grpc_handlers import KEY_METADATA, Method, framed, unary


def _call(spec, api: str, meta: dict) -> Call:
    if not spec.name:
        raise InvalidArgument("model_spec.name is empty; name the model to call")
    version, label = codec.requested_version(spec)
    return Call(spec.name, version, label, meta.get(KEY_METADATA), api, "GRPC")


class PredictionService:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    @staticmethod
    def Predict(req: predict_pb2.PredictRequest, meta: dict):
        sig_name = req.model_spec.signature_name or DEFAULT_SIGNATURE

        def execute(lv, inputs):
            outputs = inference.predict(lv, inputs, sig_name)
            return codec.encode_predict(req.model_spec.name, lv.version, sig_name, outputs, req.output_filter)

        return _call(req.model_spec, "predict", meta), lambda: codec.decode_predict(req), execute

    def GetModelMetadata(self, req: get_model_metadata_pb2.GetModelMetadataRequest,
                         meta: dict) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not req.model_spec.name:
            raise InvalidArgument("model_spec.name is empty; name the model to call")
        lv = self.ctx.manager.acquire(req.model_spec.name, *codec.requested_version(req.model_spec))
        try:
            return codec.encode_metadata(req.model_spec.name, lv.version, lv.servable.signatures, req.metadata_field)
        finally:
            lv.release()

    @staticmethod
    def _examples(method: str, response_cls, result):
        """Classify or Regress: run the request's Examples on one bound version and build the response."""

        def plan(req, meta: dict):
            sig_name = req.model_spec.signature_name or DEFAULT_SIGNATURE

            def execute(lv, examples):
                outputs = inference.run_examples(lv, method, examples, sig_name)
                resp = response_cls()
                codec.fill_spec(resp.model_spec, req.model_spec.name, lv.version, sig_name)
                resp.result.CopyFrom(result(outputs, len(examples)))
                return resp

            return _call(req.model_spec, method, meta), lambda: tf_examples.serialized_examples(req.input), execute

        return plan

    @staticmethod
    def MultiInference(req: inference_pb2.MultiInferenceRequest, meta: dict):
        if not req.tasks:
            raise InvalidArgument("MultiInferenceRequest has no tasks")
        names = {t.model_spec.name for t in req.tasks}
        if len(names) != 1:
            raise InvalidArgument(f"all MultiInference tasks must name the same model, got {sorted(names)}")

        def execute(lv, examples):  # one version serves every task
            resp = inference_pb2.MultiInferenceResponse()
            for task in req.tasks:
                sig_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
                method = task.method_name.rsplit("/", 1)[-1]
                if method not in ("classify", "regress"):
                    raise InvalidArgument(f"task method_name {task.method_name!r}: expected tensorflow/serving/classify or /regress")
                outputs = inference.run_examples(lv, method, examples, sig_name)
                result = resp.results.add()
                codec.fill_spec(result.model_spec, task.model_spec.name, lv.version, sig_name)
                if method == "classify":
                    result.classification_result.CopyFrom(tf_examples.classification_result(outputs, len(examples)))
                else:
                    result.regression_result.CopyFrom(tf_examples.regression_result(outputs, len(examples)))
            return resp

        call = _call(req.tasks[0].model_spec, "multi_inference", meta)
        return call, lambda: tf_examples.serialized_examples(req.input), execute


class ModelService:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def GetModelStatus(self, req: get_model_status_pb2.GetModelStatusRequest,
                       meta: dict) -> get_model_status_pb2.GetModelStatusResponse:
        if not req.model_spec.name:
            raise InvalidArgument("model_spec.name is empty; name the model whose status you want")
        mm = self.ctx.manager.get(req.model_spec.name)
        version, label = codec.requested_version(req.model_spec)
        if label is not None:
            version = mm.label_version(label)
        return codec.encode_status(mm.statuses(version))

    def HandleReloadConfigRequest(self, req: model_management_pb2.ReloadConfigRequest,
                                  meta: dict) -> model_management_pb2.ReloadConfigResponse:
        """Apply a new model_config_list and wait, bounded, until its models are available
        (TF Serving's version of this RPC can hang forever; this one answers)."""
        self.ctx.auth.check(meta.get("authorization"))
        try:
            models = cfg.from_proto(req.config)
        except cfg.ConfigError as exc:
            raise InvalidArgument(f"invalid config: {exc}") from None
        self.ctx.manager.apply_config(models, timeout=self.ctx.reload_timeout_seconds)
        return model_management_pb2.ReloadConfigResponse()


def services(ctx: ServerContext) -> dict[str, dict[str, Method]]:
    ps, ms = PredictionService(ctx), ModelService(ctx)
    return {
        "tensorflow.serving.PredictionService": {
            "Predict": framed(ps.Predict, predict_pb2.PredictRequest, predict_pb2.PredictResponse),
            "GetModelMetadata": unary(ps.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest,
                                      get_model_metadata_pb2.GetModelMetadataResponse),
            "Classify": framed(ps._examples("classify", classification_pb2.ClassificationResponse,
                                            tf_examples.classification_result),
                               classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse),
            "Regress": framed(ps._examples("regress", regression_pb2.RegressionResponse, tf_examples.regression_result),
                              regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
            "MultiInference": framed(ps.MultiInference, inference_pb2.MultiInferenceRequest,
                                     inference_pb2.MultiInferenceResponse),
        },
        "tensorflow.serving.ModelService": {
            "GetModelStatus": unary(ms.GetModelStatus, get_model_status_pb2.GetModelStatusRequest,
                                    get_model_status_pb2.GetModelStatusResponse),
            "HandleReloadConfigRequest": unary(ms.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest,
                                               model_management_pb2.ReloadConfigResponse),
        },
    }
