"""Weights stored in the measured memory format, loaded from memory-mapped files without a second copy."""

from __future__ import annotations

import torch

from models.backbones import memory_format_for
from models.checkpoint import read_checkpoint, save_weights
from models.fctl import FCtLNet
from models.setup import create_model
from utils.memory import release_file_pages


def test_the_format_table():
    cl, plain = torch.channels_last, torch.contiguous_format
    assert memory_format_for("fcn8_vgg16", "cuda", training=True) == cl
    assert memory_format_for("fcn8_vgg16", "cpu", training=False) == cl
    assert memory_format_for("fcn8_vgg16", "cpu", training=True) == plain
    assert memory_format_for("fpn_resnet18", "cpu", training=True) == cl


def test_released_pages_read_back_the_file_values(tmp_path):
    path = tmp_path / "t.pth"
    values = torch.randn(64, 1024, 3, 3)
    torch.save({"a": values, "b": torch.randn(7)}, path)
    mapped = torch.load(path, mmap=True, weights_only=True)
    assert torch.equal(mapped["a"], values)  # touch every page
    assert release_file_pages(mapped["a"])
    assert torch.equal(mapped["a"], values) and mapped["b"].shape == (7,)


def test_inference_loads_channels_last_copies_with_the_file_values(tmp_path):
    torch.manual_seed(0)
    source = FCtLNet(2, "fpn_resnet18", n_class=3)
    save_weights(source, str(tmp_path / "m.pth"))
    model = create_model(2, "fpn_resnet18", pre_path=str(tmp_path / "m.pth"), n_class=3,
                         memory_format=torch.channels_last)
    weights, _ = read_checkpoint(str(tmp_path / "m.pth"))
    convs = [(n, p) for n, p in model.named_parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for _, p in convs)
    expected = source.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert len(weights) == len(expected)
