"""Dataset sources, registered by `dataset.name` in `DATASETS`. Each yields three disjoint
parts: the client pool, a small clean server validation stream, and a test set. Images are
float32 in [0, 1], shaped (N, C, H, W) (pixel space, so attack and correction budgets such as
eps=0.2 mean what the papers mean); the synthetic source yields feature vectors (N, F).
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fedguard.registry import Registry

MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DataSplits:
    pool: Split  # partitioned among clients
    val: Split  # the server's clean validation stream
    test: Split  # global test set (server-side evaluation)
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.pool.x.shape[1:])


# --------------------------------------------------------------------------- file formats
def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip or not). The item count comes from the header."""
    with _open_maybe_gz(path) as fh:
        zero, dtype_code, ndim = struct.unpack(">HBB", fh.read(4))
        if zero != 0 or dtype_code != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file (header {zero}, {dtype_code})")
        dims = struct.unpack(">" + "I" * ndim, fh.read(4 * ndim))
        data = np.frombuffer(fh.read(), dtype=np.uint8)
    expected = int(np.prod(dims))
    if data.size != expected:
        raise ValueError(f"{path}: header says {dims} ({expected} bytes) but file has {data.size}")
    return data.reshape(dims)


def mnist_files(root: Path) -> str | None:
    """None when `root` holds the four MNIST IDX files, else what is missing."""
    missing = [stem for stem in MNIST_FILES.values() if _find(root, stem) is None]
    return f"IDX files {missing} (gzip or not) in the directory" if missing else None


def cifar10_files(root: Path) -> str | None:
    """None when `root` is a CIFAR-10 .npz or a directory of python batches (or .npz), else what is expected."""
    if root.is_file() and root.suffix == ".npz":
        return None
    if root.is_dir() and (list(root.glob("*.npz")) or all((root / b).is_file() for b in CIFAR_BATCHES)):
        return None
    return "a CIFAR-10 python-batches directory (data_batch_1..5, test_batch) or an .npz with x_train,y_train,x_test,y_test"


def _idx_problem(path: Path) -> tuple[str | None, tuple[int, ...]]:
    """(what is wrong with the IDX file `path`, None if nothing; its dims). Reads it through
    once, in chunks: a gzip stream must be complete and pass its CRC, and the data must be
    exactly as long as the header says."""
    dims: tuple[int, ...] = ()
    got = 0
    try:
        with _open_maybe_gz(path) as fh:
            head = fh.read(4)
            if len(head) < 4:
                return f"{path}: empty or shorter than an IDX header (a failed download?)", dims
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
                return f"{path}: not an unsigned-byte IDX file (its header starts {head.hex()})", dims
            raw = fh.read(4 * ndim)
            if len(raw) < 4 * ndim:
                return f"{path}: truncated inside its IDX header", dims
            dims = struct.unpack(">" + "I" * ndim, raw)
            while chunk := fh.read(1 << 16):
                got += len(chunk)
    except EOFError:
        expected = int(np.prod(dims)) if dims else 0
        return (f"{path}: truncated: its gzip stream ends after about {got:,} of the {expected:,} data bytes its "
                "IDX header announces (a partial download? fetch it again)"), dims
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        return f"{path}: unreadable: {err} (a corrupt download? fetch it again)", dims
    expected = int(np.prod(dims))
    if got != expected:
        return (f"{path}: its IDX header says {'x'.join(map(str, dims))} ({expected:,} data bytes) but it holds "
                f"{got:,} (truncated or not an MNIST file)"), dims
    return None, dims


def verify_mnist(root: Path) -> str | None:
    """None when the four MNIST IDX files in `root` are readable, complete and agree (as many
    labels as images), else what is wrong, naming the file (the pre-flight of `fedguard run`)."""
    missing = mnist_files(root)
    if missing:
        return missing
    count = {}
    for key, stem in MNIST_FILES.items():
        problem, dims = _idx_problem(_find(root, stem))
        if problem:
            return problem
        count[key] = dims[0]
    for part in ("train", "test"):
        if count[f"{part}_x"] != count[f"{part}_y"]:
            return (f"{_find(root, MNIST_FILES[f'{part}_x'])} holds {count[f'{part}_x']:,} images but "
                    f"{_find(root, MNIST_FILES[f'{part}_y'])} {count[f'{part}_y']:,} labels")
    return None


CIFAR_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def verify_cifar10(root: Path) -> str | None:
    """None when `root`'s CIFAR-10 (.npz or python batches) is readable and complete, else
    what is wrong, naming the file (the pre-flight of `fedguard run`)."""
    missing = cifar10_files(root)
    if missing:
        return missing
    npz = root if root.is_file() else next(iter(sorted(root.glob("*.npz"))), None)
    if npz is not None:
        try:
            with zipfile.ZipFile(npz) as zf:
                bad, names = zf.testzip(), zf.namelist()
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as err:
            return f"{npz}: not a readable .npz ({err}; truncated?)"
        if bad is not None:
            return f"{npz}: its member {bad} is corrupt (CRC mismatch)"
        absent = [k for k in CIFAR_ARRAYS if f"{k}.npy" not in names]
        return f"{npz}: no array {', '.join(absent)} (it needs {', '.join(CIFAR_ARRAYS)})" if absent else None
    for name in CIFAR_BATCHES:
        path = root / name
        try:
            with open(path, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            n = len(d[b"labels"])
            if np.asarray(d[b"data"]).size != n * 3072:
                return f"{path}: {np.asarray(d[b'data']).size} pixel values for {n} labels (expected {n} x 3072)"
        except (EOFError, pickle.UnpicklingError, OSError, KeyError, TypeError, ValueError) as err:
            return f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err}; truncated?)"
    return None


