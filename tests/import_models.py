"""Models for the importer tests: one written here, and Hugging Face models from tiny
configs with random init (nothing is downloaded)."""

from __future__ import annotations

import warnings

import onnx
import torch
import torch.nn.functional as F
import transformers
from torch import nn

transformers.logging.set_verbosity_error()


class SmallCNN(nn.Module):
    """A residual CNN written the usual way: modules, a Sequential, functional calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)
        self.ln = nn.LayerNorm(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn(self.conv(x)))
        y = self.relu(self.layer(y) + y)
        y = nn.functional.max_pool2d(y, 2)
        return self.ln(nn.functional.gelu(self.fc(torch.flatten(self.pool(y), 1))))


def hf_resnet(layer_type: str = "basic") -> nn.Module:
    """Hugging Face's ResNet for image classification, two tiny stages."""
    config = transformers.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16] if layer_type == "basic" else [16, 32],
        depths=[1, 2],
        layer_type=layer_type,
        num_labels=5,
    )
    return transformers.ResNetForImageClassification(config)


def hf_gpt2() -> nn.Module:
    """Hugging Face's GPT-2 language model, one tiny layer."""
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=4, vocab_size=100, n_positions=16, use_cache=False
    )
    return transformers.GPT2LMHeadModel(config)


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` in eval mode with random BatchNorm statistics and affine parameters and
    random biases, so that a wrong import of any of them changes the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)
            for name, p in m.named_parameters(recurse=False):
                if name == "bias" and not isinstance(m, nn.modules.batchnorm._BatchNorm):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return module.eval()


def outputs_of(module: nn.Module, *args: torch.Tensor) -> list[torch.Tensor]:
    """The tensors ``module`` returns (a ModelOutput's fields in order), without grad."""
    with torch.no_grad():
        y = module(*args)
    if isinstance(y, torch.Tensor):
        return [y]
    return [v for v in (y.values() if hasattr(y, "values") else y) if isinstance(v, torch.Tensor)]


def torch_onnx(module: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """What ``torch.onnx.export`` (the default, dynamo exporter) writes for ``module``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.onnx.export(module, (x,), dynamo=True, verbose=False).model_proto


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max|a - b| / max(1, max|b|)`` in float64."""
    a, b = a.double(), b.double()
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


class SqueezeExcite(nn.Module):
    """TF-style padding, a squeeze-excitation gate ``y * g[N, C, 1, 1]``, log_softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc1 = nn.Conv2d(8, 2, 1)
        self.fc2 = nn.Conv2d(2, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.pad(x, (0, 1, 0, 1)))
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return F.log_softmax(self.head((y * g).mean((2, 3))), -1)


class ChannelsLast(nn.Module):
    """ConvNeXt's pattern: permute to channels-last, layernorm, linear, layer scale
    ``gamma * y`` (a parameter read as a value), permute back, residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 8)
        self.gamma = nn.Parameter(torch.randn(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.gamma * self.fc(self.ln(y.permute(0, 2, 3, 1)))
        return self.head((y + z.permute(0, 3, 1, 2)).mean((-2, -1)))


class TinyViT(nn.Module):
    """ViT's pattern: patches flattened and transposed, a class token expanded to the
    batch and concatenated, a positional table added, attention as matmuls, ``x[:, 0]``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], 1) + self.pos
        a = torch.softmax(t @ t.transpose(-1, -2), -1)
        return self.head(self.fc(a @ t)[:, 0])


class TinyGPT(nn.Module):
    """GPT-2's pattern: position ids ``arange(L)``, token plus position embeddings, a
    head split with ``view`` and ``transpose``, a slice and a sum."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(20, 8)
        self.wpe = nn.Embedding(16, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        h = self.fc(self.wte(ids) + self.wpe(pos))
        h = h.view(ids.shape[0], ids.shape[1], 2, 4).transpose(1, 2)
        return self.head(h[:, :, 1:].sum(2))
