import gzip
import pickle
import shutil

import numpy as np
import pytest

from fedguard.data import sources
from fedguard.data.partition import partition_indices
from fedguard.data.sources import expected_files, hf_to_split, load_splits, read_idx


def _rows(split):
    return {r.tobytes() for r in split.x.reshape(len(split), -1)}


def test_digits_parts_are_disjoint_and_sized():
    s = load_splits("digits", None, 200, 360, 0)
    assert (len(s.val), len(s.test), len(s.pool)) == (200, 360, 1797 - 560)
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    assert 0.0 <= s.pool.x.min() and s.pool.x.max() <= 1.0
    assert not (_rows(s.val) & _rows(s.test)) and not (_rows(s.val) & _rows(s.pool) - _rows(s.test))


def test_mnist_count_comes_from_header_gzip_and_plain(mnist_root, tmp_path):
    train = read_idx(mnist_root / "train-images-idx3-ubyte.gz")
    assert train.shape == (17435, 28, 28)
    for name in sources.MNIST_FILES.values():  # the same files, decompressed
        with gzip.open(mnist_root / f"{name}.gz") as src, open(tmp_path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    assert expected_files("mnist", tmp_path) is None
    s = load_splits("mnist", str(tmp_path), 500, 0, 0)
    assert (len(s.pool), len(s.val), len(s.test)) == (17435 - 500, 500, 10000)
    assert s.input_shape == (1, 28, 28)


def test_idx_header_mismatch_is_reported(tmp_path):
    path = tmp_path / "bad-idx"
    path.write_bytes(b"\x00\x00\x08\x01" + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says"):
        read_idx(path)


def test_missing_mnist_files_are_named(tmp_path):
    assert "t10k-labels-idx1-ubyte" in expected_files("mnist", tmp_path)


def test_cifar_npz(cifar_npz):
    s = load_splits("cifar10", str(cifar_npz), 500, 0, 0)
    assert s.input_shape == (3, 32, 32) and len(s.test) == 1017 and len(s.pool) == 5085 - 500


def test_cifar_python_batches(tmp_path):
    rng = np.random.default_rng(0)
    for name in sources.CIFAR_BATCHES:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(batch, fh)
    assert expected_files("cifar10", tmp_path) is None
    s = load_splits("cifar10", str(tmp_path), 10, 0, 0)
    assert (len(s.pool), len(s.val), len(s.test)) == (90, 10, 20) and s.input_shape == (3, 32, 32)


def test_synthetic_is_seeded_and_sized():
    a = load_splits("synthetic", None, 50, 100, 1, num_samples=1000, num_features=16)
    b = load_splits("synthetic", None, 50, 100, 1, num_samples=1000, num_features=16)
    c = load_splits("synthetic", None, 50, 100, 2, num_samples=1000, num_features=16)
    assert len(a.pool) == 850 and a.input_shape == (16,)
    assert np.array_equal(a.pool.x, b.pool.x) and not np.array_equal(a.pool.x, c.pool.x)


def test_hub_source_through_flwr_datasets(monkeypatch):
    """The hub path runs FederatedDataset for real; only the download is replaced by a local Dataset."""
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(0)

    def fake(n):
        return Dataset.from_dict({"image": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                                  "label": rng.integers(0, 10, n)})

    calls = []

    def load_dataset(path, *args, **kwargs):
        calls.append(path)
        return DatasetDict({"train": fake(300), "test": fake(100)})

    import flwr_datasets.federated_dataset as fd

    monkeypatch.setattr(fd.datasets, "load_dataset", load_dataset)
    s = load_splits("hub", None, 50, 0, 0, hub_name="someone/digits-like")
    assert calls == ["someone/digits-like"]
    assert (len(s.pool), len(s.val), len(s.test)) == (250, 50, 100)
    assert s.input_shape == (1, 28, 28) and s.pool.x.max() <= 1.0


def test_hf_to_split_channels_last():
    from datasets import Dataset

    ds = Dataset.from_dict({"img": np.zeros((4, 32, 32, 3), dtype=np.uint8), "y": [0, 1, 2, 3]})
    assert hf_to_split(ds, "img", "y").x.shape == (4, 3, 32, 32)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_and_cover(name):
    labels = np.repeat(np.arange(10), 60)
    parts = [partition_indices(labels, p, 10, name, seed=0, min_partition_size=5) for p in range(10)]
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat)) and len(flat) == len(labels)
    if name != "iid":  # non-IID: clients see skewed label mixes
        assert np.mean([len(np.unique(labels[p])) for p in parts]) < 10
