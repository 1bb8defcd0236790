"""Helpers for the command-line tests: in-process runs of the entry script with fast options."""

from __future__ import annotations

import os

import pytest

import train_deep_globe


def run_cli(*argv: str) -> int:
    """Run ``train_deep_globe.py`` in this process, as ``main`` would, returning its exit code."""
    with pytest.raises(SystemExit) as stop:
        import sys

        old = sys.argv
        sys.argv = ["train_deep_globe.py", *argv]
        try:
            train_deep_globe.main()
        finally:
            sys.argv = old
    return stop.value.code


def tiny_args(data: str, models: str, logs: str, *extra: str) -> list[str]:
    """Options for a fast CPU run of the light backbone on the tiny dataset."""
    return ["--data_path", data, "--model_path", models, "--log_path", logs, "--backbone", "fpn_resnet18",
            "--size_p", "64", "--size_g", "64", "--device", "cpu", "--no_pretrained", "--num_workers", "0",
            "--batch_size", "2", "--sub_batch_size", "8", *extra]


def list_files(folder: str) -> list[str]:
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
