"""tensorflow.serving.PredictionService and ModelService handlers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from hotserve.core import inference
from hotserve.core.manager import Manager
from hotserve.errors import InvalidArgument
from hotserve.server.auth import AdminAuth
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


KEY_METADATA = "x-request-key"


class PredictionService:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def _acquire(self, spec, meta: dict | None = None):
        if not spec.name:
            raise InvalidArgument("model_spec.name is empty; name the model to call")
        version, label = codec.requested_version(spec)
        return self.manager.acquire(spec.name, version, label, (meta or {}).get(KEY_METADATA))

    def Predict(self, req: predict_pb2.PredictRequest, meta: dict) -> predict_pb2.PredictResponse:
        inputs = codec.decode_predict(req)
        lv = self._acquire(req.model_spec, meta)
        try:
            sig_name = req.model_spec.signature_name or DEFAULT_SIGNATURE
            outputs = inference.predict(lv, inputs, sig_name)
            return codec.encode_predict(req.model_spec.name, lv.version, sig_name, outputs, req.output_filter)
        finally:
            lv.release()

    def GetModelMetadata(self, req: get_model_metadata_pb2.GetModelMetadataRequest,
                         meta: dict) -> get_model_metadata_pb2.GetModelMetadataResponse:
        lv = self._acquire(req.model_spec)
        try:
            return codec.encode_metadata(req.model_spec.name, lv.version, lv.servable.signatures, req.metadata_field)
        finally:
            lv.release()

    def _examples(self, method: str, req, meta: dict, response_cls, result):
        """Classify or Regress: run the request's Examples on one bound version and build the response."""
        examples = tf_examples.serialized_examples(req.input)
        lv = self._acquire(req.model_spec, meta)
        try:
            sig_name = req.model_spec.signature_name or DEFAULT_SIGNATURE
            outputs = inference.run_examples(lv, method, examples, sig_name)
        finally:
            lv.release()
        resp = response_cls()
        codec.fill_spec(resp.model_spec, req.model_spec.name, lv.version, sig_name)
        resp.result.CopyFrom(result(outputs, len(examples)))
        return resp

    def Classify(self, req: classification_pb2.ClassificationRequest, meta: dict) -> classification_pb2.ClassificationResponse:
        return self._examples("classify", req, meta, classification_pb2.ClassificationResponse,
                              tf_examples.classification_result)

    def Regress(self, req: regression_pb2.RegressionRequest, meta: dict) -> regression_pb2.RegressionResponse:
        return self._examples("regress", req, meta, regression_pb2.RegressionResponse, tf_examples.regression_result)

    def MultiInference(self, req: inference_pb2.MultiInferenceRequest, meta: dict) -> inference_pb2.MultiInferenceResponse:
        if not req.tasks:
            raise InvalidArgument("MultiInferenceRequest has no tasks")
        names = {t.model_spec.name for t in req.tasks}
        if len(names) != 1:
            raise InvalidArgument(f"all MultiInference tasks must name the same model, got {sorted(names)}")
        examples = tf_examples.serialized_examples(req.input)
        lv = self._acquire(req.tasks[0].model_spec, meta)  # one version serves every task
        try:
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
        finally:
            lv.release()


class ModelService:
    def __init__(self, manager: Manager, auth: AdminAuth, reload_timeout_seconds: float) -> None:
        self.manager = manager
        self.auth = auth
        self.reload_timeout_seconds = reload_timeout_seconds

    def GetModelStatus(self, req: get_model_status_pb2.GetModelStatusRequest,
                       meta: dict) -> get_model_status_pb2.GetModelStatusResponse:
        if not req.model_spec.name:
            raise InvalidArgument("model_spec.name is empty; name the model whose status you want")
        mm = self.manager.get(req.model_spec.name)
        version, label = codec.requested_version(req.model_spec)
        if label is not None:
            version = mm.label_version(label)
        return codec.encode_status(mm.statuses(version))

    def HandleReloadConfigRequest(self, req: model_management_pb2.ReloadConfigRequest,
                                  meta: dict) -> model_management_pb2.ReloadConfigResponse:
        """Apply a new model_config_list and wait, bounded, until its models are available
        (TF Serving's version of this RPC can hang forever; this one answers)."""
        from hotserve.core import config as cfg

        self.auth.check(meta.get("authorization"))
        try:
            models = cfg.from_proto(req.config)
        except cfg.ConfigError as exc:
            raise InvalidArgument(f"invalid config: {exc}") from None
        self.manager.apply_config(models, timeout=self.reload_timeout_seconds)
        return model_management_pb2.ReloadConfigResponse()


def handlers(manager: Manager, executor: ThreadPoolExecutor, auth: AdminAuth,
             reload_timeout_seconds: float) -> list[grpc.GenericRpcHandler]:
    from hotserve.server.grpc_server import unary

    ps, ms = PredictionService(manager), ModelService(manager, auth, reload_timeout_seconds)
    return [
        grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "Predict": unary(ps.Predict, predict_pb2.PredictRequest, predict_pb2.PredictResponse, executor, "predict",
                             manager),
            "GetModelMetadata": unary(ps.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest,
                                      get_model_metadata_pb2.GetModelMetadataResponse, executor),
            "Classify": unary(ps.Classify, classification_pb2.ClassificationRequest,
                              classification_pb2.ClassificationResponse, executor, "classify"),
            "Regress": unary(ps.Regress, regression_pb2.RegressionRequest, regression_pb2.RegressionResponse, executor,
                             "regress"),
            "MultiInference": unary(ps.MultiInference, inference_pb2.MultiInferenceRequest,
                                    inference_pb2.MultiInferenceResponse, executor, "multi_inference"),
        }),
        grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", {
            "GetModelStatus": unary(ms.GetModelStatus, get_model_status_pb2.GetModelStatusRequest,
                                    get_model_status_pb2.GetModelStatusResponse, executor),
            "HandleReloadConfigRequest": unary(ms.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest,
                                               model_management_pb2.ReloadConfigResponse, executor),
        }),
    ]



