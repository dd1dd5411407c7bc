"""The private descriptor pool every hotserve *_pb2 module registers its file in.

Our protos reuse upstream full names (tensorflow.TensorProto, inference.ModelInferRequest...)
so that they are wire- and Any-compatible with TF Serving and Triton clients. TensorFlow,
tensorflow-serving-api and tritonclient register those same names, from different files, in
protobuf's default pool; sharing that pool would make whichever is imported second fail with
a "duplicate symbol"/"conflict register" error. A pool of our own sidesteps that entirely.

Consequences for callers:
- Any.Pack/Unpack work as usual (they go by full name, not by pool).
- text_format / json_format only need the pool to expand Any values: pass descriptor_pool=POOL.
- Never look our messages up through symbol_database.Default() or descriptor_pool.Default().
"""

from __future__ import annotations

from typing import Any as _AnyType

from google.protobuf import any_pb2, descriptor_pool, message_factory, reflection, wrappers_pb2
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.internal import enum_type_wrapper
from google.protobuf.message import Message

POOL = descriptor_pool.DescriptorPool()

# Well-known types our protos import. Each pool resolves imports only within itself, so the
# default pool's copies are invisible here; their serialized form is identical everywhere.
_WKT_FILES = [POOL.AddSerializedFile(m.DESCRIPTOR.serialized_pb).name for m in (any_pb2, wrappers_pb2)]
# Give those types classes now: the pure-python backend builds map values (map<string, Any>)
# from an existing class and would otherwise fail; under upb this is merely eager.
message_factory.GetMessageClassesForFiles(_WKT_FILES, POOL)


def build_file_module(file_des: FileDescriptor, module_name: str, module: dict[str, _AnyType]) -> None:
    """Populate a generated module's globals with its enums, services and message classes.

    Stands in for google.protobuf.internal.builder.BuildTopDescriptorsAndMessages, which also
    registers every class in the *default* symbol database; under the pure-python protobuf
    backend that registration raises on names TensorFlow already registered.
    """

    def build_message(msg_des, prefix: str) -> type[Message]:
        attrs: dict[str, _AnyType] = {
            name: build_message(nested, prefix + msg_des.name + ".")
            for name, nested in msg_des.nested_types_by_name.items()
        }
        attrs["DESCRIPTOR"] = msg_des
        attrs["__module__"] = module_name
        attrs["__qualname__"] = prefix + msg_des.name
        return reflection.GeneratedProtocolMessageType(msg_des.name, (Message,), attrs)

    for name, enum_des in file_des.enum_types_by_name.items():
        module["_" + name.upper()] = enum_des
        module[name] = enum_type_wrapper.EnumTypeWrapper(enum_des)
        for value in enum_des.values:
            module[value.name] = value.number
    for name, ext_des in file_des.extensions_by_name.items():
        module[name.upper() + "_FIELD_NUMBER"] = ext_des.number
        module[name] = ext_des
    for name, service_des in file_des.services_by_name.items():
        module["_" + name.upper()] = service_des
    for name, msg_des in file_des.message_types_by_name.items():
        module[name] = build_message(msg_des, "")