def verify_hub(name: str, timeout: float = 5.0) -> str | None:
    """None when the Hugging Face hub can serve dataset `name`: reachable (one request with a
    `timeout`), or, offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), `name` in the local cache.
    Else why not (the pre-flight of `fedguard run`: the loader itself retries for a minute)."""
    from huggingface_hub import constants

    offline_env = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
                   if os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")]
    if offline_env:
        datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", Path(constants.HF_HOME) / "datasets"))
        cached = [Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}",
                  datasets_cache / name.replace("/", "___")]
        if any(p.exists() for p in cached):
            return None
        return (f"offline ({'='.join([offline_env[0], os.environ[offline_env[0]]])}) and dataset.hub_name={name} is "
                f"not in the local caches ({cached[0].parent}, {cached[1].parent})")
    import httpx

    url = f"{constants.ENDPOINT}/api/datasets/{name}"
    try:
        status = httpx.head(url, timeout=timeout).status_code
    except httpx.HTTPError as err:
        return (f"the Hugging Face hub is unreachable, so dataset=hub cannot load {name}: {type(err).__name__} "
                f"for {url} ({err}); dataset=hub needs network access (or HF_HUB_OFFLINE=1 with a cached copy)")
    if status >= 400:
        return f"the Hugging Face hub answers HTTP {status} for dataset.hub_name={name} ({url}): a typo, or a gated dataset?"
    return None


def load_mnist(root: Path) -> tuple[Split, Split]:
    arrays = {key: read_idx(_find(root, stem)) for key, stem in MNIST_FILES.items()}
    to_x = lambda a: (a.astype(np.float32) / 255.0)[:, None, :, :]  # noqa: E731
    return (Split(to_x(arrays["train_x"]), arrays["train_y"].astype(np.int64)),
            Split(to_x(arrays["test_x"]), arrays["test_y"].astype(np.int64)))


def load_cifar10(root: Path) -> tuple[Split, Split]:
    npz = root if root.is_file() else next(iter(sorted(root.glob("*.npz"))), None)
    if npz is not None:
        with np.load(npz) as data:
            parts = {k: data[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    else:
        def batch(name):
            with open(root / name, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            return d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(d[b"labels"])
        train = [batch(b) for b in CIFAR_BATCHES[:5]]
        test_x, test_y = batch("test_batch")
        parts = {"x_train": np.concatenate([b[0] for b in train]),
                 "y_train": np.concatenate([b[1] for b in train]),
                 "x_test": test_x, "y_test": test_y}

    def to_x(a):  # HWC uint8 -> CHW float in [0, 1]
        return np.ascontiguousarray(a.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)

    return (Split(to_x(parts["x_train"]), parts["y_train"].astype(np.int64).ravel()),
            Split(to_x(parts["x_test"]), parts["y_test"].astype(np.int64).ravel()))


def load_digits_all() -> Split:
    """scikit-learn's bundled digits, read as `sklearn.datasets.load_digits` reads them (its
    `digits.csv.gz`, `np.loadtxt`) without importing scikit-learn (~1 s in every Ray actor)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if csv is not None and csv.is_file():
        with gzip.open(csv, mode="rt", encoding="utf-8") as fh:
            data = np.loadtxt(fh, delimiter=",")
        images, target = data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    else:  # another layout of the package: its own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images, target = bunch.images, bunch.target
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    return Split(x, target.astype(np.int64))


def make_synthetic(num_samples: int, num_features: int, num_classes: int, seed: int) -> Split:
    """Gaussian class clusters: learnable, seeded, any size (for scale tests)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, size=(num_classes, num_features)).astype(np.float32)
    y = rng.integers(0, num_classes, size=num_samples)
    x = centers[y] + rng.normal(0.0, 1.0, size=(num_samples, num_features)).astype(np.float32)
    return Split(x.astype(np.float32), y.astype(np.int64))


def hf_to_split(ds, image_key: str, label_key: str) -> Split:
    """A Hugging Face `datasets.Dataset` of images (PIL or arrays) and labels -> Split."""
    ds = ds.with_format("numpy")
    x = np.asarray(ds[image_key], dtype=np.float32)
    if x.max() > 1.0:
        x = x / 255.0
    if x.ndim == 3:  # (N, H, W) grey
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):  # HWC -> CHW
        x = x.transpose(0, 3, 1, 2)
    return Split(np.ascontiguousarray(x), np.asarray(ds[label_key], dtype=np.int64))


def load_hub(name: str, image_key: str, label_key: str) -> tuple[Split, Split]:
    """A hub dataset through flwr-datasets (needs network access to the hub)."""
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    fds = FederatedDataset(dataset=name, partitioners={"train": IidPartitioner(num_partitions=1)})
    return (hf_to_split(fds.load_split("train"), image_key, label_key),
            hf_to_split(fds.load_split("test"), image_key, label_key))


# --------------------------------------------------------------------------- splitting
def _carve(split: Split, sizes: list[int], seed: int) -> list[Split]:
    """Disjoint random parts of `split` of the given sizes; the rest is the last part."""
    if sum(sizes) >= len(split):
        raise ValueError(f"cannot carve {sizes} samples out of {len(split)}")
    order = np.random.default_rng(seed).permutation(len(split))
    bounds = np.cumsum([0, *sizes])
    parts = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])] + [order[bounds[-1]:]]
    return [Split(split.x[idx], split.y[idx]) for idx in parts]


