"""Real models on real data for the compression tests, the bench and the docs (no downloads):

- an MLP classifier trained on scikit-learn's bundled digits data set (8x8 images, 10 classes);
- a small transformer-style encoder trained on a generated sequence task (which of four marker
  tokens occurs most often among noise tokens), where int8 has large MatMuls to speed up.

Both are trained with PyTorch and written as ONNX: the MLP by a tiny exporter of our own (Gemm
and Relu nodes, so the file is exactly the chain it looks like), the encoder by
torch.onnx.export. Each data set is written as an .npz of the model's inputs plus `label`,
what `hotserve optimize --eval` reads. Needs the `compress` extra and PyTorch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from hotserve.examples import OPSET, save_graph


@dataclass
class Split:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def save_npz(path: str, label: np.ndarray, **inputs: np.ndarray) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, label=label, **inputs)
    return path


# -- digits MLP ----------------------------------------------------------------------------------
def digits(test_share: float = 0.4, seed: int = 0) -> Split:
    """scikit-learn's digits, features scaled to [0, 1], split with a fixed seed."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_share)
    te, tr = order[:n_test], order[n_test:]
    return Split(x[tr], y[tr], x[te], y[te])


def train_mlp(split: Split, hidden: tuple[int, ...] = (512, 512), epochs: int = 30, seed: int = 0, lr: float = 1e-3):
    """A torch nn.Sequential MLP (Linear+ReLU ... Linear) trained on split's training rows."""
    import torch

    torch.manual_seed(seed)
    sizes = [split.x_train.shape[1], *hidden, int(split.y_train.max()) + 1]
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    _train(model, split.x_train, split.y_train, epochs, lr, 64, seed, torch.nn.functional.cross_entropy)
    return model.eval()


def _train(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch: int, seed: int, loss_fn) -> None:
    """Adam over shuffled mini-batches (the order drawn from `seed`), then eval mode."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = torch.from_numpy(rng.permutation(len(y)))
        for s in range(0, len(y), batch):
            idx = order[s:s + batch]
            loss = loss_fn(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def export_mlp(model, path: str, input_name: str = "x", output_name: str = "probabilities") -> str:
    """Write an nn.Sequential of Linear and ReLU as ONNX: Gemm (transB=1) and Relu nodes, then
    Softmax, so the output is class probabilities. Input [batch, features] float32."""
    import torch
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    prev = input_name
    n_in = n_out = None
    for i, layer in enumerate(model):
        if isinstance(layer, torch.nn.Linear):
            w = layer.weight.detach().numpy().astype(np.float32)
            b = layer.bias.detach().numpy().astype(np.float32)
            n_in = n_in or w.shape[1]
            n_out = w.shape[0]
            inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
            nodes.append(helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [f"fc{i}"], transB=1))
            prev = f"fc{i}"
        elif isinstance(layer, torch.nn.ReLU):
            nodes.append(helper.make_node("Relu", [prev], [f"relu{i}"]))
            prev = f"relu{i}"
        else:
            raise TypeError(f"export_mlp handles Linear and ReLU layers, not {type(layer).__name__}")
    nodes.append(helper.make_node("Softmax", [prev], [output_name], axis=-1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", n_out])], inits)
    return save_graph(graph, path)


# -- transformer-style encoder on a sequence task ------------------------------------------------
MARKERS = 4  # tokens 0..3 are the markers to count; the rest are noise


def sequences(n: int, length: int = 32, vocab: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int64 [n, length], label int64 [n]): the label is whichever marker token occurs
    most often (rows with a tie are drawn again)."""
    rng = np.random.default_rng(seed)
    out_x, out_y = [], []
    while len(out_y) < n:
        x = rng.integers(0, vocab, size=(2 * n, length))
        counts = np.stack([(x == m).sum(axis=1) for m in range(MARKERS)], axis=1)
        top = np.sort(counts, axis=1)
        ok = top[:, -1] > top[:, -2]
        out_x.append(x[ok])
        out_y.append(counts[ok].argmax(axis=1))
    return np.concatenate(out_x)[:n].astype(np.int64), np.concatenate(out_y)[:n].astype(np.int64)


def make_encoder(vocab: int = 16, length: int = 32, d_model: int = 64, heads: int = 4, ff: int = 256,
                 layers: int = 2, classes: int = MARKERS, seed: int = 0):
    """A BERT-style encoder (post-LayerNorm blocks of multi-head self-attention and a GELU
    feed-forward), mean-pooled into a classifier. Attention is written out (MatMul, Softmax)
    so the exported graph is plain ONNX operators."""
    import math

    import torch
    from torch import nn

    torch.manual_seed(seed)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.ln1 = nn.LayerNorm(d_model)
            self.ff1 = nn.Linear(d_model, ff)
            self.ff2 = nn.Linear(ff, d_model)
            self.ln2 = nn.LayerNorm(d_model)

        def forward(self, h):
            b, t, _ = h.shape
            q, k, v = self.qkv(h).reshape(b, t, 3, heads, d_model // heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d_model // heads), dim=-1)
            a = (att @ v).transpose(1, 2).reshape(b, t, d_model)
            h = self.ln1(h + self.proj(a))
            return self.ln2(h + self.ff2(nn.functional.gelu(self.ff1(h))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.randn(1, length, d_model) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.head = nn.Linear(d_model, classes)

        def forward(self, tokens):
            h = self.tok(tokens) + self.pos
            for blk in self.blocks:
                h = blk(h)
            return torch.softmax(self.head(h.mean(dim=1)), dim=-1)

    return Encoder()


def train_encoder(model, tokens: np.ndarray, labels: np.ndarray, epochs: int = 3, lr: float = 1e-3,
                  batch: int = 64, seed: int = 0) -> None:
    """Train the encoder, whose output is probabilities (negative log-likelihood)."""
    import torch

    torch.manual_seed(seed)
    _train(model, tokens, labels, epochs, lr, batch, seed,
           lambda p, y: torch.nn.functional.nll_loss(torch.log(p.clamp_min(1e-7)), y))


def export_encoder(model, path: str, length: int) -> str:
    """torch.onnx.export (the TorchScript exporter: no onnxscript needed), input 'tokens'
    [batch, length] int64, output 'probabilities' [batch, classes]."""
    import warnings

    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    example = torch.zeros(2, length, dtype=torch.int64)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(model, (example,), path, input_names=["tokens"], output_names=["probabilities"],
                          dynamic_axes={"tokens": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    return path
