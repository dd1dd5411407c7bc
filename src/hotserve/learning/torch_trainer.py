"""The built-in PyTorch trainer: incremental training of a torch module, served as ONNX.

    hotserve learn ... --trainer hotserve.learning.torch_trainer:TorchTrainer \
        --trainer_option module=hotserve.learning.ctr:make --trainer_option loss=bce

`module` names a factory returning an `nn.Module` whose `forward` takes the model's inputs
positionally, in the order of its `input_names` (the served signature's input names), and
returns the one output tensor named `output_name`; `example_inputs()` returns a dict of small
sample inputs for the first export. Options `module.<key>=<value>` go to the factory.

Export is fast: the first export runs torch.onnx.export once; after that, and whenever the
trainer loaded a served version, a new version is the served graph with its initializers
replaced by the new weights (state_dict names = initializer names, since the graph is exported
without constant folding). bench/learning.py measures both; see docs/learning.md.

Loading a version reads the weights back out of model.onnx, so the repository holds nothing
but the served graph. torch is an optional extra: `pip install torch==2.13.0` (the CPU wheel).
"""

from __future__ import annotations

import importlib
import os
import time
from typing import Any

import numpy as np

from hotserve.learning.trainer import Batch, binary_metrics

_OPSET = 17


def _factory(spec: str):
    module_name, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


