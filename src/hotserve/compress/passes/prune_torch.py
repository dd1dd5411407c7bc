"""Structured pruning of PyTorch models through torch-pruning's dependency graph.

torch-pruning traces the module once, groups every parameter that must shrink together when a
channel or hidden unit goes (a Linear's output rows, the next layer's input columns, a
BatchNorm's statistics, a residual's partners), ranks groups by magnitude and removes the
lowest: what is left is an ordinary, smaller nn.Module to fine-tune and export. This covers
architectures the ONNX pass leaves alone (convolutions, residual blocks, attention heads with
`num_heads`). Needs `pip install torch==2.13.0` and the `compress` extra (torch-pruning).

The output layer is never pruned (its width is the model's interface): by default the last
Linear or Conv layer in module order is kept whole.
"""

from __future__ import annotations

from typing import Any


def _last_layer(model) -> list:
    import torch

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd))]
    return layers[-1:]


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def prune_module(model, example_inputs: Any, ratio: float, ignored_layers: list | None = None,
                 round_to: int | None = None) -> tuple[Any, dict]:
    """Prune `ratio` of the channels / hidden units of every prunable layer group, in place;
    returns the model and what was done."""
    import torch
    import torch_pruning as tp

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"the pruning ratio must be between 0 and 1 (exclusive), got {ratio:g}")
    before = count_parameters(model)
    ignored = _last_layer(model) if ignored_layers is None else ignored_layers
    model.eval()
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to)
    with torch.no_grad():
        pruner.step()
    return model, {"method": "structured, torch-pruning DependencyGraph", "ratio": ratio, "importance": "L2 magnitude",
                   "parameters_before": before, "parameters_after": count_parameters(model),
                   "ignored_layers": [type(m).__name__ for m in ignored]}
