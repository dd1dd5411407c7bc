"""The admin token guarding every state-changing endpoint (REST and gRPC).

No token configured means the management API is off: state-changing calls answer 403 /
PERMISSION_DENIED, so a server is never left writable by accident. A wrong or missing token
answers 401 / UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac

from hotserve import envvars
from hotserve.errors import PermissionDenied, Unauthenticated


class AdminAuth:
    def __init__(self, token: str | None) -> None:
        self.token = token or None

    def check(self, authorization: str | None) -> None:
        """`authorization` is the Authorization header / metadata value ("Bearer <token>")."""
        if self.token is None:
            raise PermissionDenied(
                f"the management API is off: start hotserve with --admin_token or {envvars.ADMIN_TOKEN} to enable it"
            )
        if not authorization:
            raise Unauthenticated("missing admin token: send 'Authorization: Bearer <token>'")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self.token.encode()):
            raise Unauthenticated("invalid admin token")
