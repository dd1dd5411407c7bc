#!/usr/bin/env python
"""Regenerate hotserve's *_pb2.py / *_pb2.pyi from the .proto files under src/hotserve/protos.

    python scripts/gen_protos.py           # rewrite the generated files in place
    python scripts/gen_protos.py --check   # exit 1 if the committed files are stale

Needs grpcio-tools (development only: the generated code is committed so that installing
hotserve does not). Each .proto sits next to its generated module and protoc runs with
`-I src`, so import paths read "hotserve/protos/..." and modules import as hotserve.protos....

The generated modules are post-processed to register in hotserve.protos._pool.POOL instead
of protobuf's default pool: our messages reuse upstream full names (tensorflow.TensorProto...)
and would otherwise clash with TensorFlow / tensorflow-serving-api in the same process.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PROTOS = SRC / "hotserve" / "protos"

_HEADER_OLD = "# NO CHECKED-IN PROTOBUF GENCODE\n"
_HEADER_NEW = "# Post-processed by scripts/gen_protos.py: registers in hotserve.protos._pool.POOL.\n"
_POOL_IMPORT = (
    "from hotserve.protos._pool import POOL as _POOL\n"
    "from hotserve.protos._pool import build_file_module as _build_file_module\n"
)

# (pattern, replacement, required): each required rewrite must apply exactly once, so a
# change in protoc's output format fails loudly here instead of silently using the default pool.
_REWRITES: list[tuple[str, str, bool]] = [
    (re.escape(_HEADER_OLD), _HEADER_NEW, False),
    (r"from google\.protobuf import descriptor_pool as _descriptor_pool\n", "", True),
    (r"from google\.protobuf import symbol_database as _symbol_database\n", "", True),
    (r"\n_sym_db = _symbol_database\.Default\(\)\n", "\n", True),
    (r"# @@protoc_insertion_point\(imports\)\n", "# @@protoc_insertion_point(imports)\n" + _POOL_IMPORT, True),
    (r"_descriptor_pool\.Default\(\)\.AddSerializedFile\(", "_POOL.AddSerializedFile(", True),
    (r"_builder\.BuildTopDescriptorsAndMessages\(", "_build_file_module(", True),
]


def _post_process(path: Path) -> None:
    text = path.read_text()
    for pattern, replacement, required in _REWRITES:
        text, count = re.subn(pattern, replacement, text)
        if count > 1 or (required and count != 1):
            raise SystemExit(f"{path}: expected one match of {pattern!r}, found {count}; protoc output changed?")
    if "Default()" in text:
        raise SystemExit(f"{path}: still refers to a default pool/database after post-processing")
    path.write_text(text)


def _generate(out_dir: Path) -> list[Path]:
    """Run protoc on every .proto into out_dir (mirroring src/); return the generated files."""
    protos = sorted(PROTOS.rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTOS}")
    # `python -m grpc_tools.protoc` adds grpc_tools' bundled include dir (google/protobuf/*.proto).
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{SRC}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p.relative_to(SRC)) for p in protos),
    ]
    subprocess.run(cmd, cwd=SRC, check=True)
    generated = sorted(out_dir.rglob("*_pb2.py"))
    for path in generated:
        _post_process(path)
    return generated + sorted(out_dir.rglob("*_pb2.pyi"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify that the committed files are current")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        generated = {p.relative_to(out_dir) for p in _generate(out_dir)}
        committed = {p.relative_to(SRC) for p in PROTOS.rglob("*_pb2.py*") if p.suffix in (".py", ".pyi")}

        stale = sorted(
            str(rel)
            for rel in generated | committed
            if rel not in generated
            or rel not in committed
            or not filecmp.cmp(out_dir / rel, SRC / rel, shallow=False)
        )
        if args.check:
            if stale:
                print("stale generated files (run scripts/gen_protos.py):\n  " + "\n  ".join(stale))
                return 1
            print(f"{len(generated)} generated files are up to date")
            return 0

        for rel in committed - generated:  # left over from a removed .proto
            (SRC / rel).unlink()
        for rel in generated:
            shutil.copyfile(out_dir / rel, SRC / rel)
        print(f"wrote {len(generated)} files ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
