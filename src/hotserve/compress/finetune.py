"""Brief fine-tuning of an ONNX model's weights with PyTorch (after pruning, to win back what
the removed units contributed).

The ONNX graph is run by a small torch interpreter with the float initializers as trainable
parameters, trained for a few epochs on the training split of the evaluation data, and the
trained values are written back into the same graph: the file keeps its structure, only
weights change. The interpreter covers what MLP-style graphs use (Gemm, MatMul, elementwise
arithmetic and activations, Softmax, LayerNormalization, Flatten, Reshape, Transpose); any
other operator is named in the error.

Needs PyTorch (`pip install torch==2.13.0`, the CPU wheel).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np


class FinetuneError(Exception):
    pass


def _torch():
    try:
        import torch
    except ImportError:
        raise FinetuneError("fine-tuning needs PyTorch: pip install torch==2.13.0 (the CPU wheel)") from None
    return torch


def _ops(torch) -> dict[str, Callable]:
    F = torch.nn.functional

    def gemm(x, a):
        A, B = x[0], x[1]
        if a.get("transA", 0):
            A = A.t()
        if a.get("transB", 0):
            B = B.t()
        y = a.get("alpha", 1.0) * (A @ B)
        if len(x) > 2 and x[2] is not None:
            y = y + a.get("beta", 1.0) * x[2]
        return y

    def layer_norm(x, a):
        axis = a.get("axis", -1)
        shape = x[0].shape[axis:] if axis != -1 else x[0].shape[-1:]
        return F.layer_norm(x[0], tuple(shape), x[1] if len(x) > 1 else None, x[2] if len(x) > 2 else None,
                            a.get("epsilon", 1e-5))

    def reshape(x, a):
        shape = [int(v) for v in x[1].tolist()]
        shape = [x[0].shape[i] if v == 0 and not a.get("allowzero", 0) else v for i, v in enumerate(shape)]
        return x[0].reshape(shape)

    def flatten(x, a):
        axis = a.get("axis", 1)
        return x[0].reshape(int(np.prod(x[0].shape[:axis])) if axis else 1, -1)

    def reduce_mean(x, a):
        axes = a.get("axes") or (x[1].tolist() if len(x) > 1 else None)
        keep = bool(a.get("keepdims", 1))
        return x[0].mean(dim=tuple(axes), keepdim=keep) if axes else x[0].mean()

    def gelu(x, a):
        return F.gelu(x[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none")

    return {
        "Gemm": gemm,
        "MatMul": lambda x, a: x[0] @ x[1],
        "Add": lambda x, a: x[0] + x[1],
        "Sub": lambda x, a: x[0] - x[1],
        "Mul": lambda x, a: x[0] * x[1],
        "Div": lambda x, a: x[0] / x[1],
        "Pow": lambda x, a: x[0] ** x[1],
        "Relu": lambda x, a: torch.relu(x[0]),
        "LeakyRelu": lambda x, a: F.leaky_relu(x[0], a.get("alpha", 0.01)),
        "Tanh": lambda x, a: torch.tanh(x[0]),
        "Sigmoid": lambda x, a: torch.sigmoid(x[0]),
        "Erf": lambda x, a: torch.erf(x[0]),
        "Sqrt": lambda x, a: torch.sqrt(x[0]),
        "Exp": lambda x, a: torch.exp(x[0]),
        "Neg": lambda x, a: -x[0],
        "Identity": lambda x, a: x[0],
        "Gelu": gelu,
        "Softmax": lambda x, a: torch.softmax(x[0], dim=a.get("axis", -1)),
        "LogSoftmax": lambda x, a: torch.log_softmax(x[0], dim=a.get("axis", -1)),
        "LayerNormalization": layer_norm,
        "Reshape": reshape,
        "Flatten": flatten,
        "Transpose": lambda x, a: x[0].permute(*a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].dim()))),
        "ReduceMean": reduce_mean,
    }


class TorchGraph:
    """An ONNX graph evaluated with torch ops; float initializers are nn.Parameters."""

    def __init__(self, model) -> None:
        from onnx import helper, numpy_helper

        torch = _torch()
        self.torch = torch
        self.model = model
        self.ops = _ops(torch)
        unsupported = sorted({n.op_type for n in model.graph.node if n.op_type not in self.ops and n.op_type != "Constant"})
        if unsupported:
            raise FinetuneError(f"fine-tuning cannot run operator(s) {unsupported}; it covers {sorted(self.ops)}")
        self.params = torch.nn.ParameterDict()
        self.fixed: dict[str, object] = {}
        self._names: dict[str, str] = {}
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init)
            if arr.dtype == np.float32 and arr.size > 1:
                key = f"p{len(self._names)}"
                self._names[init.name] = key
                self.params[key] = torch.nn.Parameter(torch.from_numpy(arr.copy()))
            else:
                self.fixed[init.name] = torch.from_numpy(np.array(arr))
        self.nodes = []
        for node in model.graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                self.fixed[node.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"])))
                continue
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))

    def __call__(self, inputs: Mapping[str, object]) -> dict[str, object]:
        env: dict[str, object] = dict(inputs)
        for name, key in self._names.items():
            env[name] = self.params[key]
        env.update(self.fixed)
        for op, ins, outs, attrs in self.nodes:
            env[outs[0]] = self.ops[op]([env[i] if i else None for i in ins], attrs)
        return env

    def write_back(self) -> None:
        from onnx import numpy_helper

        by_name = {i.name: i for i in self.model.graph.initializer}
        for name, key in self._names.items():
            arr = self.params[key].detach().numpy().astype(np.float32)
            by_name[name].CopyFrom(numpy_helper.from_array(arr, name))


def finetune(model, inputs: Mapping[str, np.ndarray], labels: np.ndarray, output: str, metric: str,
             epochs: int, lr: float = 1e-3, batch: int = 32, seed: int = 0) -> tuple[object, dict]:
    """Train the model's float weights for `epochs` on (inputs, labels); the loss follows the
    metric: cross-entropy for classification metrics (on log-probabilities when the output is
    already a probability), squared error for mse. Returns the model (updated in place) and
    what was done."""
    torch = _torch()
    torch.manual_seed(seed)
    graph = TorchGraph(model)
    opt = torch.optim.Adam(graph.params.parameters(), lr=lr)
    rows = labels.shape[0]
    rng = np.random.default_rng(seed)
    x_all = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    y_all = torch.from_numpy(np.ascontiguousarray(labels.astype(np.float32 if metric == "mse" else np.int64)))
    losses = []
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(rows))
        total = 0.0
        for start in range(0, rows, batch):
            idx = order[start:start + batch]
            out = graph({k: v[idx] for k, v in x_all.items()})[output]
            y = y_all[idx]
            if metric == "mse":
                loss = torch.mean((out.reshape(-1) - y.reshape(-1)) ** 2)
            else:
                loss = _classification_loss(torch, out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / rows)
    graph.write_back()
    return model, {"epochs": epochs, "lr": lr, "batch": batch, "rows": int(rows),
                   "loss_first_epoch": round(losses[0], 5) if losses else None,
                   "loss_last_epoch": round(losses[-1], 5) if losses else None}


def _classification_loss(torch, out, y):
    F = torch.nn.functional
    if out.dim() == 1 or out.shape[-1] == 1:
        z = out.reshape(-1)
        is_prob = bool(((z >= 0) & (z <= 1)).all())
        yf = y.float().reshape(-1)
        return F.binary_cross_entropy(z.clamp(1e-7, 1 - 1e-7), yf) if is_prob else F.binary_cross_entropy_with_logits(z, yf)
    sums = out.detach().sum(dim=1)
    is_prob = bool((out.detach() >= 0).all()) and bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3))
    if is_prob:
        return F.nll_loss(torch.log(out.clamp_min(1e-7)), y)
    return F.cross_entropy(out, y)
