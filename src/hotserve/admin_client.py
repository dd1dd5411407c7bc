"""Command-line client for the management API: `hotserve rollback|pin|label|canary|routing`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from hotserve import envvars


def call(url: str, token: str | None, method: str, path: str, body: dict | bytes | None = None, timeout: float = 120.0,
         content_type: str = "application/json") -> dict:
    # Imported here: urllib.request brings http.client, email and ssl (8.5 MiB), and every
    # `hotserve` process builds this module's subcommands, the serving supervisor included.
    import urllib.error
    import urllib.request

    data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", "")
        except ValueError:
            message = ""
        raise SystemExit(f"hotserve: {method} {path} failed with HTTP {exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"hotserve: cannot reach {url}: {exc.reason}") from None


def _print_routing(r: dict) -> None:
    canary = r.get("canary")
    print(f"model {r['model']}: default version {r['default_version']}, serving {r['served_versions']}")
    print(f"  labels {r['labels']}" + (f" (requested {r['requested_labels']})" if r["requested_labels"] != r["labels"] else ""))
    if canary:
        print(f"  canary version {canary['version']} at {canary['weight']:g}%")
    if r.get("pinned") is not None:
        print(f"  pinned to version {r['pinned']} (new versions wait; clear with: hotserve pin {r['model']} --clear)")
    if r.get("fleet_target") is not None:
        print(f"  fleet version {r['fleet_target']} (set by hotserve rollout); prepared, not routed: {r.get('prepared', [])}")
    if r.get("rolled_back"):
        print(f"  rolled back (kept out until their directories change): {r['rolled_back']}")


def add_commands(sub) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("model")
        p.add_argument("--url", default="http://localhost:8501", help="the server's REST address (default http://localhost:8501)")
        p.add_argument("--token", default=None, help=f"admin token (default: ${envvars.ADMIN_TOKEN})")

    p = sub.add_parser("rollback", help="serve an earlier version now (pins it; instant if it is still loaded), "
                                        "or with --revision V.R an earlier parameter revision of a loaded version")
    common(p)
    p.add_argument("--to", type=int, default=None, help="version to serve (default: the one served before the current)")
    p.add_argument("--revision", default=None, metavar="V.R",
                   help="parameter revision to serve, e.g. 7.3: revision 3 of version 7 (instant within its kept history)")
    p.set_defaults(func=_rollback)

    p = sub.add_parser("update", help="write a parameter delta into a loaded version (safetensors or JSON file)")
    common(p)
    p.add_argument("--version", type=int, required=True, help="the loaded version to update")
    p.add_argument("delta", help="a .safetensors file (tensors NAME, or NAME.rows + NAME.values) or a JSON file "
                                 '{"updates": [{"name", "values", "rows"}]}')
    p.add_argument("--expect_revision", "--expect-revision", type=int, default=None,
                   help="refuse (409) unless the version serves this revision now")
    p.set_defaults(func=_update)

    p = sub.add_parser("compact", help="fold a version's parameter deltas into a new full version")
    common(p)
    p.add_argument("--version", type=int, default=None, help="version to compact (default: the one serving)")
    p.set_defaults(func=_compact)

    p = sub.add_parser("pin", help="serve one version only, whatever newer versions appear")
    common(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("version", nargs="?", type=int)
    g.add_argument("--clear", action="store_true", help="follow the version policy again")
    p.set_defaults(func=lambda a: _run(a, "pin", {"version": None if a.clear else a.version}))

    p = sub.add_parser("label", help="move labels: hotserve label m stable=3 canary=4 (canary= removes)")
    common(p)
    p.add_argument("assignments", nargs="+", metavar="LABEL=VERSION")
    p.set_defaults(func=_label)

    p = sub.add_parser("canary", help="send a share of default traffic to a version beside the stable one")
    common(p)
    p.add_argument("--version", type=int, default=None, help="canary version (omit with --stop)")
    p.add_argument("--weight", type=float, default=None, help="percent of default traffic (e.g. 10)")
    p.add_argument("--stop", action="store_true", help="end the canary; stable serves everything")
    p.set_defaults(func=_canary)

    p = sub.add_parser("routing", help="show what a model serves: default version, labels, canary, pin")
    common(p)
    p.set_defaults(func=lambda a: _show(a))


def token_of(args: argparse.Namespace) -> str | None:
    """--token, else $HOTSERVE_ADMIN_TOKEN."""
    return args.token or os.environ.get(envvars.ADMIN_TOKEN)


def _run(args, action: str, body: dict) -> int:
    _print_routing(call(args.url, token_of(args), "POST", f"/v1/admin/models/{args.model}/{action}", body))
    return 0


def _show(args) -> int:
    _print_routing(call(args.url, token_of(args), "GET", f"/v1/admin/models/{args.model}"))
    try:  # continuous learning, when the server has a feedback store
        learning = call(args.url, None, "GET", f"/v1/models/{args.model}/learning", timeout=10.0)
    except SystemExit:
        return 0
    _print_learning(learning)
    return 0


def _print_learning(s: dict) -> None:
    ex, pl, fr, ln = s["examples"], s["prediction_log"], s["freshness"], s.get("learner")
    print(f"  learning: store {s['store']}; prediction log sampling {pl['sampling_rate']:g}, "
          f"{pl['logged_total']} logged, {pl['dropped_total']} dropped")
    print(f"    examples: {ex['stored']} stored, {ex['joined_total']} joined to predictions, "
          f"{ex['pending_predictions']} predictions awaiting a label; last watermark {ex['last_watermark']}")
    if ln is None:
        print("    learner: none has run against this store")
    else:
        cand = ln.get("last_candidate") or {}
        print(f"    learner: watermark {ln['watermark']}, parent version {ln['parent_version']}, "
              f"{'alive' if ln['alive'] else 'not seen recently'}")
        if cand:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in (cand.get("candidate_metrics") or {}).items()
                                if isinstance(v, (int, float)))
            what = f"version {cand['version']}" if cand.get("version") is not None else cand.get("reason", "")
            print(f"    last candidate: {cand['outcome']} ({what}); {metrics}")
    if fr["count"]:
        print(f"    freshness (label stored -> served): p50 {fr['p50_seconds']:.2f}s, p99 {fr['p99_seconds']:.2f}s "
              f"over {fr['count']} learned version(s)")


def _rollback(args) -> int:
    if args.revision is None:
        return _run(args, "rollback", {"to": args.to})
    r = call(args.url, token_of(args), "POST", f"/v1/admin/models/{args.model}/rollback", {"revision": args.revision})
    print(f"model {r['model']} version {r['version']}: serving revision {r['revision']} ({r['applied_ms']:.1f} ms)")
    return 0


def _update(args) -> int:
    with open(args.delta, "rb") as f:
        data = f.read()
    binary = not args.delta.lower().endswith(".json")
    path = f"/v1/models/{args.model}/versions/{args.version}:update_parameters"
    if args.expect_revision is not None:
        path += f"?expect_revision={args.expect_revision}"
    r = call(args.url, token_of(args), "POST", path, data,
             content_type="application/x-safetensors" if binary else "application/json")
    print(f"model {r['model']} version {r['version']}: serving revision {r['revision']} (applied in {r['applied_ms']:.1f} ms)")
    return 0


def _compact(args) -> int:
    r = call(args.url, token_of(args), "POST", f"/v1/admin/models/{args.model}/compact", {"version": args.version},
             timeout=600.0)
    src = r["from"]
    print(f"model {r['model']}: published version {r['version']} from version {src['version']} revision {src['revision']}")
    return 0


def _label(args) -> int:
    changes: dict[str, int | None] = {}
    for item in args.assignments:
        label, sep, version = item.partition("=")
        if not sep or not label:
            print(f"hotserve label: {item!r} is not LABEL=VERSION", file=sys.stderr)
            return 2
        if version and not version.isdigit():
            print(f"hotserve label: {item!r}: the version must be a number (or empty to remove the label)", file=sys.stderr)
            return 2
        changes[label] = int(version) if version else None
    return _run(args, "labels", {"labels": changes})


def _canary(args) -> int:
    if args.stop:
        return _run(args, "canary", {"version": None})
    if args.version is None:
        print("hotserve canary: give --version (and optionally --weight), or --stop", file=sys.stderr)
        return 2
    return _run(args, "canary", {"version": args.version, "weight": args.weight})
