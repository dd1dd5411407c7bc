"""ONNX Runtime servable: one InferenceSession per version, with live parameters.

At load the graph is split into what hotserve holds and what the session runs:
- embedding tables (float initializers read only by Gather on axis 0 with indices that are
  graph inputs) leave the graph: each such Gather's output becomes a graph input, and hotserve
  gathers the rows itself (`TableView.take`, a numpy take plus the revision's overlay). A row
  delta to a 1,000,000 x 64 table then writes an overlay of its rows; nothing copies or
  rebuilds the table, and no session is rebuilt.
- every other float initializer stays an initializer of the session, but its data is ours: the
  graph is serialized without it (marked external) and the session gets our numpy arrays through
  `SessionOptions.add_external_initializers`, so ORT constant-folds and prepacks as usual (no
  inference cost, measured in docs/parameters.md). A delta touching one of them builds a new
  session from the small stripped graph (about a millisecond for an MLP) for the new state;
  requests bound to the old state keep the old session.

A graph that cannot be read this way (onnx cannot parse it, external data over 2 GiB...) is
loaded as before and reports why it takes no deltas.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np

from hotserve import dtypes
from hotserve.errors import LoadError
from hotserve.runtimes import onnx_proto
from hotserve.runtimes.base import DEFAULT_SIGNATURE, Signature, TensorSpec, get_signature
from hotserve.runtimes.parameters import ParamSpec, ParamState, TableStore, TableView

log = logging.getLogger("hotserve.runtimes")

MODEL_FILE = "model.onnx"
_IN_MEMORY = "hotserve-in-memory"  # the external-data location of initializers hotserve supplies


def _shape(dims: list) -> tuple[int, ...] | None:
    if dims is None:
        return None
    # Symbolic ('batch') and unknown (None) dims are both dynamic to a client.
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims)


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, dtypes.from_onnx_type(arg.type), _shape(arg.shape))


class _Split:
    """The graph with tables lifted out and float initializers supplied by us."""

    def __init__(self, path: str) -> None:
        pb = onnx_proto.pb2()
        model = onnx_proto.load_model(path)
        graph = model.graph
        inputs = {i.name for i in graph.input}
        inits = {i.name: i for i in graph.initializer}
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        # Names read by subgraphs (If/Loop bodies) are left alone: we do not rewrite inside them.
        GRAPH, GRAPHS = pb.AttributeProto.GRAPH, pb.AttributeProto.GRAPHS
        sub_reads = {n for node in graph.node for a in node.attribute if a.type in (GRAPH, GRAPHS)
                     for g in ([a.g] if a.type == GRAPH else list(a.graphs)) for sn in g.node for n in sn.input}
        self.tables: dict[str, np.ndarray] = {}
        self.dense: dict[str, np.ndarray] = {}
        self.gathers: list[tuple[str, str, str]] = []  # (gather output = new graph input, table, indices input)
        drop_nodes = []
        for name, init in inits.items():
            if name in inputs or name in sub_reads:
                continue  # an initializer that is also an input may be overridden by clients: not ours
            if onnx_proto.float_dtype(init.data_type) is None:
                continue
            users = consumers.get(name, [])
            gathers = [n for n in users if n.op_type == "Gather" and n.input[0] == name and n.input[1] in inputs
                       and n.input[1] not in inits and all(a.name != "axis" or a.i == 0 for a in n.attribute)]
            if len(init.dims) >= 2 and users and len(gathers) == len(users):
                self.tables[name] = onnx_proto.float_array(init)
                for n in gathers:
                    self.gathers.append((n.output[0], name, n.input[1]))
                    drop_nodes.append(n)
            else:
                self.dense[name] = onnx_proto.float_array(init)
        in_types = {i.name: i.type.tensor_type for i in graph.input}
        for node in drop_nodes:
            graph.node.remove(node)
        for out, table, idx in self.gathers:
            t = self.tables[table]
            itype = in_types[idx]
            if itype.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in itype.shape.dim]
                shape = dims + list(t.shape[1:])
            else:
                shape = None
            graph.input.append(onnx_proto.tensor_value_info(out, onnx_proto.float_type(t.dtype), shape))
            for vi in list(graph.value_info):
                if vi.name == out:
                    graph.value_info.remove(vi)
        for name in self.tables:
            graph.initializer.remove(inits[name])
        for name in self.dense:
            init = inits[name]
            init.ClearField("raw_data")
            for f in ("float_data", "double_data", "int32_data"):
                init.ClearField(f)
            del init.external_data[:]
            for k, v in (("location", _IN_MEMORY), ("offset", "0"), ("length", str(self.dense[name].nbytes))):
                e = init.external_data.add()
                e.key, e.value = k, v
            init.data_location = pb.TensorProto.EXTERNAL
        self.graph_bytes = model.SerializeToString()


class OnnxServable:
    runtime = "onnxruntime"

    def __init__(self, version_dir: str, intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
        import onnxruntime as ort

        self._ort = ort
        path = os.path.join(version_dir, MODEL_FILE)
        self._path = path
        self._intra, self._inter = intra_op_threads, inter_op_threads
        self.param_specs: dict[str, ParamSpec] = {}
        self.not_updatable = ""
        self._gathers: tuple[tuple[str, str, str], ...] = ()
        split = None
        try:
            split = _Split(path)
        except Exception as exc:  # onnx cannot read what onnxruntime might: serve it, without deltas
            self.not_updatable = f"the graph could not be split for live parameters ({type(exc).__name__}: {exc})"
        try:
            if split is not None:
                self._graph = split.graph_bytes
                session = self._session(split.dense)
            else:
                self._graph = path
                session = ort.InferenceSession(path, self._options(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise LoadError(f"onnxruntime could not load {path}: {exc}") from exc
        hosted = {out for out, _, _ in split.gathers} if split is not None else set()
        try:
            inputs = {a.name: _spec(a) for a in session.get_inputs() if a.name not in hosted}
            outputs = {a.name: _spec(a) for a in session.get_outputs()}
        except ValueError as exc:
            raise LoadError(f"{path}: {exc}") from exc
        self._output_names = list(outputs)
        self.signatures = {DEFAULT_SIGNATURE: Signature(inputs=inputs, outputs=outputs)}
        tensors: dict = {}
        if split is not None:
            self._gathers = tuple(split.gathers)
            for name, arr in split.dense.items():
                arr.flags.writeable = False
                self.param_specs[name] = ParamSpec(name, arr.dtype, tuple(arr.shape), "dense")
                tensors[name] = arr
            for name, arr in split.tables.items():
                self.param_specs[name] = ParamSpec(name, arr.dtype, tuple(arr.shape), "table")
                tensors[name] = TableView(TableStore(arr))
        # The state plain predict() uses (gates at load); core/parameters.py moves it with each revision.
        self.current = ParamState(tensors, session)

    # -- sessions ---------------------------------------------------------------------------
    def _options(self):
        opts = self._ort.SessionOptions()
        # 0 lets onnxruntime pick (one thread per core); the operator can pin it.
        opts.intra_op_num_threads = self._intra
        opts.inter_op_num_threads = self._inter
        opts.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return opts

    def _session(self, dense: Mapping[str, np.ndarray]):
        opts = self._options()
        if dense:
            names = list(dense)
            values = [self._ort.OrtValue.ortvalue_from_numpy(np.require(dense[n], requirements="C")) for n in names]
            opts.add_external_initializers(names, values)
        return self._ort.InferenceSession(self._graph, opts, providers=["CPUExecutionProvider"])

    # -- live parameters (core/parameters.py) -----------------------------------------------
    def state_extra(self, old: ParamState, tensors: dict, touched: set[str]):
        """The session for a new state: the old one unless a dense tensor changed."""
        if not any(self.param_specs[n].kind == "dense" for n in touched):
            return old.extra
        return self._session({n: tensors[n] for n, s in self.param_specs.items() if s.kind == "dense"})

    def predict_state(self, state: ParamState, inputs: Mapping[str, np.ndarray],
                      signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        get_signature(self, signature_name)
        feed = dict(inputs)
        tensors = state.tensors
        for out, table, idx in self._gathers:
            feed[out] = tensors[table].take(inputs[idx])
        results = state.extra.run(self._output_names, feed)
        return dict(zip(self._output_names, results))

    def predict(self, inputs: Mapping[str, np.ndarray], signature_name: str = DEFAULT_SIGNATURE) -> dict[str, np.ndarray]:
        return self.predict_state(self.current, inputs, signature_name)

    def initial_values(self, names: list[str]) -> dict[str, np.ndarray]:
        """The named tensors as the version's model.onnx holds them (a rollback beyond the kept
        history; reads the file once, keeps only these tensors)."""
        wanted = set(names)
        model = onnx_proto.load_model(self._path)
        out = {i.name: onnx_proto.float_array(i) for i in model.graph.initializer if i.name in wanted}
        del model
        return out

    def export_state(self, state: ParamState, version_dir: str, out_dir: str) -> None:
        """Write model.onnx with `state`'s values in its initializers (compaction)."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(os.path.join(version_dir, MODEL_FILE))
        for init in model.graph.initializer:
            if init.name in state.tensors:
                init.CopyFrom(numpy_helper.from_array(np.require(state.value(init.name), requirements="C"), init.name))
        onnx.save(model, os.path.join(out_dir, MODEL_FILE))

    def unload(self) -> None:
        # Dropping the last references frees the session's arena and the tables.
        self.current = None
        self._graph = None
