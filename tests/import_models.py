"""Models for the importer tests: one written here, and Hugging Face models from tiny
configs with random init (nothing is downloaded)."""

from __future__ import annotations

import warnings

import onnx
import torch
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
