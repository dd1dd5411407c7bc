"""S3 client choice for hotserve's s3:// store: boto3 against fsspec + s3fs, per request kind.

Starts a moto S3 server on 127.0.0.1 (tests/moto_server.py), fills a prefix the shape of a
model repository (versions x files), and times the four requests a server makes: LIST (one
recursive listing of the base path: what every poll costs), HEAD, GET of a small object (a
manifest) and PUT of a small object (the routing state), each N times per client, same server,
same run. Prints medians and p90 in milliseconds and the s3fs/boto3 ratio (> 1: boto3 faster).

    .venv/bin/python bench/storage_s3.py            # 200 requests per cell
    .venv/bin/python bench/storage_s3.py --n 50     # smoke run

Needs the s3 extra and the test extra (moto[server]) plus s3fs: pip install s3fs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from moto_server import ENV, MotoServer  # noqa: E402

BUCKET = "bench"
PREFIX = "models/m"


def fill(client, versions: int, files: int) -> None:
    client.create_bucket(Bucket=BUCKET)
    for v in range(1, versions + 1):
        for f in range(files):
            client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{v}/file{f}.bin", Body=b"x" * 1024)
        client.put_object(Bucket=BUCKET, Key=f"{PREFIX}/{v}/hotserve_manifest.json", Body=b"{}" * 512)


def time_ops(ops: dict, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, fn in ops.items():
        fn()  # warm: connection set up, credentials resolved
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
        out[name] = samples
    return out


def boto3_ops(endpoint: str) -> dict:
    import boto3
    from botocore.config import Config

    c = boto3.client("s3", endpoint_url=endpoint, region_name=ENV["AWS_REGION"],
                     config=Config(s3={"addressing_style": "path"}))
    key = f"{PREFIX}/1/hotserve_manifest.json"

    def list_tree():
        pages = c.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=PREFIX + "/")
        return sum(len(p.get("Contents", [])) for p in pages)

    return {
        "LIST (recursive)": list_tree,
        "HEAD": lambda: c.head_object(Bucket=BUCKET, Key=key),
        "GET 1 KiB": lambda: c.get_object(Bucket=BUCKET, Key=key)["Body"].read(),
        "PUT 1 KiB": lambda: c.put_object(Bucket=BUCKET, Key=f"{PREFIX}/.state-boto3", Body=b"y" * 1024),
    }


def s3fs_ops(endpoint: str) -> dict:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint, "region_name": ENV["AWS_REGION"]},
                           use_listings_cache=False, skip_instance_cache=True)
    key = f"{BUCKET}/{PREFIX}/1/hotserve_manifest.json"
    return {
        "LIST (recursive)": lambda: len(fs.find(f"{BUCKET}/{PREFIX}", detail=True)),
        "HEAD": lambda: fs.info(key, refresh=True) if "refresh" in fs.info.__code__.co_varnames else fs.info(key),
        "GET 1 KiB": lambda: fs.cat_file(key),
        "PUT 1 KiB": lambda: fs.pipe_file(f"{BUCKET}/{PREFIX}/.state-s3fs", b"y" * 1024),
    }


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="requests per cell (default 200)")
    ap.add_argument("--versions", type=int, default=5)
    ap.add_argument("--files", type=int, default=20, help="files per version (default 20)")
    args = ap.parse_args()
    os.environ.update(ENV)
    with tempfile.TemporaryDirectory() as tmp:
        server = MotoServer(os.path.join(tmp, "moto.log")).start()
        try:
            os.environ["AWS_ENDPOINT_URL"] = server.endpoint
            fill(server.client(), args.versions, args.files)
            results = {"boto3": time_ops(boto3_ops(server.endpoint), args.n),
                       "s3fs": time_ops(s3fs_ops(server.endpoint), args.n)}
        finally:
            server.stop()
    objects = args.versions * (args.files + 1)
    print(f"\nS3 requests against moto on 127.0.0.1 ({objects} objects under the prefix, {args.n} requests per cell; "
          f"load average {os.getloadavg()[0]:.2f})\n")
    print(f"| request | boto3 median ms | boto3 p90 | s3fs median ms | s3fs p90 | s3fs / boto3 |")
    print("|---|---:|---:|---:|---:|---:|")
    for op in results["boto3"]:
        b, s = results["boto3"][op], results["s3fs"][op]
        bm, sm = statistics.median(b), statistics.median(s)
        print(f"| {op} | {bm:.2f} | {pct(b, 0.9):.2f} | {sm:.2f} | {pct(s, 0.9):.2f} | {sm / bm:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
