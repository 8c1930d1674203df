import gzip
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("SUBLIMINAL_OFFLINE", "1")  # tests never touch the network


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def tiny_mnist_dir(tmp_path):
    """A fake MNIST in <tmp>/MNIST/raw/: 64 train and 32 test images whose labels are recoverable."""
    rng = np.random.default_rng(0)
    for prefix, n, gz in (("train", 64, True), ("t10k", 32, False)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = labels * 20  # a known pixel per example
        write_idx(tmp_path / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(tmp_path / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return tmp_path


def shared_data_dir():
    d = os.environ.get("SUBLIMINAL_DATA_DIR") or str(REPO.parent / "shared" / "data")
    return d if (Path(d) / "MNIST" / "raw").is_dir() else None


@pytest.fixture
def mnist_dir():
    d = shared_data_dir()
    if d is None:
        pytest.skip("real MNIST not found (set SUBLIMINAL_DATA_DIR)")
    return d
