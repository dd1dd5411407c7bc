"""Structured pruning of ONNX MatMul/Gemm chains: whole hidden units go, so tensors shrink.

A hidden tensor H of width n is prunable when
- it is produced by a Gemm or a MatMul whose weight is an initializer (n = its output width),
  optionally followed by elementwise work: a bias Add, activations (Relu, Tanh, Sigmoid, GELU
  whether fused or spelled out with Erf, ...), arithmetic with scalars or per-unit constants;
- and everything that reads that region is a Gemm or MatMul taking it as the left operand with
  an initializer weight.

Removing unit j then removes column j of the producer's weight (and bias, and any per-unit
constant on the way) and row j of every consumer's weight: the model computes exactly what it
computed before minus unit j. Units are ranked by magnitude: the L2 norm of what flows in (the
producer's column and bias) times the L2 norm of what flows out (the consumers' rows). An MLP's
hidden layers and a transformer's feed-forward units qualify; attention projections (reshaped
into heads) and residual streams do not, and are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Elementwise ops through which unit j stays unit j.
_UNARY = {"Relu", "LeakyRelu", "Tanh", "Sigmoid", "Gelu", "FastGelu", "Erf", "Elu", "Selu", "Softplus", "Softsign",
          "HardSigmoid", "HardSwish", "Identity", "Neg", "Abs", "Exp", "Sqrt", "Clip", "PRelu", "QuickGelu", "BiasGelu"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"}


class PruneError(Exception):
    pass


@dataclass
class Site:
    """One prunable hidden tensor."""

    tensor: str
    width: int
    producer: str  # node name
    producer_weight: str
    producer_axis: int  # axis of the producer's weight that indexes units
    biases: list[tuple[str, int]] = field(default_factory=list)  # (initializer, axis) per-unit constants
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (initializer weight, unit axis)


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


class _Graph:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.model = model
        self.inits = {i.name: i for i in g.initializer}
        self.arrays = {name: numpy_helper.to_array(i) for name, i in self.inits.items()}
        self.consumers: dict[str, list] = {}
        self.uses: dict[str, int] = {}
        for node in g.node:
            for inp in node.input:
                if inp:
                    self.consumers.setdefault(inp, []).append(node)
                    self.uses[inp] = self.uses.get(inp, 0) + 1
        self.outputs = {o.name for o in g.output}
        # Scalars spelled as Constant nodes (exporters emit GELU's 0.5, 1 and sqrt(2) this way).
        self.constants: dict[str, np.ndarray] = {}
        for node in g.node:
            if node.op_type == "Constant":
                value = _attr(node, "value", None)
                if value is not None:
                    self.constants[node.output[0]] = numpy_helper.to_array(value)

    def weight(self, name: str) -> np.ndarray | None:
        a = self.arrays.get(name)
        return a if a is not None and self.uses.get(name, 0) == 1 else None  # shared weights stay whole


def _producer_site(g: _Graph, node) -> Site | None:
    if node.op_type == "MatMul":
        w = g.weight(node.input[1])
        if w is None or w.ndim != 2:
            return None
        return Site(node.output[0], w.shape[1], node.name, node.input[1], 1)
    if node.op_type == "Gemm":
        if _attr(node, "transA", 0):
            return None
        w = g.weight(node.input[1])
        if w is None or w.ndim != 2:
            return None
        axis = 0 if _attr(node, "transB", 0) else 1
        site = Site(node.output[0], w.shape[axis], node.name, node.input[1], axis)
        if len(node.input) > 2 and node.input[2]:
            b = g.weight(node.input[2])
            if b is None:
                return None
            if b.size > 1:
                if b.shape[-1] != site.width or b.size != site.width:
                    return None
                site.biases.append((node.input[2], b.ndim - 1))
        return site
    return None


def _per_unit(g: _Graph, name: str, width: int) -> tuple[bool, int | None]:
    """(usable, axis): a scalar constant (no axis to prune) or a [.., width] per-unit one."""
    if name in g.constants:
        return g.constants[name].size == 1, None
    a = g.weight(name) if name in g.arrays else None
    if a is None:
        shared = g.arrays.get(name)
        return (shared is not None and shared.size == 1), None
    if a.size == 1:
        return True, None
    if a.shape[-1] == width and a.size == width:
        return True, a.ndim - 1
    return False, None


def _is_constant(g: _Graph, name: str) -> bool:
    return name in g.constants or name in g.arrays


def _trace(g: _Graph, site: Site) -> bool:
    """Follow the unit-wise region from the producer; fill biases and consumers. False when
    anything but unit-wise work or a MatMul/Gemm left operand reads it."""
    region = {site.tensor}
    frontier = [site.tensor]
    done: set[int] = set()
    waiting: dict[int, object] = {}  # binary nodes whose other operand may still join the region

    def visit(node) -> bool | None:
        """True: handled; False: not prunable; None: wait for another operand."""
        op = node.op_type
        if op in ("MatMul", "Gemm"):
            if node.input[0] not in region or any(i in region for i in node.input[1:]):
                return False
            if op == "Gemm" and _attr(node, "transA", 0):
                return False
            w = g.weight(node.input[1])
            if w is None or w.ndim != 2:
                return False
            axis = 1 if (op == "Gemm" and _attr(node, "transB", 0)) else 0
            if w.shape[axis] != site.width:
                return False
            site.consumers.append((node.input[1], axis))
            return True
        if op in _UNARY:
            if node.input[0] not in region:
                return False
            for extra in node.input[1:]:
                if not extra:
                    continue
                if op not in ("PRelu", "Clip"):
                    return False
                ok, axis = _per_unit(g, extra, site.width)
                if not ok:
                    return False
                if axis is not None:
                    site.biases.append((extra, axis))
        elif op in _BINARY:
            others = [i for i in node.input if i not in region]
            if any(not _is_constant(g, o) for o in others):
                return None
            for other in others:
                ok, axis = _per_unit(g, other, site.width)
                if not ok:
                    return False
                if axis is not None:
                    site.biases.append((other, axis))
        else:
            return False
        out = node.output[0]
        if out not in region:
            region.add(out)
            frontier.append(out)
        return True

    while frontier or waiting:
        if not frontier:
            progressed = False
            for key, node in list(waiting.items()):
                verdict = visit(node)
                if verdict is False:
                    return False
                if verdict:
                    del waiting[key]
                    done.add(key)
                    progressed = True
            if not progressed:
                return False  # an operand from outside the region: not unit-wise
            continue
        t = frontier.pop()
        if t in g.outputs:
            return False
        readers = g.consumers.get(t, [])
        if not readers:
            return False
        for node in readers:
            key = id(node)
            if key in done:
                continue
            verdict = visit(node)
            if verdict is False:
                return False
            if verdict is None:
                waiting[key] = node
            else:
                waiting.pop(key, None)
                done.add(key)
    return bool(site.consumers)


def find_sites(model) -> list[Site]:
    """Every prunable hidden tensor of the model, in graph order."""
    g = _Graph(model)
    sites = []
    for node in model.graph.node:
        site = _producer_site(g, node)
        if site is not None and site.width > 1 and _trace(g, site):
            sites.append(site)
    return sites


def _importance(g: _Graph, site: Site) -> np.ndarray:
    w_in = g.arrays[site.producer_weight].astype(np.float64)
    inflow = np.sum(w_in ** 2, axis=1 - site.producer_axis)
    for name, axis in site.biases:
        inflow = inflow + np.moveaxis(g.arrays[name].astype(np.float64), axis, -1).reshape(-1, site.width).sum(0) ** 2
    outflow = np.zeros(site.width)
    for name, axis in site.consumers:
        outflow += np.sum(g.arrays[name].astype(np.float64) ** 2, axis=1 - axis)
    return np.sqrt(inflow) * np.sqrt(outflow)


def _replace(model, g: _Graph, name: str, arr: np.ndarray) -> None:
    from onnx import numpy_helper

    init = g.inits[name]
    init.CopyFrom(numpy_helper.from_array(arr.astype(g.arrays[name].dtype), name))
    g.arrays[name] = arr


def keep_count(width: int, ratio: float) -> int:
    return max(1, int(round(width * (1.0 - ratio))))


def prune(model, ratio: float) -> tuple[object, dict]:
    """Remove `ratio` of the units of every prunable hidden tensor, in place; returns the model
    and what was pruned (tensor -> [before, after])."""
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"the pruning ratio must be between 0 and 1 (exclusive), got {ratio:g}")
    names = [s.tensor for s in find_sites(model)]
    if not names:
        raise PruneError("no prunable hidden units: structured pruning needs MatMul/Gemm layers with initializer "
                         "weights whose outputs feed (through elementwise ops) only other MatMul/Gemm layers")
    pruned: dict[str, list[int]] = {}
    for tensor in names:
        # Earlier sites changed shared weights' other axes: find this one again in the current graph.
        g = _Graph(model)
        site = next((s for s in find_sites(model) if s.tensor == tensor), None)
        if site is None:
            continue
        keep = np.sort(np.argsort(-_importance(g, site), kind="stable")[:keep_count(site.width, ratio)])
        _replace(model, g, site.producer_weight, np.take(g.arrays[site.producer_weight], keep, axis=site.producer_axis))
        for name, axis in site.biases:
            _replace(model, g, name, np.take(g.arrays[name], keep, axis=axis))
        for name, axis in site.consumers:
            _replace(model, g, name, np.take(g.arrays[name], keep, axis=axis))
        pruned[tensor] = [site.width, int(len(keep))]
    # Intermediate shapes recorded before pruning no longer hold; the runtime infers them again.
    del model.graph.value_info[:]
    return model, pruned


def prune_dir(src_dir: str, dst_dir: str, ratio: float) -> tuple[object, dict]:
    from hotserve.compress import model_io

    model = model_io.load(model_io.model_path(src_dir))
    model, pruned = prune(model, ratio)
    return model, {"method": "structured (whole hidden units), onnx MatMul/Gemm chains", "ratio": ratio,
                   "importance": "L2(in) x L2(out)", "units": pruned}
