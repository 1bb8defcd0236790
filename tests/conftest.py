"""Shared fixtures and the test tiers.

Tiers (markers declared in pyproject.toml): ``slow`` marks what needs 1 GB checkpoint files, huge
images, kill trials or torchrun; every test that uses the ``released_checkpoints`` fixture (three
1 GB files) is marked here, the others in their modules. ``cuda`` tests are skipped, with the reason,
where torch sees no CUDA GPU.
"""

import os
from pathlib import Path

import pytest
import torch

from tools.released_layout import INRIA_KINDS, KINDS, make_released_checkpoint

SLOW_FIXTURES = {"released_checkpoints", "inria_checkpoints"}

if os.environ.get("PYTEST_XDIST_WORKER"):  # make test-fast: one torch thread per pytest worker
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False here)")
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def released_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"all" | "medium" | "global": path} of fake released files; deleted at the end of the session."""
    folder = tmp_path_factory.mktemp("released")
    paths = {kind: folder / f"{kind}.epoch.pth" for kind in KINDS}
    for seed, kind in enumerate(KINDS, start=1):
        make_released_checkpoint(kind, paths[kind], seed=seed)
    yield paths
    for path in paths.values():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def inria_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"inria_all" | "B10" | "B15": path} of fake files in the Inria release's layout (all.epoch.pth,
    B10.epoch.pth, B15.epoch.pth, about 1 GB each); deleted at the end of the session."""
    folder = tmp_path_factory.mktemp("released_inria")
    names = {"inria_all": "all.epoch.pth", "B10": "B10.epoch.pth", "B15": "B15.epoch.pth"}
    paths = {kind: folder / names[kind] for kind in INRIA_KINDS}
    for seed, kind in enumerate(INRIA_KINDS, start=11):
        make_released_checkpoint(kind, paths[kind], seed=seed)
    yield paths
    for path in paths.values():
        path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def inria_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic Inria-layout dataset (64 px TIFF tiles, 0/1 masks) for end-to-end runs."""
    from dataset.synthetic_inria import generate_inria

    folder = tmp_path_factory.mktemp("inria_data")
    generate_inria(str(folder), n_train=2, n_val=2, n_test=2, size=64, seed=0)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small synthetic DeepGlobe-layout dataset (96 px images) for end-to-end runs of the CLI."""
    from dataset.synthetic import generate

    folder = tmp_path_factory.mktemp("tiny_data")
    generate(str(folder), n_train=3, n_val=2, n_test=2, size=96, seed=0)
    return str(folder)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: the machines these tests run on are shared, and with busy cores
    torch's parallel regions wait for each other (measured 5-15x slower than one thread)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fpn_pre_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A folder holding ``pre.pth``: a seeded, untrained mode-1 fpn_resnet18 model in our weight format."""
    import torch

    from models.checkpoint import save_weights
    from models.fctl import FCtLNet

    folder = tmp_path_factory.mktemp("fpn_pre")
    torch.manual_seed(7)
    save_weights(FCtLNet(1, "fpn_resnet18"), str(folder / "pre.pth"))
    return str(folder)


@pytest.fixture
def epoch_of_run(monkeypatch) -> dict:
    """{"epoch": index of the epoch being trained (0-based)}, kept up to date during a run."""
    current = {"epoch": -1}
    from engine.training import Trainer

    original = Trainer.train_epoch

    def train_epoch(self, epoch):
        current["epoch"] = epoch
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    return current