# --------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class SourceArgs:
    """The `dataset` keys (and the run's seed) a source's loader may read."""
    root: str | None
    seed: int
    num_samples: int
    num_features: int
    num_classes: int
    hub_name: str | None
    hub_image_key: str
    hub_label_key: str


@dataclass(frozen=True)
class Source:
    """A dataset source: how it loads and what is known of it before loading."""
    # -> (train, test); test None: the source is one set, the test set is carved out of it (dataset.test_size)
    load: Callable[[SourceArgs], tuple[Split, Split | None]]
    num_classes: int | None = None  # the class count, when known before loading (hub: None)
    sized_by_config: bool = False  # made to measure by dataset.num_samples, num_features, num_classes (synthetic)
    files: Callable[[Path], str | None] | None = None  # on-disk source: what `dataset.root` lacks (None: complete)
    # the pre-flight of `fedguard run` (given the `dataset` config): what stops the source from
    # loading, naming the file (read through) or the service; None: nothing. Cheap checks are `files`
    verify: Callable[[Any], str | None] | None = None


DATASETS = Registry("dataset")
DATASETS.add("digits", Source(lambda a: (load_digits_all(), None), num_classes=10),
             "scikit-learn's bundled 8x8 digits (1,797 images, offline)", knobs=("test_size",))
DATASETS.add("mnist", Source(lambda a: load_mnist(Path(a.root)), num_classes=10, files=mnist_files,
                            verify=lambda ds: verify_mnist(Path(ds.root))),
             "MNIST from IDX files (gzip or not) in dataset.root", knobs=("root",))
DATASETS.add("cifar10", Source(lambda a: load_cifar10(Path(a.root)), num_classes=10, files=cifar10_files,
                              verify=lambda ds: verify_cifar10(Path(ds.root))),
             "CIFAR-10 from python batches or an .npz in dataset.root", knobs=("root",))
DATASETS.add("synthetic", Source(lambda a: (make_synthetic(a.num_samples, a.num_features, a.num_classes, a.seed),
                                            None), sized_by_config=True),
             "seeded Gaussian class clusters of any size",
             knobs=("test_size", "num_samples", "num_features", "num_classes"))
DATASETS.add("hub", Source(lambda a: load_hub(a.hub_name, a.hub_image_key, a.hub_label_key),
                          verify=lambda ds: verify_hub(ds.hub_name)),
             "a Hugging Face hub dataset (dataset.hub_name) through flwr-datasets (online)",
             knobs=("hub_name", "hub_image_key", "hub_label_key"))


def expected_files(name: str, root: Path) -> str | None:
    """None when `root` holds the files of dataset `name` (or the source reads no files), else what is missing."""
    files = DATASETS.get(name).files
    return files(root) if files is not None else None


def known_num_classes(ds) -> int | None:
    """The class count of the `dataset` config's source before loading it (None: only its data tells)."""
    source = DATASETS.get(ds.name)
    return int(ds.num_classes) if source.sized_by_config else source.num_classes


@lru_cache(maxsize=4)
def load_splits(name: str, root: str | None, val_size: int, test_size: int, seed: int,
                num_samples: int = 20000, num_features: int = 64, num_classes: int = 10,
                hub_name: str | None = None, hub_image_key: str = "image",
                hub_label_key: str = "label") -> DataSplits:
    """Load a source and split it into client pool / server validation / test (cached per process)."""
    source = DATASETS.get(name)
    train, test = source.load(SourceArgs(root, seed, num_samples, num_features, num_classes, hub_name,
                                         hub_image_key, hub_label_key))
    if test is None:
        test, val, pool = _carve(train, [test_size, val_size], seed)
    else:
        val, pool = _carve(train, [val_size], seed)
    classes = int(max(pool.y.max(), test.y.max(), val.y.max())) + 1
    return DataSplits(pool=pool, val=val, test=test,
                      num_classes=max(classes, num_classes) if source.sized_by_config else classes)


def splits_from_config(cfg) -> DataSplits:
    ds = cfg.dataset
    return load_splits(ds.name, ds.root, ds.val_size, ds.test_size, cfg.seed, ds.num_samples,
                       ds.num_features, ds.num_classes, ds.hub_name, ds.hub_image_key, ds.hub_label_key)
