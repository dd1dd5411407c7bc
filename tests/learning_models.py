"""Small torch models and trainers for the learner tests (imported by the learner process:
the tests put this directory on its PYTHONPATH)."""

from __future__ import annotations

from hotserve.learning.torch_trainer import TorchTrainer


def logistic(n: int = 4):
    """p = sigmoid(w . x + b): input 'x' [batch, n] -> 'p' [batch, 1]."""
    import torch
    from torch import nn

    class Logistic(nn.Module):
        input_names = ["x"]
        output_name = "p"

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(n, 1)
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

        def forward(self, x):
            return torch.sigmoid(self.fc(x))

        @staticmethod
        def example_inputs() -> dict:
            return {"x": torch.zeros(2, n)}

    return Logistic()


class WorseTrainer(TorchTrainer):
    """Gets worse on purpose: every update pushes the weights against the labels."""

    def update(self, batch):
        out = super().update(batch)
        import torch

        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(-3.0).add_(0.5)
        return out
