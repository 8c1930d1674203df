import gzip

import numpy as np
import pytest
import torch

import topic_a_utils as U
from conftest import write_idx


def test_read_idx_raw_and_gz_roundtrip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr, gz=False)
    write_idx(tmp_path / "b", arr, gz=True)
    np.testing.assert_array_equal(U.read_idx(tmp_path / "a"), arr)
    np.testing.assert_array_equal(U.read_idx(tmp_path / "b.gz"), arr)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(U.UserError, match="magic"):
        U.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(U.UserError, match="holds 2 bytes"):
        U.read_idx(tmp_path / "short")


def test_load_dataset_scaling_and_labels(tiny_mnist_dir):
    d = U.load_dataset("mnist", "train", str(tiny_mnist_dir), verify=False)
    assert d.x.shape == (64, 784) and d.x.dtype == torch.float32
    assert d.x.min() >= -1 and d.x.max() <= 1
    # pixel 0 was set to label*20: check the (p/255 - 0.5)/0.5 scaling exactly
    expected = (d.y.float() * 20 / 255 - 0.5) / 0.5
    torch.testing.assert_close(d.x[:, 0], expected)
    t = U.load_dataset("mnist", "test", str(tiny_mnist_dir), verify=False)  # the raw (not gzipped) files
    assert len(t) == 32


def test_class_filter_and_limit(tiny_mnist_dir):
    d = U.load_dataset("mnist", "train", str(tiny_mnist_dir), n_classes=3, verify=False)
    assert set(d.y.tolist()) == {0, 1, 2}
    assert len(d) == sum(1 for i in range(64) if i % 10 < 3)
    d2 = U.load_dataset("mnist", "train", str(tiny_mnist_dir), n_classes=3, limit=5, verify=False)
    assert len(d2) == 5 and d2.y.max() < 3


def test_env_var_is_searched(tiny_mnist_dir, monkeypatch):
    monkeypatch.setenv("SUBLIMINAL_DATA_DIR", str(tiny_mnist_dir))
    assert len(U.load_dataset("mnist", "test", None, verify=False)) == 32


def test_missing_dataset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SUBLIMINAL_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(U.DataNotFoundError, match="--data-dir"):
        U.load_dataset("mnist", "train", str(tmp_path / "nowhere"))


def test_real_mnist_checksums(mnist_dir):
    """The shared files decompress to the official MNIST (hashes from SPEC's SHA256SUMS)."""
    import hashlib
    from pathlib import Path
    for stem, h in U.DATASETS["mnist"]["sha256"].items():
        with gzip.open(Path(mnist_dir) / "MNIST" / "raw" / (stem + ".gz")) as f:
            assert hashlib.sha256(f.read()).hexdigest() == h
    d = U.load_dataset("mnist", "test", mnist_dir)
    assert d.x.shape == (10000, 784)
    assert torch.bincount(d.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_synthetic_files_fail_the_checksum_by_default(tiny_mnist_dir):
    with pytest.raises(U.UserError, match="SHA-256"):
        U.load_dataset("mnist", "test", str(tiny_mnist_dir))


@pytest.mark.parametrize("gz", [True, False])
def test_a_corrupted_copy_of_the_real_file_stops_with_one_clear_line(mnist_dir, tmp_path, gz):
    """One flipped byte in a copy of the official test images: the loader refuses it, names the
    file and says how to fix it; the untouched labels are accepted."""
    import shutil
    from pathlib import Path
    src = Path(mnist_dir) / "MNIST" / "raw"
    dst = tmp_path / "MNIST" / "raw"
    dst.mkdir(parents=True)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        data = U.read_idx_bytes(src / (stem + ".gz"))
        if stem.startswith("t10k-images"):
            data = data[:1000] + bytes([data[1000] ^ 0x01]) + data[1001:]  # the header stays valid
        if gz:
            with gzip.open(dst / (stem + ".gz"), "wb") as f:
                f.write(data)
        else:
            (dst / stem).write_bytes(data)
    with pytest.raises(U.UserError) as e:
        U.load_dataset("mnist", "test", str(tmp_path))
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "t10k-images-idx3-ubyte" in msg and "SHA-256" in msg
    assert "replace it with the official IDX file" in msg
    assert len(U.load_dataset("mnist", "test", str(tmp_path), verify=False)) == 10000  # the bytes still parse


def test_truncated_gzip_is_a_clear_error(mnist_dir, tmp_path):
    from pathlib import Path
    src = Path(mnist_dir) / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    dst = tmp_path / "MNIST" / "raw"
    dst.mkdir(parents=True)
    (dst / src.name).write_bytes(src.read_bytes()[:100])
    (dst / "t10k-images-idx3-ubyte.gz").write_bytes((Path(mnist_dir) / "MNIST" / "raw" /
                                                     "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(U.UserError, match="cannot be read|SHA-256"):
        U.load_dataset("mnist", "test", str(tmp_path))
