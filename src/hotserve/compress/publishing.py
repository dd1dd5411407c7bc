"""Publishing a variant: stage + commit with its lineage in the manifest, optionally as a canary.

As a canary at N% the variant must never take all the default traffic, not even for the moment
between its appearance and the canary setting. So the stable side is fixed *before* the
version is committed:

- with a server URL (`--url`, the management API `hotserve canary` uses): label `stable` = the
  version serving now, commit the variant, then `canary` = variant at N% (the server answers
  once the variant passed its gates and is AVAILABLE, or says why it did not load);
- without one: the routing intent (labels stable and canary, canary weight N) is written
  through the repository's RoutingStore, then the version is committed. A server's watcher
  checks the routing store before it hands a new scan on (repository/watcher.py), so it adopts
  that intent before it acts on the version; one started later reads it at start.
"""

from __future__ import annotations

from dataclasses import dataclass

from hotserve.repository import routing_store
from hotserve.repository.publish import commit, stage
from hotserve.repository.routing_store import FileRoutingStore
from hotserve.repository.storage import normalize_base_path, storage_for


class CanaryError(Exception):
    pass


@dataclass(frozen=True)
class Published:
    version: int
    path: str
    canary: dict | None  # {"version", "weight", "stable", "via"}


def _admin(url: str, token: str | None, method: str, path: str, body: dict | None = None, after: str = "") -> dict:
    from hotserve.admin_client import call

    try:
        return call(url, token, method, path, body)
    except SystemExit as exc:  # the admin client reports HTTP and connection errors this way
        raise CanaryError(f"{exc.code}{after}") from None


def _wait_seen(url: str, model: str, version: int, timeout: float = 60.0) -> None:
    """Wait (bounded) until the server's watcher has seen the committed version: the canary
    call only accepts versions the server knows to be complete."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models/{model}/versions/{version}", timeout=10):
                return
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                return  # the canary call will say what is wrong
        except urllib.error.URLError as exc:
            raise CanaryError(f"cannot reach {url}: {exc.reason}") from None
        if time.monotonic() > deadline:
            raise CanaryError(f"the server at {url} did not see version {version} within {timeout:g}s")
        time.sleep(0.05)


def publish_variant(variant_dir: str, base_path: str, lineage: dict, parent: int, canary: float | None = None,
                    url: str | None = None, token: str | None = None, model_name: str = "default",
                    extra: dict | None = None) -> Published:
    """Publish variant_dir as the next version with `lineage` (and any other manifest keys in
    extra); with `canary`, make it the canary at that percentage beside the version serving now."""
    base_path = normalize_base_path(base_path)
    storage = storage_for(base_path)
    staged = stage(variant_dir, base_path, None, storage, lineage=lineage, **(extra or {}))
    version = staged.version
    info = None
    try:
        if canary is not None and url:
            nothing = "; nothing was published"
            routing = _admin(url, token, "GET", f"/v1/admin/models/{model_name}", after=nothing)
            stable = routing.get("labels", {}).get("stable") or routing.get("default_version") or parent
            _admin(url, token, "POST", f"/v1/admin/models/{model_name}/labels", {"labels": {"stable": stable}},
                   after=nothing)
            info = {"version": version, "weight": canary, "stable": stable, "via": f"management API at {url}"}
        elif canary is not None:
            store = FileRoutingStore(storage, base_path)
            state, _ = store.read()
            stable = (state.labels.get("stable") if state else None) or parent

            def fn(st):
                return st.with_changes(labels={**st.labels, "stable": stable, "canary": version},
                                       canary_weight=float(canary))

            routing_store.update(store, fn)
            info = {"version": version, "weight": canary, "stable": stable, "via": f"routing store {store.path}"}
    except BaseException:
        storage.remove_tree(staged.path)
        raise
    path = commit(staged)
    if canary is not None and url:
        _wait_seen(url, model_name, version)
        _admin(url, token, "POST", f"/v1/admin/models/{model_name}/canary", {"version": version, "weight": canary},
               after=f"; version {version} was published at {path} but is not the canary (version {stable} serves)")
    return Published(version, path, info)
