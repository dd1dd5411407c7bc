"""hotserve's own protobuf schema for the TF Serving and KServe V2 / Triton gRPC APIs.

The .proto files live next to their generated *_pb2.py modules under canonical upstream paths
(hotserve/protos/tensorflow_serving/apis/predict.proto -> ...apis.predict_pb2); regenerate with
scripts/gen_protos.py. Message full names match upstream, so they interoperate on the wire and
in Any, but they are registered in a private descriptor pool (see _pool) so they can share a
process with TensorFlow and tensorflow-serving-api.

Helpers: tensors (numpy <-> TensorProto), tfrecord (TFRecord reader for warm-up files).
"""
