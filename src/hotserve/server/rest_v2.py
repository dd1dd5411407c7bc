"""KServe V2 / Open Inference Protocol REST routes, with Triton's binary tensor and model
repository extensions."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import orjson

from hotserve import __version__
from hotserve.core import inference
from hotserve.core.manager import Manager
from hotserve.errors import HotserveError, InvalidArgument, MethodNotAllowed, NotFound
from hotserve.protocols import v2
from hotserve.runtimes.base import get_signature

if TYPE_CHECKING:
    from hotserve.server.rest import Reply, RestApp

EXTENSIONS = ["binary_tensor_data", "model_repository"]
_OCTET = (b"content-type", b"application/octet-stream")


def _json(status: int, doc, version: str | None = None) -> "Reply":
    from hotserve.server.rest import Reply

    return Reply(status, orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), version)


def _header(scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def split_version(version: int | str | None) -> tuple[int | None, str | None]:
    """(version, label) from a V2 version field that holds a number or a label."""
    return (None, version) if isinstance(version, str) else (version, None)


def label_version(mm, label: str) -> int | None:
    lv = mm.route.table.labels.get(label)
    return lv.version if lv is not None else None


def _decompress(body: bytes, encoding: str | None) -> bytes:
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding == "gzip":
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(body)
    except zlib.error as exc:
        raise InvalidArgument(f"request body is not valid {encoding}: {exc}") from None
    raise InvalidArgument(f"unsupported Content-Encoding {encoding!r}; expected gzip, deflate or none")


class V2Routes:
    def __init__(self, manager: Manager, app: "RestApp") -> None:
        self.manager = manager
        self.app = app

    async def dispatch(self, path: str, method: str, scope, receive) -> "Reply":
        from hotserve.server.rest import read_body, request_key

        parts = path.strip("/").split("/")[1:]  # drop "v2"
        if not parts:
            return _json(200, {"name": "hotserve", "version": __version__, "extensions": EXTENSIONS})
        if parts[0] == "models" and len(parts) >= 2:
            name, rest = parts[1], parts[2:]
            version: int | str | None = None
            if rest[:1] == ["versions"] and len(rest) >= 2:
                version, rest = self._version(rest[1]), rest[2:]
            if rest == ["infer"]:
                self._method(method, "POST")
                body = await read_body(receive)
                hdr = _header(scope, b"inference-header-content-length")
                enc = _header(scope, b"content-encoding")
                key = request_key(scope)
                return await self.app.infer(name, len(body), self.app.observed, "infer", name, self._infer, name, version,
                                            key, body, hdr, enc)
            self._method(method, "GET")
            if rest == ["ready"]:
                return self._model_ready(name, version)
            if not rest:
                return self._model_metadata(name, version)
        if parts[0] == "repository":
            self._method(method, "POST")
            if parts[1:] == ["index"]:
                body = await read_body(receive)
                try:
                    return self._index(body)
                except (orjson.JSONDecodeError, AttributeError):
                    raise InvalidArgument("repository index body must be empty or a JSON object like {\"ready\": true}") from None
            if len(parts) == 4 and parts[1] == "models" and parts[3] in ("load", "unload"):
                self.app.admin.auth.check(_header(scope, b"authorization"))
                mm = self.manager.get(parts[2])
                await read_body(receive)
                fn = mm.request_load if parts[3] == "load" else mm.request_unload
                await self.app.run(fn, bounded=False)
                return _json(200, {})
        raise NotFound(f"no such V2 endpoint: {method} {path}")

    @staticmethod
    def _method(got: str, want: str) -> None:
        if got != want:
            raise MethodNotAllowed(f"this endpoint takes {want}, got {got}")

    @staticmethod
    def _version(text: str) -> int | str | None:
        """A version number, or a label (V2's version field accepts either here)."""
        if text == "":
            return None
        return int(text) if text.isdigit() else text

    def _model_ready(self, name: str, version: int | str | None) -> "Reply":
        mm = self.manager.get(name)
        ready = (label_version(mm, version) is not None) if isinstance(version, str) else mm.is_ready(version)
        return _json(200 if ready else 400, {"name": name, "ready": ready})

    def _model_metadata(self, name: str, version: int | str | None) -> "Reply":
        mm = self.manager.get(name)
        lv = self.manager.acquire(name, *split_version(version))
        try:
            sig = get_signature(lv.servable, None)
            doc = {
                "name": name,
                "versions": [str(v) for v in sorted(mm.route.table.versions)],
                "platform": v2.PLATFORMS.get(lv.servable.runtime, lv.servable.runtime),
                "inputs": v2.tensor_metadata(sig, "inputs"),
                "outputs": v2.tensor_metadata(sig, "outputs"),
            }
            return _json(200, doc, lv.version_str)
        finally:
            lv.release()

    def _index(self, body: bytes) -> "Reply":
        ready_only = bool(body) and orjson.loads(body).get("ready", False) is True
        return _json(200, v2.repository_index(self.manager.models, ready_only))

    def _infer(self, name: str, version: int | str | None, key: str | None, body: bytes, hdr: str | None,
               enc: str | None) -> "Reply":
        from hotserve.server.rest import Reply, _error

        try:
            body = _decompress(body, enc)
            try:
                header_len = int(hdr) if hdr is not None else None
            except ValueError:
                raise InvalidArgument(f"Inference-Header-Content-Length must be an integer, got {hdr!r}") from None
            req = v2.decode_infer(body, header_len)
            lv = self.manager.acquire(name, *split_version(version), key=key)
        except HotserveError as exc:
            return _error(exc)
        try:
            sig = get_signature(lv.servable, None)
            outputs = v2.select_outputs(inference.predict(lv, req.inputs, None), req.outputs, sig)
            payload, json_len = v2.encode_infer(name, lv.version_str, req, outputs)
            if json_len is None:
                return Reply(200, payload, lv.version_str)
            headers = [_OCTET, (b"inference-header-content-length", str(json_len).encode())]
            return Reply(200, payload, lv.version_str, headers)
        except HotserveError as exc:
            return _error(exc, lv.version_str)
        finally:
            lv.release()
