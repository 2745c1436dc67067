from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    root = SHARED_DATA / "mnist"
    if not root.is_dir():
        pytest.skip(f"real MNIST not found at {root} (../shared/data beside the repo)")
    return root


@pytest.fixture(scope="session")
def cifar_npz() -> Path:
    path = SHARED_DATA / "cifar10-subset" / "cifar10_subset.npz"
    if not path.is_file():
        pytest.skip(f"CIFAR-10 subset not found at {path}")
    return path


@pytest.fixture
def flower_identity():
    """Flower needs a task identity in-process to build Messages outside a run."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine (40x here).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
