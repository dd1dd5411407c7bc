"""inference.GRPCInferenceService (KServe V2 / Open Inference Protocol, Triton numbering)."""

from __future__ import annotations

from hotserve import __version__
from hotserve.core import control, inference
from hotserve.protocols import v2
from hotserve.protocols import v2_grpc as codec
from hotserve.protos.inference import grpc_service_pb2 as pb
from hotserve.runtimes.base import get_signature
from hotserve.server.context import ServerContext
from hotserve.server.frame import Call
from hotserve.server.grpc_handlers import KEY_METADATA, Method, framed, unary


class InferenceService:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.manager = ctx.manager

    def ServerLive(self, req: pb.ServerLiveRequest, meta: dict) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, req: pb.ServerReadyRequest, meta: dict) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.manager.ready())

    def ModelReady(self, req: pb.ModelReadyRequest, meta: dict) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self.manager.get(req.name).is_ready(*v2.version_field(req.version)))

    def ServerMetadata(self, req: pb.ServerMetadataRequest, meta: dict) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="hotserve", version=__version__, extensions=v2.EXTENSIONS)

    def ModelMetadata(self, req: pb.ModelMetadataRequest, meta: dict) -> pb.ModelMetadataResponse:
        mm = self.manager.get(req.name)
        lv = self.manager.acquire(req.name, *v2.version_field(req.version))
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

    @staticmethod
    def ModelInfer(req: pb.ModelInferRequest, meta: dict):
        call = Call(req.model_name, *v2.version_field(req.model_version), meta.get(KEY_METADATA), "infer", "GRPC",
                    request_id=req.id or None)

        def execute(lv, inputs):
            outputs = inference.predict(lv, inputs, None)
            # V2 echoes the body's id; without one, the id the server used (x-request-id, or made).
            rid = req.id or call.request_id or ""
            return codec.encode_infer(req.model_name, lv.version_str, rid, outputs, [o.name for o in req.outputs],
                                      lv.revision)

        return call, lambda: codec.decode_infer(req), execute

    def RepositoryIndex(self, req: pb.RepositoryIndexRequest, meta: dict) -> pb.RepositoryIndexResponse:
        resp = pb.RepositoryIndexResponse()
        for row in v2.repository_index(self.manager.models, req.ready):
            resp.models.add(**row)
        return resp

    def RepositoryModelLoad(self, req: pb.RepositoryModelLoadRequest, meta: dict) -> pb.RepositoryModelLoadResponse:
        self.ctx.auth.check(meta.get("authorization"))
        control.request_load(self.manager.get(req.model_name))
        return pb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, req: pb.RepositoryModelUnloadRequest, meta: dict) -> pb.RepositoryModelUnloadResponse:
        self.ctx.auth.check(meta.get("authorization"))
        control.request_unload(self.manager.get(req.model_name))
        return pb.RepositoryModelUnloadResponse()


def services(ctx: ServerContext) -> dict[str, dict[str, Method]]:
    svc = InferenceService(ctx)
    methods = {}
    for name in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer",
                 "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
        kind = framed if name == "ModelInfer" else unary
        methods[name] = kind(getattr(svc, name), getattr(pb, f"{name}Request"), getattr(pb, f"{name}Response"))
    return {"inference.GRPCInferenceService": methods}
