"""inference.GRPCInferenceService (KServe V2 / Open Inference Protocol, Triton numbering)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from hotserve import __version__
from hotserve.core import inference
from hotserve.core.manager import Manager
from hotserve.errors import InvalidArgument
from hotserve.protocols import v2
from hotserve.protocols import v2_grpc as codec
from hotserve.protos.inference import grpc_service_pb2 as pb
from hotserve.runtimes.base import get_signature
from hotserve.server.rest_v2 import EXTENSIONS


def _version(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise InvalidArgument(f"model_version must be a non-negative integer or empty, got {text!r}")
    return int(text)


class InferenceService:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager

    def ServerLive(self, req: pb.ServerLiveRequest) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, req: pb.ServerReadyRequest) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.manager.ready())

    def ModelReady(self, req: pb.ModelReadyRequest) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.manager.get(req.name).is_ready(_version(req.version)))

    def ServerMetadata(self, req: pb.ServerMetadataRequest) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="hotserve", version=__version__, extensions=EXTENSIONS)

    def ModelMetadata(self, req: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        mm = self.manager.get(req.name)
        lv = self.manager.acquire(req.name, _version(req.version))
        try:
            sig = get_signature(lv.servable, None)
            resp = pb.ModelMetadataResponse(
                name=req.name,
                versions=[str(v) for v in sorted(mm.route.table.versions)],
                platform=v2.PLATFORMS.get(lv.servable.runtime, lv.servable.runtime),
            )
            for side, target in (("inputs", resp.inputs), ("outputs", resp.outputs)):
                for t in v2.tensor_metadata(sig, side):
                    target.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return resp
        finally:
            lv.release()

    def ModelInfer(self, req: pb.ModelInferRequest) -> pb.ModelInferResponse:
        inputs = codec.decode_infer(req)
        lv = self.manager.acquire(req.model_name, _version(req.model_version))
        try:
            outputs = inference.predict(lv, inputs, None)
            return codec.encode_infer(req.model_name, lv.version_str, req.id, outputs, [o.name for o in req.outputs])
        finally:
            lv.release()

    def RepositoryIndex(self, req: pb.RepositoryIndexRequest) -> pb.RepositoryIndexResponse:
        resp = pb.RepositoryIndexResponse()
        for row in v2.repository_index(self.manager.models, req.ready):
            resp.models.add(**row)
        return resp

    def RepositoryModelLoad(self, req: pb.RepositoryModelLoadRequest) -> pb.RepositoryModelLoadResponse:
        self.manager.get(req.model_name).request_load()
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, req: pb.RepositoryModelUnloadRequest) -> pb.RepositoryModelUnloadResponse:
        self.manager.get(req.model_name).request_unload()
        return pb.RepositoryModelUnloadResponse()


def handlers(manager: Manager, executor: ThreadPoolExecutor) -> list[grpc.GenericRpcHandler]:
    from hotserve.server.grpc_server import unary

    svc = InferenceService(manager)
    methods = {}
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                 "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
        methods[name] = unary(getattr(svc, name), getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response"), executor)
    return [grpc.method_handlers_generic_handler("inference.GRPCInferenceService", methods)]