class TorchTrainer:
    def __init__(self, module: str, loss: str = "bce", lr: str | float = 0.01, optimizer: str = "adam",
                 batch_size: str | int = 128, threads: str | int = 1, export: str = "initializers",
                 seed: str | int = 0, **options: str) -> None:
        import torch

        if loss not in ("bce", "mse"):
            raise ValueError(f"loss must be bce (click probabilities) or mse, got {loss!r}")
        if export not in ("initializers", "torch"):
            raise ValueError(f"export must be initializers (fast) or torch (torch.onnx.export each time), got {export!r}")
        self.torch = torch
        torch.set_num_threads(int(threads))  # the learner shares the machine with the server
        torch.manual_seed(int(seed))
        self.factory = _factory(module)
        self.module_spec = module
        self.module_kwargs = {k[len("module."):]: _number(v) for k, v in options.items() if k.startswith("module.")}
        unknown = [k for k in options if not k.startswith("module.")]
        if unknown:
            raise ValueError(f"unknown trainer option(s) {unknown}; module.<key>=<value> goes to the module factory")
        self.loss = loss
        self.lr = float(lr)
        self.optimizer_name = optimizer
        self.batch_size = int(batch_size)
        self.export_mode = export
        self.gate_metric = "log_loss" if loss == "bce" else "mse"
        self.higher_is_better = False
        self.net = None
        self.template = None  # the served graph (onnx.ModelProto) whose initializers we rewrite
        self.last_export = {"method": "", "seconds": 0.0}
        self._exported_state: dict[str, np.ndarray] = {}

    # -- the protocol --------------------------------------------------------------------------
    def load(self, version_dir: str | None) -> None:
        import onnx
        from onnx import numpy_helper

        net = self.factory(**self.module_kwargs)
        if version_dir is None:
            self.template = None
        else:
            proto = onnx.load(os.path.join(version_dir, "model.onnx"))
            inits = {i.name: i for i in proto.graph.initializer}
            state = net.state_dict()
            missing = [k for k in state if k not in inits]
            if missing:
                raise ValueError(f"{version_dir}/model.onnx has no initializer(s) {missing[:5]}: it was not exported "
                                 f"from {self.module_spec} without constant folding")
            net.load_state_dict({k: self.torch.from_numpy(numpy_helper.to_array(inits[k]).copy()) for k in state})
            self.template = proto
        self.net = net
        opt = self.torch.optim.Adam if self.optimizer_name == "adam" else self.torch.optim.SGD
        self.opt = opt(net.parameters(), lr=self.lr)
        self._exported_state = self._state()

    def update(self, batch: Batch) -> dict[str, float]:
        torch = self.torch
        self.net.train()
        total, n = 0.0, 0
        for mb in batch.slices(self.batch_size):
            pred = self._forward(mb)
            y = torch.as_tensor(self._label(mb), dtype=pred.dtype).reshape(pred.shape)
            w = torch.as_tensor(mb.weights, dtype=pred.dtype).reshape(-1, *([1] * (pred.dim() - 1)))
            if self.loss == "bce":
                per = torch.nn.functional.binary_cross_entropy(pred.clamp(1e-7, 1 - 1e-7), y, reduction="none")
            else:
                per = (pred - y) ** 2
            loss = (per * w).sum() / w.sum().clamp_min(1e-12) / max(1, per[0].numel())
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += loss.item() * len(mb)
            n += len(mb)
        return {"loss": total / max(1, n)}

    def evaluate(self, batch: Batch) -> dict[str, float]:
        if len(batch) == 0:
            return {}
        self.net.eval()
        with self.torch.no_grad():
            pred = self._forward(batch).numpy()
        y = self._label(batch)
        if self.loss == "bce":
            return binary_metrics(pred, y, batch.weights)
        err = (pred.reshape(len(batch), -1) - y.reshape(len(batch), -1)) ** 2
        return {"mse": float(np.average(err.mean(axis=1), weights=batch.weights))}

    def export(self, out_dir: str) -> None:
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "model.onnx")
        t0 = time.perf_counter()
        if self.template is not None and self.export_mode == "initializers":
            self._write_initializers(path)
            method = "initializers"
        else:
            self._torch_export(path)
            method = "torch.onnx.export"
        self.last_export = {"method": method, "seconds": time.perf_counter() - t0}
        self._exported_state = self._state()

    def delta(self) -> list[dict] | None:
        """Tensors changed since the last load/export, in issue 12's update shape: whole tensors
        as {"name", "values"}, embedding tables as {"name", "rows", "values"} of changed rows."""
        out = []
        state = self._state()
        self._pending_state = state  # becomes the baseline once the learner published it (commit_delta)
        for name, now in state.items():
            before = self._exported_state.get(name)
            if before is None or before.shape != now.shape:
                out.append({"name": name, "values": now})
                continue
            if now.ndim == 2 and now.shape[0] > 64:
                rows = np.nonzero(np.any(now != before, axis=1))[0]
                if len(rows):
                    out.append({"name": name, "rows": rows, "values": now[rows]})
            elif not np.array_equal(now, before):
                out.append({"name": name, "values": now})
        return out or None

    def commit_delta(self) -> None:
        """The last delta() was published: the next one is measured from it."""
        pending = getattr(self, "_pending_state", None)
        if pending is not None:
            self._exported_state, self._pending_state = pending, None

    def revert(self) -> None:
        """Back to the last published state (a refused candidate, with deltas)."""
        torch = self.torch
        self.net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self._exported_state.items()})
        opt = torch.optim.Adam if self.optimizer_name == "adam" else torch.optim.SGD
        self.opt = opt(self.net.parameters(), lr=self.lr)

    def apply_updates(self, updates) -> None:
        """Write a delta log entry's (name, values, rows) into the weights (replaying a served revision)."""
        torch = self.torch
        state = self.net.state_dict()
        with torch.no_grad():
            for name, values, rows in updates:
                if name not in state:
                    continue
                v = torch.from_numpy(np.asarray(values, dtype=np.float32).copy())
                if rows is None:
                    state[name].copy_(v.reshape(state[name].shape))
                else:
                    state[name][torch.from_numpy(np.asarray(rows, dtype=np.int64))] = v
        self._exported_state = self._state()

    # -- helpers -------------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.net.state_dict().items()}

    def _input_names(self, batch: Batch | None = None) -> list[str]:
        names = getattr(self.net, "input_names", None)
        if names:
            return list(names)
        if self.template is not None:
            inits = {i.name for i in self.template.graph.initializer}
            return [i.name for i in self.template.graph.input if i.name not in inits]
        return sorted(batch.inputs) if batch is not None else []

    def _output_name(self) -> str:
        name = getattr(self.net, "output_name", None)
        if name:
            return name
        if self.template is not None:
            return self.template.graph.output[0].name
        return "y"

    def _forward(self, batch: Batch):
        torch = self.torch
        return self.net(*[torch.as_tensor(batch.inputs[k]) for k in self._input_names(batch)])

    def _label(self, batch: Batch) -> np.ndarray:
        labels = batch.labels
        return labels.get(self._output_name(), next(iter(labels.values()))).astype(np.float32)

    def _write_initializers(self, path: str) -> None:
        """The served graph with new weights: each initializer's raw bytes replaced in place
        (the template is ours), then one serialization. No graph tracing, no copy of the proto."""
        from onnx import helper

        state = {k: v.detach().cpu().numpy() for k, v in self.net.state_dict().items()}
        for init in self.template.graph.initializer:
            arr = state.get(init.name)
            if arr is None:
                continue
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            init.raw_data = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
            del init.float_data[:]  # the weights live in raw_data only
        with open(path, "wb") as f:
            f.write(self.template.SerializeToString())

    def _torch_export(self, path: str) -> None:
        import io
        import warnings

        import onnx

        torch = self.torch
        names = self._input_names()
        sample = getattr(self.net, "example_inputs", None)
        if sample is None:
            raise ValueError(f"{self.module_spec}: the first export needs the module's example_inputs() "
                             "(a dict of input name -> tensor with a batch of 2)")
        inputs = sample()
        args = tuple(inputs[n] for n in names)
        out = self._output_name()
        axes = {n: {0: "batch"} for n in [*names, out]}
        self.net.eval()
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(self.net, args, buf, input_names=names, output_names=[out],
                              dynamic_axes=axes, do_constant_folding=False, opset_version=_OPSET, dynamo=False)
        model = onnx.load_from_string(buf.getvalue())
        model.ir_version = min(model.ir_version, 8)  # readable by every onnxruntime of the last years
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        self.template = model
