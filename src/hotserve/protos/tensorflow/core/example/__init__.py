"""Generated protobuf modules (see scripts/gen_protos.py); do not edit the *_pb2.py files."""
