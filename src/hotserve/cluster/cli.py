"""`hotserve fleet status` and `hotserve rollout`: the fleet's command line (talks to ZooKeeper only)."""

from __future__ import annotations

import argparse
import json
import os
import sys

ENV_VAR = "HOTSERVE_FLEET"


def add_commands(sub) -> None:
    def fleet_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--fleet", default=os.environ.get(ENV_VAR), metavar="zk://HOST:PORT/PATH",
                       help=f"the fleet's ZooKeeper URL, as given to hotserve serve --fleet (default: ${ENV_VAR})")

    fleet = sub.add_parser("fleet", help="a fleet of replicas coordinated through ZooKeeper (docs/fleet.md)")
    fleet_sub = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    st = fleet_sub.add_parser("status", help="live replicas, what each serves and prepares, the fleet's versions")
    fleet_flag(st)
    st.add_argument("--json", action="store_true", help="print the raw documents as JSON")
    st.set_defaults(func=_status)
    nc = fleet_sub.add_parser("nginx-config", help="print an nginx config (REST + gRPC) for the fleet's live replicas",
                              description="Renders hotserve's nginx template (keep-alive upstreams, passive health "
                                          "checks, retries) with one server line per replica: the fleet's live "
                                          "members, or the --rest/--grpc lists.")
    fleet_flag(nc)
    nc.add_argument("--rest", nargs="+", default=None, metavar="HOST:PORT", help="REST addresses (instead of the fleet's)")
    nc.add_argument("--grpc", nargs="+", default=None, metavar="HOST:PORT", help="gRPC addresses (instead of the fleet's)")
    nc.add_argument("--listen_rest", "--listen-rest", default="8501", metavar="[ADDR:]PORT", help="default 8501")
    nc.add_argument("--listen_grpc", "--listen-grpc", default="8500", metavar="[ADDR:]PORT", help="default 8500")
    nc.set_defaults(func=_nginx_config)
    fleet.set_defaults(func=lambda a: (fleet.print_help(), 2)[1])

    ro = sub.add_parser("rollout", help="two-phase fleet rollout: every replica prepares the version, then one write "
                                        "flips them all",
                        description="Phase 1: every live replica loads, gates and warms up the version without "
                                    "routing to it. Phase 2: once all (or --min_ready) are ready, one ZooKeeper "
                                    "write flips the fleet's serving version and every replica swaps. A replica "
                                    "failing phase 1 (or a timeout) aborts before anyone switches.")
    ro.add_argument("model")
    fleet_flag(ro)
    what = ro.add_mutually_exclusive_group(required=True)
    what.add_argument("--version", type=int, help="the version to serve fleet-wide")
    what.add_argument("--rollback", action="store_true",
                      help="serve the fleet's previous version again (instant while it is still kept loaded)")
    ro.add_argument("--min_ready", "--min-ready", type=int, default=None, metavar="N",
                    help="flip once N replicas prepared the version (at the timeout at the latest); the others fail "
                         "readiness until they have it (default: every live replica)")
    ro.add_argument("--timeout", type=float, default=120.0, metavar="S", help="phase 1 bound in seconds (default 120)")
    ro.add_argument("--keep_previous_seconds", "--keep-previous-seconds", type=float, default=300.0, metavar="S",
                    help="keep the previous version loaded (not routed) this long for an instant rollback (default 300)")
    ro.add_argument("--json", action="store_true", help="print the result as JSON")
    ro.set_defaults(func=_rollout)


def _connect(args, command: str):
    from hotserve.cluster import zk

    if not args.fleet:
        print(f"hotserve {command}: give --fleet zk://host:port/path (or set ${ENV_VAR})", file=sys.stderr)
        return None, None
    try:
        address = zk.FleetAddress.parse(args.fleet)
        return zk.connect(address, timeout=10.0), address
    except ValueError as exc:
        print(f"hotserve {command}: {exc}", file=sys.stderr)
    except zk.FleetUnavailable as exc:
        print(f"hotserve {command}: {exc}", file=sys.stderr)
    return None, None


def _status(args) -> int:
    from hotserve.cluster import zk
    from hotserve.cluster.status import format_status, read_status

    client, address = _connect(args, "fleet status")
    if client is None:
        return 2 if not args.fleet else 1
    try:
        status = read_status(client, address)
    except zk.FleetUnavailable as exc:
        print(f"hotserve fleet status: {exc}", file=sys.stderr)
        return 1
    finally:
        zk.close(client)
    print(json.dumps(status.to_dict(), indent=1, sort_keys=True) if args.json else format_status(status))
    return 0


def _rollout(args) -> int:
    from dataclasses import asdict

    from hotserve.cluster import zk
    from hotserve.cluster.rollout import Rollout, RolloutOptions

    for name, value in (("--timeout", args.timeout), ("--keep_previous_seconds", args.keep_previous_seconds)):
        if value < 0:
            print(f"hotserve rollout: {name} must be >= 0, got {value:g}", file=sys.stderr)
            return 2
    if args.version is not None and args.version < 0:
        print(f"hotserve rollout: --version must be a version number >= 0, got {args.version}", file=sys.stderr)
        return 2
    if args.min_ready is not None and args.min_ready < 1:
        print(f"hotserve rollout: --min_ready must be >= 1, got {args.min_ready}", file=sys.stderr)
        return 2
    client, address = _connect(args, "rollout")
    if client is None:
        return 2 if not args.fleet else 1
    options = RolloutOptions(min_ready=args.min_ready, prepare_timeout=args.timeout,
                             keep_previous_seconds=args.keep_previous_seconds)
    say = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    try:
        rollout = Rollout(client, address, args.model, options, say, who=f"cli@{os.uname().nodename}:{os.getpid()}")
        result = rollout.rollback() if args.rollback else rollout.run(args.version)
    except zk.FleetUnavailable as exc:
        print(f"hotserve rollout: {exc}", file=sys.stderr)
        return 1
    finally:
        zk.close(client)
    if args.json:
        print(json.dumps(asdict(result), indent=1, sort_keys=True))
    else:
        print(f"{result.outcome}: {result.message}")
    return 0 if result.ok else 1


def _nginx_config(args) -> int:
    from hotserve.cluster import nginx, zk
    from hotserve.cluster.view import FleetView

    rest, grpc = args.rest, args.grpc
    if rest is None or grpc is None:
        client, address = _connect(args, "fleet nginx-config")
        if client is None:
            return 2 if not args.fleet else 1
        try:
            live_rest, live_grpc = nginx.from_members(FleetView(client, address).read())
        except zk.FleetUnavailable as exc:
            print(f"hotserve fleet nginx-config: {exc}", file=sys.stderr)
            return 1
        finally:
            zk.close(client)
        rest, grpc = rest or live_rest, grpc or live_grpc
    try:
        print(nginx.render(rest, grpc, args.listen_rest, args.listen_grpc), end="")
    except ValueError as exc:
        print(f"hotserve fleet nginx-config: {exc}", file=sys.stderr)
        return 2
    return 0
