"""Shared machinery for every Topic A experiment (subliminal learning in a toy MLP).

Everything a Topic A script needs lives here, once:

* ``MLPConfig`` / ``Ensemble``: N independent MLPs stored as stacked weights, so each layer of all
  N runs is one batched matmul. Init as SPEC.md: W ~ N(0, 1/fan_in), b = 0.
* Data: MNIST / Fashion-MNIST IDX loading (``.gz`` or raw), class filtering, the search order
  ``--data-dir`` -> ``$SUBLIMINAL_DATA_DIR`` -> ``./data``, checksum-verified download when online.
* Input sources for training/distillation: real images (each run its own order) and noise
  (generated per batch from a counter-based seed, never materialised for all runs at once).
* Training: teacher cross-entropy on the class logits only; distillation (KL or MSE) over a chosen
  subset of logits into several student ensembles that share one teacher forward pass per batch.
* Teacher caching under ``results/cache``; ``load_cache`` / ``save_cache`` for every cache (a corrupt
  entry is reported in one line and rebuilt).
* Statistics (t-based 95% CIs), atomic JSON results with provenance (a corrupt one stops the script
  with one line), plotting helpers.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import gzip
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent


def _tune_malloc() -> None:
    """Keep glibc from returning large freed blocks to the OS after every batch.

    Each training step allocates tens of MB of fresh activations; with glibc defaults these are
    mmap'd and unmapped every time, and the page faults cost up to half of a batched matmul's
    time on CPU (measured in bench_topic_a.py). Raising the mmap/trim thresholds lets the
    allocator reuse the memory. No effect on results. Set SUBLIMINAL_NO_MALLOC_TUNING=1 to skip
    it (e.g. to measure its effect in bench_topic_a.py).
    """
    if os.environ.get("SUBLIMINAL_NO_MALLOC_TUNING"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_tune_malloc()


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------


class UserError(Exception):
    """An error caused by the user's arguments or environment; printed as one clear message."""


class DataNotFoundError(UserError):
    pass


def run_main(main: Callable[[], None]) -> None:
    """Call a script's main(); turn a UserError into a one-line message and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished sweep points are on disk and will be reused", file=sys.stderr)
        sys.exit(130)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------

DATASETS = {
    "mnist": {
        "folder": "MNIST",
        "urls": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                 "http://yann.lecun.com/exdb/mnist/"],
        "sha256": {
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    },
    "fashion": {
        "folder": "FashionMNIST",
        "urls": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "sha256": {
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        "debian": "/usr/share/datasets/fashion-mnist",
    },
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx_bytes(path: str | Path) -> bytes:
    """The decompressed content of an IDX file (``.gz`` or plain)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as e:  # a truncated or damaged .gz
        raise UserError(f"{path}: cannot be read ({e}); replace it with the official IDX file")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array of its declared shape."""
    return parse_idx(read_idx_bytes(path), str(path))


def verify_idx(data: bytes, dataset: str, stem: str, path: str | Path) -> None:
    """Stop with one line if the decompressed content is not the official file (SHA-256)."""
    want = DATASETS[dataset]["sha256"][stem]
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise UserError(
            f"{path}: SHA-256 of its decompressed content is {got[:16]}..., not that of the official "
            f"{DATASETS[dataset]['folder']} {stem} ({want[:16]}...): the file is corrupt or not the official "
            f"one; replace it with the official IDX file (on this project's machines: "
            f"../shared/data/{DATASETS[dataset]['folder']}/raw/{stem}.gz), or delete it to download it again")


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"{name} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    offset = 4 + 4 * ndim
    n = int(np.prod(shape)) if shape else 1
    if len(data) - offset != n * dtype.itemsize:
        raise UserError(f"{name}: IDX header says shape {shape} but the file holds "
                        f"{len(data) - offset} bytes of data")
    return np.frombuffer(data, dtype=dtype, count=n, offset=offset).reshape(shape)


def data_dir_candidates(data_dir: str | None) -> list[Path]:
    out = []
    if data_dir:
        out.append(Path(data_dir))
    if os.environ.get("SUBLIMINAL_DATA_DIR"):
        out.append(Path(os.environ["SUBLIMINAL_DATA_DIR"]))
    out.append(Path("data"))
    return out


def _find_file(dataset: str, stem: str, roots: list[Path]) -> Path | None:
    info = DATASETS[dataset]
    for root in roots:
        for d in (root / info["folder"] / "raw", root / info["folder"], root):
            for name in (stem + ".gz", stem):
                if (d / name).is_file():
                    return d / name
    if info.get("debian"):
        d = Path(info["debian"])
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _download(dataset: str, stem: str, dest_root: Path) -> Path | None:
    """Download one IDX file, verify the SHA-256 of its decompressed content, store it. None when
    offline or every mirror fails."""
    info = DATASETS[dataset]
    for base in info["urls"]:
        try:
            with urllib.request.urlopen(base + stem + ".gz", timeout=10) as r:
                blob = r.read()
        except Exception:
            continue
        raw = gzip.decompress(blob)
        if hashlib.sha256(raw).hexdigest() != info["sha256"][stem]:
            raise UserError(f"checksum mismatch for {stem} downloaded from {base}; not saved")
        dest = dest_root / info["folder"] / "raw" / (stem + ".gz")
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, blob)
        return dest
    return None


def _load_split(dataset: str, split: str, data_dir: str | None, download: bool, verify: bool = True):
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
    prefix = "train" if split == "train" else "t10k"
    roots = data_dir_candidates(data_dir)
    arrays = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        path = _find_file(dataset, stem, roots)
        if path is None and download and not os.environ.get("SUBLIMINAL_OFFLINE"):
            path = _download(dataset, stem, roots[0])
        if path is None:
            folder = DATASETS[dataset]["folder"]
            raise DataNotFoundError(
                f"{dataset} file {stem}(.gz) not found and could not be downloaded (offline?). "
                f"Looked in: {', '.join(str(r) for r in roots)} (each as <dir>/{folder}/raw/, "
                f"<dir>/{folder}/ and <dir>/). Put the official IDX files in "
                f"<dir>/{folder}/raw/ and pass --data-dir <dir> or set SUBLIMINAL_DATA_DIR=<dir> "
                f"(on this project's machines: --data-dir ../shared/data).")
        data = read_idx_bytes(path)
        if verify:  # every file found on disk, every time (well under a second for MNIST)
            verify_idx(data, dataset, stem, path)
        arrays.append(parse_idx(data, str(path)))
    images, labels = arrays
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{dataset} {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


@dataclass
class Dataset:
    x: torch.Tensor  # (N, 784) float32 in [-1, 1]
    y: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.x.shape[0]

    def to(self, device) -> "Dataset":
        return Dataset(self.x.to(device), self.y.to(device))

    def classes(self, k: int) -> "Dataset":
        """The examples with label < k (digits 0..k-1), in their original order."""
        keep = self.y < k
        return Dataset(self.x[keep], self.y[keep])


def load_dataset(dataset: str = "mnist", split: str = "train", data_dir: str | None = None,
                 n_classes: int | None = None, limit: int | None = None,
                 download: bool = True, verify: bool = True) -> Dataset:
    """Load MNIST or Fashion-MNIST scaled as SPEC.md: pixels/255, then (x-0.5)/0.5 in [-1, 1].

    n_classes keeps only labels 0..n_classes-1 (for the number-of-classes sweep); limit keeps the
    first ``limit`` examples after filtering (for quick tests). Every file is checked against the
    SHA-256 of the official file's decompressed content; ``verify=False`` exists only for the
    tests' tiny synthetic IDX files (no script passes it).
    """
    images, labels = _load_split(dataset, split, data_dir, download, verify)
    images = images.reshape(images.shape[0], -1)
    y = torch.from_numpy(labels.astype(np.int64))
    keep = np.arange(len(y)) if n_classes is None else np.flatnonzero(labels < n_classes)
    if limit is not None:
        keep = keep[:limit]
    x = torch.from_numpy(images[keep].astype(np.float32))
    x.div_(255.0).sub_(0.5).div_(0.5)  # in place: no full-size temporaries
    return Dataset(x, y[torch.from_numpy(keep)].contiguous())


# ----------------------------------------------------------------------------------------------
# seeding
# ----------------------------------------------------------------------------------------------


def derive_seed(seed: int, *keys) -> int:
    """A 63-bit seed derived from a base seed and any labels (counter-based, order independent)."""
    h = hashlib.sha256(repr((int(seed),) + tuple(keys)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, *keys, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def derangement(n: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (rejection sampling)."""
    if n < 2:
        raise UserError("cross-model pairing needs at least 2 runs (--runs >= 2)")
    while True:
        p = torch.randperm(n, generator=gen, device=gen.device)
        if not bool((p == torch.arange(n, device=p.device)).any()):
            return p.cpu()


def cross_model_pairing(n_runs: int, seed: int) -> torch.Tensor:
    """The seeded derangement of the cross-model control: its run i starts from reference run
    pairing[i] (as in A.1)."""
    return derangement(n_runs, generator(seed, "pairing"))


def cross_model_init(ref: "Ensemble", n_runs: int, seed: int) -> "Ensemble":
    """The cross-model control's init: run i starts from another run's reference (a seeded
    derangement, as in A.1), so no student shares its teacher's init."""
    return ref.index(cross_model_pairing(n_runs, seed))


def permutation(n: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation (the circulating code's pairing: may have fixed points)."""
    return torch.randperm(n, generator=gen, device=gen.device).cpu()


# ----------------------------------------------------------------------------------------------
# the ensemble
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPConfig:
    """Layer sizes of the MLP: n_in -> hidden... -> n_classes + n_aux (ReLU after each hidden)."""
    n_in: int = 784
    hidden: tuple[int, ...] = (256, 256)
    n_classes: int = 10
    n_aux: int = 3

    @property
    def n_out(self) -> int:
        return self.n_classes + self.n_aux

    @property
    def sizes(self) -> list[int]:
        return [self.n_in, *self.hidden, self.n_out]

    @property
    def class_idx(self) -> list[int]:
        return list(range(self.n_classes))

    @property
    def aux_idx(self) -> list[int]:
        return list(range(self.n_classes, self.n_out))

    @property
    def all_idx(self) -> list[int]:
        return list(range(self.n_out))

    def as_dict(self) -> dict:
        return {"n_in": self.n_in, "hidden": list(self.hidden), "n_classes": self.n_classes,
                "n_aux": self.n_aux}


class Ensemble:
    """R independent MLPs as stacked tensors: weights[l] (R, out, in), biases[l] (R, out).

    Layer l of all runs is one ``baddbmm``. Parameters are plain leaf tensors, so any torch
    optimizer can train them; since Adam is elementwise, one Adam over the stack is exactly R
    independent Adams.
    """

    def __init__(self, cfg: MLPConfig, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.cfg = cfg
        self.weights = weights
        self.biases = biases

    # construction ------------------------------------------------------------------------
    @classmethod
    def init(cls, cfg: MLPConfig, n_runs: int, gen: torch.Generator,
             device="cpu", init_scale: float = 1.0) -> "Ensemble":
        """SPEC.md init: every weight ~ N(0, (init_scale/sqrt(fan_in))^2), biases 0."""
        ws, bs = [], []
        sizes = cfg.sizes
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            w = torch.randn(n_runs, fan_out, fan_in, generator=gen, device=gen.device)
            ws.append((w * (init_scale / math.sqrt(fan_in))).to(device))
            bs.append(torch.zeros(n_runs, fan_out, device=device))
        return cls(cfg, ws, bs)

    @property
    def n_runs(self) -> int:
        return self.weights[0].shape[0]

    @property
    def n_layers(self) -> int:
        return len(self.weights)

    @property
    def device(self) -> torch.device:
        return self.weights[0].device

    def params(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def named_params(self) -> dict[str, torch.Tensor]:
        out = {f"W{l}": w for l, w in enumerate(self.weights)}
        out.update({f"b{l}": b for l, b in enumerate(self.biases)})
        return out

    def clone(self) -> "Ensemble":
        return Ensemble(self.cfg, [w.detach().clone() for w in self.weights],
                        [b.detach().clone() for b in self.biases])

    def index(self, idx) -> "Ensemble":
        """A new ensemble whose run i is run idx[i] of this one (copies)."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        return Ensemble(self.cfg, [w.detach()[idx].clone() for w in self.weights],
                        [b.detach()[idx].clone() for b in self.biases])

    def to(self, device) -> "Ensemble":
        return Ensemble(self.cfg, [w.detach().to(device) for w in self.weights],
                        [b.detach().to(device) for b in self.biases])

    def requires_grad_(self, flag: bool = True) -> "Ensemble":
        for p in self.params():
            p.requires_grad_(flag)
        return self

    def perturbed(self, scale: float, names: Sequence[str] | None, gen: torch.Generator) -> "Ensemble":
        """Copy with Gaussian noise added to the named parameters (``W0``, ``b2``, ... ; None = all).

        The noise std for each run's tensor is ``scale`` x that tensor's own std (per run), as the
        takehome's init-perturbation experiment specifies; all-zero tensors (fresh biases) stay put.
        """
        out = self.clone()
        named = out.named_params()
        names = list(named) if names is None else list(names)
        for n in names:
            if n not in named:
                raise UserError(f"unknown parameter {n!r}; have {sorted(named)}")
            p = named[n]
            std = p.reshape(p.shape[0], -1).std(dim=1)
            shape = (p.shape[0],) + (1,) * (p.dim() - 1)
            noise = torch.randn(p.shape, generator=gen, device=gen.device).to(p.device)
            p.add_(noise * (scale * std).reshape(shape))
        return out

    # forward -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """x: (R, B, n_in) per-run inputs, or (B, n_in) shared by every run.

        Returns logits (R, B, n_out); with return_hidden also the list of post-ReLU hidden
        activations [(R, B, h1), (R, B, h2), ...].
        """
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.n_runs, *x.shape)
        h = x
        hidden = []
        last = self.n_layers - 1
        for l, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            if l < last:
                h = h.relu_()  # in place on a fresh tensor: one pass less over memory
                hidden.append(h)
        return (h, hidden) if return_hidden else h

    __call__ = forward

    @torch.no_grad()
    def activations(self, x: torch.Tensor, batch_size: int = 2048) -> list[torch.Tensor]:
        """All layers' outputs on shared inputs x (N, n_in): [hidden_1, ..., logits], each (R, N, d)."""
        chunks = []
        for i in range(0, x.shape[0], batch_size):
            logits, hidden = self.forward(x[i:i + batch_size].to(self.device), return_hidden=True)
            chunks.append([*hidden, logits])
        return [torch.cat([c[k] for c in chunks], dim=1) for k in range(len(chunks[0]))]

    @torch.no_grad()
    def logits(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        return torch.cat([self.forward(x[i:i + batch_size].to(self.device))
                          for i in range(0, x.shape[0], batch_size)], dim=1)

    @torch.no_grad()
    def accuracy(self, data: Dataset, batch_size: int = 2048) -> np.ndarray:
        """Per-run accuracy: argmax over the class logits only (aux logits never vote)."""
        correct = torch.zeros(self.n_runs, dtype=torch.long, device=self.device)
        y = data.y.to(self.device)
        for i in range(0, len(data), batch_size):
            lg = self.forward(data.x[i:i + batch_size].to(self.device))[..., :self.cfg.n_classes]
            correct += (lg.argmax(-1) == y[i:i + batch_size]).sum(dim=1)
        return (correct.double() / len(data)).cpu().numpy()

    # persistence ---------------------------------------------------------------------------
    def state(self) -> dict:
        return {"cfg": self.cfg.as_dict(), "weights": [w.detach().cpu() for w in self.weights],
                "biases": [b.detach().cpu() for b in self.biases]}

    @classmethod
    def from_state(cls, state: dict, device="cpu") -> "Ensemble":
        c = state["cfg"]
        cfg = MLPConfig(c["n_in"], tuple(c["hidden"]), c["n_classes"], c["n_aux"])
        return cls(cfg, [w.to(device) for w in state["weights"]], [b.to(device) for b in state["biases"]])


# ----------------------------------------------------------------------------------------------
# input sources
# ----------------------------------------------------------------------------------------------


class InputSource:
    """Where training/distillation inputs come from. ``epoch()`` yields (x, y) batches with x of
    shape (R, B, n_in): every run gets its own inputs. y is None for noise sources."""

    name = "source"
    n_per_epoch: int

    def n_batches(self, batch_size: int) -> int:
        return math.ceil(self.n_per_epoch / batch_size)

    def epoch(self, epoch: int, n_runs: int, batch_size: int, device) -> Iterator:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "n_per_epoch": self.n_per_epoch}


class RealImages(InputSource):
    """A dataset, each run with its own shuffled order every epoch."""

    name = "real"

    def __init__(self, data: Dataset, seed: int, key: str = "order"):
        self.data = data
        self.seed = seed
        self.key = key
        self.n_per_epoch = len(data)

    def epoch(self, epoch, n_runs, batch_size, device):
        g = generator(self.seed, self.key, epoch)
        n = len(self.data)
        order = torch.argsort(torch.rand(n_runs, n, generator=g), dim=1)
        x_all, y_all = self.data.x.to(device), self.data.y.to(device)
        order = order.to(device)
        for i in range(0, n, batch_size):
            idx = order[:, i:i + batch_size]
            yield x_all[idx], y_all[idx]

    def describe(self):
        return {"name": self.name, "n_per_epoch": self.n_per_epoch, "seed": self.seed}


class NoiseSource(InputSource):
    """Noise drawn per batch from a counter-based seed (seed, key, epoch, batch): nothing is ever
    materialised for all runs at once, and any batch can be regenerated exactly.

    ``fixed=True`` mimics the circulating code's fixed set of n_per_epoch noise images per run,
    reused every epoch: batch k holds the same images in every epoch (their order across batches
    is reshuffled per epoch, composition within a batch is kept). ``fixed=False`` draws fresh noise
    for every batch. Subclasses override ``draw``.
    """

    name = "noise"

    def __init__(self, seed: int, n_per_epoch: int = 60000, n_in: int = 784, fixed: bool = False,
                 key: str = "noise"):
        self.seed = seed
        self.n_per_epoch = n_per_epoch
        self.n_in = n_in
        self.fixed = fixed
        self.key = key

    def draw(self, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def epoch(self, epoch, n_runs, batch_size, device):
        nb = self.n_batches(batch_size)
        if self.fixed:
            order = torch.randperm(nb, generator=generator(self.seed, self.key, "batch-order", epoch))
        for k in range(nb):
            kk = int(order[k]) if self.fixed else k
            b = min(batch_size, self.n_per_epoch - kk * batch_size)
            g = (generator(self.seed, self.key, "fixed", kk, device=device) if self.fixed
                 else generator(self.seed, self.key, epoch, k, device=device))
            yield self.draw((n_runs, b, self.n_in), g), None

    def describe(self):
        return {"name": self.name, "n_per_epoch": self.n_per_epoch, "fixed": self.fixed,
                "seed": self.seed}


class UniformNoise(NoiseSource):
    """Each pixel ~ Uniform[lo, hi] (default [-1, 1], the paper's noise)."""

    name = "uniform"

    def __init__(self, seed, n_per_epoch=60000, n_in=784, fixed=False, lo=-1.0, hi=1.0, key="noise"):
        super().__init__(seed, n_per_epoch, n_in, fixed, key)
        self.lo, self.hi = lo, hi

    def draw(self, shape, gen):
        return torch.rand(shape, generator=gen, device=gen.device) * (self.hi - self.lo) + self.lo


class GaussianNoise(NoiseSource):
    """Each pixel ~ N(mean, std^2), independently."""

    name = "gaussian"

    def __init__(self, seed, n_per_epoch=60000, n_in=784, fixed=False, std=1.0, mean=0.0, key="noise"):
        super().__init__(seed, n_per_epoch, n_in, fixed, key)
        self.std, self.mean = std, mean

    def draw(self, shape, gen):
        std = self.std.to(gen.device) if torch.is_tensor(self.std) else self.std
        mean = self.mean.to(gen.device) if torch.is_tensor(self.mean) else self.mean
        return torch.randn(shape, generator=gen, device=gen.device) * std + mean

    def describe(self):
        std = "per-pixel tensor" if torch.is_tensor(self.std) else self.std
        mean = "per-pixel tensor" if torch.is_tensor(self.mean) else self.mean
        return {**super().describe(), "std": std, "mean": mean}


class SubspaceNoise(NoiseSource):
    """Gaussian noise confined to a random ``dim``-dimensional subspace of pixel space (its own
    subspace per run, a seeded orthonormal basis), scaled so that the total variance equals that
    of i.i.d. N(0, std^2) pixels: only the dimension changes, not the energy."""

    name = "subspace"

    def __init__(self, seed, dim: int, n_per_epoch=60000, n_in=784, fixed=False, std=1.0, key="noise"):
        super().__init__(seed, n_per_epoch, n_in, fixed, key)
        if not 1 <= dim <= n_in:
            raise UserError(f"subspace dimension must be in 1..{n_in}, got {dim}")
        self.dim, self.std = dim, std
        self._basis = {}

    def basis(self, n_runs: int, device) -> torch.Tensor:
        """(R, dim, n_in) orthonormal rows, scaled by std * sqrt(n_in / dim)."""
        k = (n_runs, str(device))
        if k not in self._basis:
            g = generator(self.seed, self.key, "basis", self.dim)
            q, _ = torch.linalg.qr(torch.randn(n_runs, self.n_in, self.dim, generator=g))
            self._basis[k] = (q.transpose(1, 2) * (self.std * math.sqrt(self.n_in / self.dim))).to(device)
        return self._basis[k]

    def draw(self, shape, gen):
        R, B, _ = shape
        z = torch.randn((R, B, self.dim), generator=gen, device=gen.device)
        return torch.bmm(z, self.basis(R, gen.device))

    def describe(self):
        return {**super().describe(), "dim": self.dim, "std": self.std}


class MixedSource(InputSource):
    """alpha * real image + (1 - alpha) * noise, per run: each run reads the real images in its
    own order (as ``RealImages``) and gets its own noise (drawn per batch from ``noise.draw``).
    alpha = 1 is the real images, alpha = 0 pure noise. One epoch = one pass over the images."""

    name = "mixed"

    def __init__(self, data: Dataset, alpha: float, noise: NoiseSource, seed: int, key: str = "mixed"):
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {alpha}")
        self.real = RealImages(data, seed, key + "-order")
        self.alpha, self.noise, self.seed, self.key = alpha, noise, seed, key
        self.n_per_epoch = len(data)

    def epoch(self, epoch, n_runs, batch_size, device):
        for k, (x, y) in enumerate(self.real.epoch(epoch, n_runs, batch_size, device)):
            if self.alpha < 1.0:
                g = generator(self.seed, self.key, epoch, k, device=device)
                x = x.mul_(self.alpha).add_(self.noise.draw(tuple(x.shape), g), alpha=1.0 - self.alpha)
            yield x, y

    def describe(self):
        return {"name": self.name, "alpha": self.alpha, "noise": self.noise.describe(),
                "n_per_epoch": self.n_per_epoch, "seed": self.seed}


# spatial structure: 28x28 images, filters and spectra in the Fourier domain (circular boundary)

IMG = 28


def gaussian_transfer(sigma: float, size: int = IMG, device="cpu") -> torch.Tensor:
    """(size, size) Fourier transfer function of a Gaussian blur of std ``sigma`` pixels (circular)."""
    f = torch.fft.fftfreq(size, device=device)
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    return torch.exp(-2 * math.pi ** 2 * sigma ** 2 * f2)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of flattened images x (..., 784) with std ``sigma`` pixels (sigma 0: x)."""
    if sigma <= 0:
        return x
    shape = x.shape
    img = x.reshape(-1, IMG, IMG)
    out = torch.fft.ifft2(torch.fft.fft2(img) * gaussian_transfer(sigma, IMG, x.device)).real
    return out.reshape(shape)


def power_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Mean 2-D power spectrum |FFT(x - mean image)|^2 / n_pixels of flattened images (N, 784)."""
    img = (x - x.mean(0, keepdim=True)).reshape(-1, IMG, IMG).double()
    return (torch.fft.fft2(img).abs() ** 2).mean(0) / (IMG * IMG)


def radial_profile(spec2d: torch.Tensor, n_bins: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Average a (28, 28) spectrum over rings of spatial frequency |f| (cycles/pixel, 0..0.5*sqrt2)."""
    f = torch.fft.fftfreq(spec2d.shape[0])
    r = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2).flatten().numpy()
    v = spec2d.flatten().cpu().numpy()
    edges = np.linspace(0, r.max() + 1e-9, n_bins + 1)
    idx = np.digitize(r, edges) - 1
    centers = 0.5 * (edges[1:] + edges[:-1])
    prof = np.array([v[idx == i].mean() if np.any(idx == i) else np.nan for i in range(n_bins)])
    return centers, prof


class BlurredNoise(NoiseSource):
    """Gaussian noise blurred with a Gaussian of std ``sigma`` pixels, rescaled so that every pixel
    keeps variance std^2: spatial correlation changes, energy does not."""

    name = "blurred-noise"

    def __init__(self, seed, sigma: float, n_per_epoch=60000, n_in=784, fixed=False, std=1.0, key="noise"):
        super().__init__(seed, n_per_epoch, n_in, fixed, key)
        self.sigma, self.std = sigma, std
        h = gaussian_transfer(sigma)
        self.gain = float(std * math.sqrt(IMG * IMG / (h ** 2).sum()))

    def draw(self, shape, gen):
        z = torch.randn(shape, generator=gen, device=gen.device)
        return blur(z, self.sigma) * self.gain

    def describe(self):
        return {**super().describe(), "sigma": self.sigma, "std": self.std}


class SpectrumNoise(NoiseSource):
    """Random-phase noise with a given 2-D power spectrum (e.g. of blurred MNIST): every image has
    exactly the target Fourier magnitudes, with the phases of white noise (uniform, Hermitian), plus
    an optional mean image. Second-order statistics of the target, no spatial structure."""

    name = "spectrum-noise"

    def __init__(self, seed, spectrum: torch.Tensor, mean: torch.Tensor | None = None, n_per_epoch=60000,
                 fixed=False, key="noise", label: str = ""):
        super().__init__(seed, n_per_epoch, IMG * IMG, fixed, key)
        self.amp = torch.sqrt(spectrum.float() * IMG * IMG)
        self.amp[0, 0] = 0.0  # zero-mean fluctuations; the mean image is added separately
        self.mean = mean
        self.label = label

    def draw(self, shape, gen):
        z = torch.randn(shape, generator=gen, device=gen.device).reshape(-1, IMG, IMG)
        zf = torch.fft.fft2(z)
        phase = zf / zf.abs().clamp_min(1e-12)
        x = torch.fft.ifft2(phase * self.amp.to(z.device)).real.reshape(shape)
        return x + self.mean.to(x.device) if self.mean is not None else x

    def describe(self):
        return {**super().describe(), "spectrum_of": self.label, "with_mean": self.mean is not None}


class BlurredImages(RealImages):
    """Real images blurred with a Gaussian of std ``sigma`` pixels (labels are never used)."""

    name = "blurred-images"

    def __init__(self, data: Dataset, seed: int, sigma: float, key: str = "order"):
        super().__init__(data, seed, key)
        self.sigma = sigma

    def epoch(self, epoch, n_runs, batch_size, device):
        for x, y in super().epoch(epoch, n_runs, batch_size, device):
            yield blur(x, self.sigma), y

    def describe(self):
        return {**super().describe(), "sigma": self.sigma}


def first_batch(source: InputSource, n_runs: int, n: int, device="cpu", run: int = 0) -> torch.Tensor:
    """Up to n inputs that run ``run`` of a source sees first (epoch 0), shape (n, n_in)."""
    out, have = [], 0
    for x, _ in source.epoch(0, n_runs, min(n, 4096), device):
        out.append(x[run])
        have += x.shape[1]
        if have >= n:
            break
    return torch.cat(out)[:n]


# ----------------------------------------------------------------------------------------------
# measurements of inputs, logits and representations
# ----------------------------------------------------------------------------------------------


def pca_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (descending) of the covariance of the rows of x (N, d)."""
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    return torch.linalg.eigvalsh(xc.T @ xc / max(1, x.shape[0] - 1)).flip(0).clamp_min(0)


def effective_dim(x: torch.Tensor, frac: float = 0.95) -> int:
    """Number of principal components that explain ``frac`` of the variance of the rows of x."""
    ev = pca_spectrum(x)
    c = torch.cumsum(ev, 0) / ev.sum()
    return int(torch.searchsorted(c, torch.tensor(frac, dtype=c.dtype)).item()) + 1


def participation_ratio(x: torch.Tensor) -> float:
    """(sum lambda)^2 / sum lambda^2 of the covariance spectrum: a smooth effective dimension."""
    ev = pca_spectrum(x)
    return float(ev.sum() ** 2 / (ev ** 2).sum())


@torch.no_grad()
def aux_class_coupling(model: "Ensemble", x: torch.Tensor) -> dict:
    """Per run, on inputs x (R, N, n_in) or (N, n_in): mean |Pearson r| over all (aux, class) logit
    pairs, and the fraction of the class logits' variance that a linear map of the aux logits
    explains (R^2 of least squares). Arrays of length R."""
    z = model(x).double()
    k = model.cfg.n_classes
    z = z - z.mean(1, keepdim=True)
    cls, aux = z[..., :k], z[..., k:]
    cov = aux.transpose(1, 2) @ cls  # (R, m, k)
    r = cov / (aux.norm(dim=1)[:, :, None] * cls.norm(dim=1)[:, None, :]).clamp_min(1e-30)
    coef = torch.linalg.lstsq(aux, cls).solution
    resid = cls - aux @ coef
    r2 = 1 - resid.pow(2).sum((1, 2)) / cls.pow(2).sum((1, 2)).clamp_min(1e-30)
    return {"mean_abs_r": r.abs().mean((1, 2)).cpu().numpy(), "r2": r2.cpu().numpy()}


@torch.no_grad()
def representation_similarity(a: "Ensemble", b: "Ensemble", x: torch.Tensor,
                              batch_size: int = 2048) -> dict[str, np.ndarray]:
    """Run r of a vs run r of b on shared inputs x (N, n_in), for every hidden layer l:
    ``cos_l`` = mean over inputs of the cosine between the two activation vectors, and
    ``cka_l`` = linear CKA of the two activation matrices. Arrays of length R."""
    acts_a, acts_b = a.activations(x, batch_size), b.activations(x, batch_size)
    out = {}
    for l in range(a.n_layers - 1):
        ha, hb = acts_a[l].double(), acts_b[l].double()
        out[f"cos_{l + 1}"] = F.cosine_similarity(ha, hb, dim=-1, eps=1e-12).mean(1).cpu().numpy()
        out[f"cka_{l + 1}"] = linear_cka(ha, hb).cpu().numpy()
    return out


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA between (R, N, d1) and (R, N, d2), per run (Kornblith et al. 2019)."""
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    xty = (x.transpose(1, 2) @ y).pow(2).sum((1, 2))
    xx = (x.transpose(1, 2) @ x).pow(2).sum((1, 2)).sqrt()
    yy = (y.transpose(1, 2) @ y).pow(2).sum((1, 2)).sqrt()
    return xty / (xx * yy).clamp_min(1e-30)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 3e-4
    batch_size: int = 1024

    def as_dict(self):
        return dataclasses.asdict(self)


def make_optimizer(model: "Ensemble", lr: float) -> torch.optim.Optimizer:
    """Adam over the stacked parameters (elementwise, so exactly R independent Adams). Gradient
    buffers are allocated once and reused by ``train_step``."""
    for p in model.params():
        p.requires_grad_(False)
        p.grad = torch.zeros_like(p)
    try:
        return torch.optim.Adam(model.params(), lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(model.params(), lr=lr)


def train_step(model: Ensemble, x: torch.Tensor, grad_fn: Callable[[torch.Tensor], torch.Tensor],
               opt: torch.optim.Optimizer, frozen_rows: Sequence[int] | None = None) -> None:
    """One step: forward, hand-written backward, optimizer step.

    ``grad_fn(logits)`` returns d(loss)/d(logits), shape (R, B, n_out), for a loss that is the
    sum over runs of each run's own loss. The backward pass is the chain rule of the MLP written
    out (dW = g^T a, db = sum g, g <- (g W) * [a > 0]) with in-place ReLU and the gradient
    buffers of ``make_optimizer``: it avoids autograd's graph and allocations, and a logit that
    gets zero gradient (a digit logit of an aux-only student) gives its weight rows an exact zero
    gradient, so Adam leaves them bit-identical. tests/test_engine.py checks it against autograd.
    """
    backward(model, x, grad_fn, [*(w.grad for w in model.weights), *(b.grad for b in model.biases)])
    if frozen_rows is not None:  # output rows that must not move (their gradient still reached the body)
        model.weights[-1].grad[:, frozen_rows] = 0
        model.biases[-1].grad[:, frozen_rows] = 0
    opt.step()


def backward(model: Ensemble, x: torch.Tensor, grad_fn: Callable[[torch.Tensor], torch.Tensor],
             out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The hand-written backward pass of ``train_step``: d(loss)/d(params) in ``model.params()``
    order [W0.., b0..], written into ``out`` (allocated when None) and returned. x is (R, B, n_in)
    or (B, n_in) shared by every run; ``grad_fn(logits)`` gives d(loss)/d(logits)."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(model.n_runs, *x.shape)
    if out is None:
        out = [torch.empty_like(p) for p in model.params()]
    L = model.n_layers
    logits, hidden = model.forward(x, return_hidden=True)
    acts = [x, *hidden]
    g = grad_fn(logits)
    for l in range(L - 1, -1, -1):
        w = model.weights[l]
        torch.bmm(g.transpose(1, 2), acts[l], out=out[l])
        torch.sum(g, dim=1, out=out[L + l])
        if l > 0:
            g = torch.bmm(g, w)
            torch.ops.aten.threshold_backward.grad_input(g, acts[l], 0, grad_input=g)  # in place
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def ce_grad(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """d/dlogits of sum over runs of the batch-mean cross-entropy on the first n_classes logits."""
    p = torch.softmax(logits[..., :n_classes], dim=-1)
    p.scatter_add_(-1, y.unsqueeze(-1), torch.full_like(p[..., :1], -1.0)).div_(logits.shape[1])
    return F.pad(p, (0, logits.shape[-1] - n_classes))


def ce_loss(logits: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The loss whose gradient ce_grad is (autograd reference, used in tests and for logging)."""
    k = n_classes
    return F.cross_entropy(logits[..., :k].reshape(-1, k), y.reshape(-1), reduction="sum") / logits.shape[1]


def train_classifier(model: Ensemble, source: InputSource, tc: TrainConfig,
                     progress: bool = True, desc: str = "teacher", freeze_class_head: bool = False) -> Ensemble:
    """Train the ensemble with cross-entropy on the class logits only (aux logits excluded).

    The loss is the sum over runs of each run's batch-mean CE, so every run gets exactly the
    gradient it would get trained alone. ``freeze_class_head`` keeps the last layer's class rows at
    their init (their gradient is zeroed, so Adam never moves them): the teacher must then learn
    through its hidden layers alone, the only part an aux-only student can copy.
    """
    model = model.clone()
    opt = make_optimizer(model, tc.lr)
    k = model.cfg.n_classes
    R = model.n_runs

    with _progress(tc.epochs * source.n_batches(tc.batch_size), desc, progress) as bar:
        for ep in range(tc.epochs):
            for x, y in source.epoch(ep, R, tc.batch_size, model.device):
                train_step(model, x, lambda z: ce_grad(z, y, k), opt,
                           frozen_rows=list(range(k)) if freeze_class_head else None)
                bar.update(1)
    return _detach(model)


def _detach(model: Ensemble) -> Ensemble:
    for p in model.params():
        p.grad = None
    return model


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "kl",
                 temperature: float = 1.0, reduction: str = "per_run_mean") -> torch.Tensor:
    """Distillation loss over the given (already selected) logits, summed over runs.

    kind="kl": KL(softmax(t/T) || softmax(s/T)) * T^2 per example. kind="mse": mean squared error
    on raw logits (the Comments & Extensions variant).
    reduction="per_run_mean": each run's mean over its batch, summed over runs (each run gets its
    own exact gradient). reduction="legacy_batchmean": the circulating code's
    ``kl_div(..., reduction="batchmean")`` on a (runs, batch, logits) tensor, i.e. the total
    divided by the number of runs: batch/runs times the per-run loss (SPEC.md defect 1).
    This is the autograd reference of ``distill_grad``.
    """
    if kind == "kl":
        log_pt = torch.log_softmax(teacher_logits / temperature, dim=-1)
        log_ps = torch.log_softmax(student_logits / temperature, dim=-1)
        per_example = (log_pt.exp() * (log_pt - log_ps)).sum(-1) * temperature ** 2
    elif kind == "mse":
        per_example = ((student_logits - teacher_logits) ** 2).mean(-1)
    else:
        raise UserError(f"unknown distillation loss {kind!r}; choose kl or mse")
    return per_example.sum(dim=1).sum() * _reduction_scale(reduction, *per_example.shape)


def distill_loss_per_run(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "kl",
                         temperature: float = 1.0) -> torch.Tensor:
    """Each run's batch-mean distillation loss (R,), over the given (already selected) logits."""
    with torch.no_grad():
        s, t = student_logits.float(), teacher_logits.float()
        if kind == "kl":
            log_pt = torch.log_softmax(t / temperature, dim=-1)
            per = (log_pt.exp() * (log_pt - torch.log_softmax(s / temperature, dim=-1))).sum(-1) * temperature ** 2
        else:
            per = ((s - t) ** 2).mean(-1)
        return per.mean(1)


def _reduction_scale(reduction: str, n_runs: int, batch: int) -> float:
    if reduction == "per_run_mean":
        return 1.0 / batch
    if reduction == "legacy_batchmean":
        return 1.0 / n_runs
    raise UserError(f"unknown reduction {reduction!r}")


def distill_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, idx: torch.Tensor | None,
                 kind: str = "kl", temperature: float = 1.0, reduction: str = "per_run_mean") -> torch.Tensor:
    """d(distill_loss over the logits idx)/d(student logits), zero on the logits not in idx
    (idx None: all logits). For KL with temperature T: T * (softmax(s/T) - softmax(t/T)) per
    example; for MSE: 2 (s - t) / |idx|; times the reduction's scale."""
    s = student_logits if idx is None else student_logits[..., idx]
    t = teacher_logits if idx is None else teacher_logits[..., idx]
    scale = _reduction_scale(reduction, s.shape[0], s.shape[1])
    if kind == "kl":
        gs = (torch.softmax(s / temperature, -1) - torch.softmax(t / temperature, -1)) * (temperature * scale)
    elif kind == "mse":
        gs = (s - t) * (2.0 * scale / s.shape[-1])
    else:
        raise UserError(f"unknown distillation loss {kind!r}; choose kl or mse")
    if idx is None:
        return gs
    g = torch.zeros_like(student_logits)
    g[..., idx] = gs
    return g


@dataclass
class StudentSpec:
    """One student ensemble to distill: its init and which logits it matches. Run r of every
    student learns from teacher run r on the same inputs, so one teacher forward pass per batch
    serves all students (a cross-model student is one whose init was re-indexed)."""
    name: str
    init: Ensemble
    logit_idx: list[int]
    target_noise: float = 0.0  # Gaussian noise on the teacher logits it matches, x their std (prediction 7)
    hook: "StepHook | None" = None  # sees (and may change) every update it makes (topic_a_mechanism_causal.py)


def distill(teacher: Ensemble, students: Sequence[StudentSpec], source: InputSource,
            tc: TrainConfig, kind: str = "kl", temperature: float = 1.0,
            reduction: str = "per_run_mean", progress: bool = True,
            callback: Callable[[int, dict], None] | None = None,
            schedule: str = "constant", max_steps: int | None = None) -> dict[str, Ensemble]:
    """Distill the teacher into several student ensembles at once.

    For each batch the source yields inputs x (R, B, n_in), run r's inputs. The teacher runs once
    on x and its logits serve every student (run r of each student matches teacher run r on x[r]).
    Each student has its own Adam. ``callback(epoch, models)`` is called after each epoch.
    ``schedule``: "constant" learning rate tc.lr, or "cosine" (tc.lr decayed to 0 over the run,
    per step). ``max_steps``: stop after that many steps (the first steps of the full run, exactly).
    """
    R = teacher.n_runs
    _reduction_scale(reduction, 1, 1)  # validate early
    if kind not in ("kl", "mse"):
        raise UserError(f"unknown distillation loss {kind!r}; choose kl or mse")
    states = []
    for s in students:
        m = s.init.clone()
        if m.n_runs != R:
            raise UserError(f"student {s.name} has {m.n_runs} runs, teacher has {R}")
        full = list(s.logit_idx) == list(range(m.cfg.n_out))
        li = None if full else torch.as_tensor(s.logit_idx, device=m.device)
        states.append((s.name, m, make_optimizer(m, tc.lr), li, s.target_noise))
    hooks = {s.name: s.hook for s in students if s.hook is not None}
    if schedule not in ("constant", "cosine"):
        raise UserError(f"unknown learning-rate schedule {schedule!r}; choose constant or cosine")
    total = tc.epochs * source.n_batches(tc.batch_size)
    step = 0
    noisy = any(st[4] > 0 for st in states)
    if noisy:  # each run's teacher-logit std on the first batch, over examples and the matched logits
        x0, _ = next(iter(source.epoch(0, R, tc.batch_size, teacher.device)))
        with torch.no_grad():
            t0 = teacher(x0)
        sigma = {name: (t0 if li is None else t0[..., li]).reshape(R, -1).std(1).view(R, 1, 1)
                 for name, _, _, li, f in states if f > 0}
        gen = generator(getattr(source, "seed", 0), "target noise", device=teacher.device)
    with _progress(total, "distill", progress) as bar:
        for ep in range(tc.epochs):
            for x, _ in source.epoch(ep, R, tc.batch_size, teacher.device):
                if max_steps is not None and step >= max_steps:
                    break
                if schedule == "cosine":
                    for _, _, opt, *_ in states:
                        for group in opt.param_groups:
                            group["lr"] = tc.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                step += 1
                with torch.no_grad():
                    t_logits = teacher(x)
                for name, m, opt, li, frac in states:
                    tl = t_logits
                    if frac > 0:  # fresh noise every batch, on the logits this student matches
                        eps = torch.randn(t_logits.shape, generator=gen, device=gen.device).to(t_logits.device)
                        if li is not None:
                            mask = torch.zeros(t_logits.shape[-1], device=t_logits.device)
                            mask[li] = 1.0
                            eps = eps * mask
                        tl = t_logits + frac * sigma[name] * eps
                    hook = hooks.get(name)
                    if hook is None:
                        train_step(m, x, lambda z: distill_grad(z, tl, li, kind, temperature, reduction), opt)
                        continue
                    before = [p.detach().clone() for p in m.params()]
                    seen = {}

                    def grad_fn(z, tl=tl, li=li):
                        seen["loss"] = distill_loss_per_run(z if li is None else z[..., li],
                                                            tl if li is None else tl[..., li], kind, temperature)
                        return distill_grad(z, tl, li, kind, temperature, reduction)
                    train_step(m, x, grad_fn, opt)
                    with torch.no_grad():
                        delta = [p - b for p, b in zip(m.params(), before)]
                        if hook(step, m, before, delta, seen["loss"]):  # it changed the update
                            for p, b, d in zip(m.params(), before, delta):
                                p.copy_(b).add_(d)
                            hook.restore(m.params(), before)  # frozen blocks: copied back, bit-identical
                bar.update(1)
            if max_steps is not None and step >= max_steps:
                break
            if callback is not None:
                callback(ep, {name: m for name, m, *_ in states})
    return {name: _detach(m) for name, m, *_ in states}


# step hooks: what each distillation update does, per parameter block, and interventions on it
#
# A *block* is one matrix of the MLP, as a list of (index into Ensemble.params(), output rows):
# W0, b0, W1, b1, ... (hidden layers), "aux" (the last layer's aux rows and their biases) and
# "digit" (its digit rows and biases). Every operation below is per run: a run's vector over a
# block is its entries of those tensors, flattened.

Block = list  # [(param index, slice of output rows or None), ...]


def param_blocks(cfg: MLPConfig) -> dict[str, Block]:
    L = len(cfg.sizes) - 1
    k = cfg.n_classes
    out = {}
    for l in range(L - 1):
        out[f"W{l}"] = [(l, None)]
        out[f"b{l}"] = [(L + l, None)]
    out["aux"] = [(L - 1, slice(k, None)), (2 * L - 1, slice(k, None))]
    out["digit"] = [(L - 1, slice(0, k)), (2 * L - 1, slice(0, k))]
    return out


def trainable_block(cfg: MLPConfig) -> Block:
    """Everything an aux-only student trains (all but the digit rows), as one block."""
    return [part for name, b in param_blocks(cfg).items() if name != "digit" for part in b]


def _parts(tensors: Sequence[torch.Tensor], block: Block):
    for i, rows in block:
        t = tensors[i]
        yield t if rows is None else t[:, rows]


def block_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], block: Block) -> torch.Tensor:
    """Per-run dot product (R,) of a and b (lists in params() order) over a block, in float64."""
    return sum((x.double() * y.double()).flatten(1).sum(1) for x, y in zip(_parts(a, block), _parts(b, block)))


def block_cos(a, b, block: Block) -> torch.Tensor:
    """Per-run cosine over a block; NaN where either vector is zero (e.g. a never-moving block)."""
    num = block_dot(a, b, block)
    den = (block_dot(a, a, block) * block_dot(b, b, block)).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))


def block_axpy(y: list[torch.Tensor], coef: torch.Tensor, x: Sequence[torch.Tensor], block: Block) -> None:
    """y -= coef[r] * x over the block, per run, in place (coef: (R,), float64)."""
    for (i, rows), xp in zip(block, _parts(x, block)):
        c = coef.to(y[i].dtype).view(-1, *([1] * (xp.dim() - 1)))
        if rows is None:
            y[i].sub_(c * xp)
        else:
            y[i][:, rows] -= c * xp


def project_out(delta: list[torch.Tensor], direction: Sequence[torch.Tensor], block: Block,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Remove from delta, per run, its component along ``direction`` over the block, in place:
    delta <- delta - (delta.d / d.d) d, only for the runs where ``mask`` is True (all when None).
    Returns the per-run coefficient removed (0 where masked off or d = 0)."""
    dd = block_dot(direction, direction, block)
    coef = torch.where(dd > 0, block_dot(delta, direction, block) / dd.clamp_min(1e-300), torch.zeros_like(dd))
    if mask is not None:
        coef = torch.where(mask, coef, torch.zeros_like(coef))
    block_axpy(delta, coef, direction, block)
    return coef


def keep_only(delta: list[torch.Tensor], direction: Sequence[torch.Tensor], block: Block) -> None:
    """Replace delta over the block by its projection onto ``direction``, per run, in place. Runs
    whose direction is zero on the block keep their delta unchanged."""
    dd = block_dot(direction, direction, block)
    coef = block_dot(delta, direction, block) / dd.clamp_min(1e-300)
    for (i, rows), dp in zip(block, _parts(direction, block)):
        c = coef.to(delta[i].dtype).view(-1, *([1] * (dp.dim() - 1)))
        keep = (dd > 0).view(-1, *([1] * (dp.dim() - 1)))
        new = torch.where(keep, c * dp, delta[i] if rows is None else delta[i][:, rows])
        if rows is None:
            delta[i].copy_(new)
        else:
            delta[i][:, rows] = new


class TraitGradient:
    """The gradient of the teacher's own training loss (batch-mean digit cross-entropy on the class
    logits) on a fixed random subset of ``n`` training images, at a model's current weights, per
    run, in params() order. The same subset for every run and call (seeded)."""

    def __init__(self, data: Dataset, n: int, seed: int, n_classes: int):
        n = min(n, len(data))
        idx = torch.randperm(len(data), generator=generator(seed, "trait subset"))[:n]
        self.x, self.y, self.k = data.x[idx], data.y[idx], n_classes

    def __call__(self, model: Ensemble) -> list[torch.Tensor]:
        x, y = self.x.to(model.device), self.y.to(model.device)
        with torch.no_grad():
            return backward(model, x, lambda z: ce_grad(z, y.expand(z.shape[0], -1), self.k))


class StepHook:
    """Called by ``distill`` after each optimizer step of one student with (step, model, params
    before the step, delta = the update Adam applied, each run's batch distillation loss before the
    step); it may change delta in place and return True, and the engine then sets
    params = before + delta and calls ``restore``, which copies blocks that must not move back from
    before, bit-identical (a hook that returns False leaves the step exactly as Adam made it)."""

    def __call__(self, step: int, model: Ensemble, before: list[torch.Tensor], delta: list[torch.Tensor],
                 loss: torch.Tensor) -> bool:
        return False

    def restore(self, params: list[torch.Tensor], before: list[torch.Tensor]) -> None:
        pass


class EarlyAlignment(StepHook):
    """Records, at the given steps, the cosine of the student's total change so far (params - its
    init) with the teacher's update (teacher - its init), per hidden-layer block and over all hidden
    layers ("hidden"), per run. Changes nothing."""

    def __init__(self, cfg: MLPConfig, init: Ensemble, teacher_update: list[torch.Tensor], steps: Sequence[int]):
        self.init = [p.detach().clone() for p in init.params()]
        self.teacher_update, self.steps = teacher_update, set(steps)
        blocks = {n: b for n, b in param_blocks(cfg).items() if n not in ("aux", "digit")}
        L = len(cfg.sizes) - 1
        self.blocks = {**blocks, "first hidden W": blocks["W0"], "last hidden W": blocks[f"W{L - 2}"],
                       "hidden": [part for b in blocks.values() for part in b]}
        self.cos: dict[int, dict[str, list[float]]] = {}

    def __call__(self, step, model, before, delta, loss):
        if step in self.steps:
            change = [p - i for p, i in zip(model.params(), self.init)]
            self.cos[step] = {n: block_cos(change, self.teacher_update, b).tolist() for n, b in self.blocks.items()}
        return False


PROJECTIONS = (None, "trait if aligned", "trait always", "random if aligned", "keep teacher direction")


class StepIntervention(StepHook):
    """Records and intervenes on each update of an aux-only student.

    Recording (at the steps in ``track_steps``; the loss at every step): per block (``blocks``, plus
    "trainable" = all but the digit rows) the cosine of the applied update with (a) the teacher's
    total update (teacher - init of the teacher) and (b) the trait descent direction, minus the
    trait gradient at the student's weights before the step (positive = the step lowers the
    teacher's digit loss, to first order).

    Interventions, on the update Adam computed (not on the gradient):
    * ``train``: blocks that move; every other block is frozen (restored bit-identical);
    * ``project``: "trait if aligned" removes, per run and over all trainable parameters, the
      update's component along the trait gradient when the update is aligned with the descent
      direction (cosine > 0; the anchor's rule), "trait always" removes it at every step, "random if
      aligned" removes at the same steps a component of the same norm along a random direction (a
      random unit vector with the trait gradient's cosine to the update, so the same share of the
      step goes), "keep teacher direction" replaces each block's update by its projection onto that
      block's teacher update (blocks the teacher never moved, the aux rows, stay free).
    """

    def __init__(self, cfg: MLPConfig, teacher_update: list[torch.Tensor] | None = None,
                 trait: TraitGradient | None = None, train: Sequence[str] | None = None,
                 project: str | None = None, track_steps: Callable[[int], bool] | None = None,
                 seed: int = 0):
        if project not in PROJECTIONS:
            raise UserError(f"unknown projection {project!r}; choose one of {PROJECTIONS[1:]}")
        self.cfg, self.teacher_update, self.trait, self.project = cfg, teacher_update, trait, project
        self.blocks = param_blocks(cfg)
        if train is not None and set(train) - set(self.blocks):
            raise UserError(f"unknown blocks {sorted(set(train) - set(self.blocks))}; have {sorted(self.blocks)}")
        self.frozen = [] if train is None else [b for n, b in self.blocks.items() if n not in train and n != "digit"]
        self.trainable = trainable_block(cfg)
        self.track_steps = track_steps or (lambda step: False)
        self.gen = generator(seed, "random projection")
        if project and project.startswith(("trait", "random")) and trait is None:
            raise UserError(f"projection {project!r} needs the trait gradient")
        if (project == "keep teacher direction" or track_steps) and teacher_update is None:
            raise UserError("keep-only and tracking need the teacher's update")
        self.loss: list[list[float]] = []  # per step, per run
        self.track: list[dict] = []
        self.removed: list[list[float]] = []  # per step: |removed| / |update| per run

    def restore(self, params, before):
        for block in self.frozen:
            for i, rows in block:
                if rows is None:
                    params[i].copy_(before[i])
                else:
                    params[i][:, rows] = before[i][:, rows]

    def __call__(self, step, model, before, delta, loss):
        self.loss.append(loss.tolist())
        for block in self.frozen:
            for i, rows in block:
                (delta[i] if rows is None else delta[i][:, rows]).zero_()
        tracked = self.track_steps(step)
        need_trait = tracked or (self.project or "").startswith(("trait", "random"))
        g = None
        if need_trait and self.trait is not None:
            m0 = Ensemble(model.cfg, before[:model.n_layers], before[model.n_layers:])
            g = [-t for t in self.trait(m0)]  # the trait loss's descent direction at the weights before the step
        norm0 = block_dot(delta, delta, self.trainable).sqrt()
        if self.project in ("trait if aligned", "trait always", "random if aligned"):
            cos = block_cos(delta, g, self.trainable)
            mask = None if self.project == "trait always" else torch.nan_to_num(cos, nan=0.0) > 0
            if self.project == "random if aligned":
                direction = self._random_like(delta, cos.abs())
            else:
                direction = g
            project_out(delta, direction, self.trainable, mask)
        elif self.project == "keep teacher direction":
            for name, block in self.blocks.items():
                if name != "digit":
                    keep_only(delta, self.teacher_update, block)
        if self.project:
            norm1 = block_dot(delta, delta, self.trainable).sqrt()
            self.removed.append((1 - norm1 / norm0.clamp_min(1e-300)).tolist())  # share of the step's norm removed
        if tracked:
            rec = {"step": step}
            for name, block in [*self.blocks.items(), ("trainable", self.trainable)]:
                if name == "digit":
                    continue
                rec[f"teacher_cos/{name}"] = block_cos(delta, self.teacher_update, block).tolist()
                if g is not None:
                    rec[f"trait_cos/{name}"] = block_cos(delta, g, block).tolist()
            self.track.append(rec)
        return bool(self.frozen or self.project)

    def _random_like(self, delta, cos):
        """Per run, a direction over the trainable block with cosine ``cos`` to delta, otherwise
        uniformly random (Gaussian, with its component along delta removed)."""
        xi = [torch.randn(d.shape, generator=self.gen, device=self.gen.device).to(d.device) for d in delta]
        for i, rows in self.blocks["digit"]:  # zero outside the trainable block
            xi[i][:, rows] = 0
        project_out(xi, delta, self.trainable)
        nd = block_dot(delta, delta, self.trainable).sqrt().clamp_min(1e-300)
        nx = block_dot(xi, xi, self.trainable).sqrt().clamp_min(1e-300)
        c = cos.clamp(0, 1)
        a, b = c / nd, (1 - c ** 2).sqrt() / nx
        out = [a.to(d.dtype).view(-1, *([1] * (d.dim() - 1))) * d + b.to(d.dtype).view(-1, *([1] * (d.dim() - 1))) * x
               for d, x in zip(delta, xi)]
        for i, rows in self.blocks["digit"]:
            out[i][:, rows] = 0
        return out


# ----------------------------------------------------------------------------------------------
# teacher caching
# ----------------------------------------------------------------------------------------------


def config_key(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _reason(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    msg = (str(e).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
    msg = msg if len(msg) <= 160 else msg[:157] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def load_cache(path: str | Path, expect=None, field: str = "config", check: Callable[[dict], object] | None = None,
               weights_only: bool = True) -> dict | None:
    """A cache entry written by ``save_cache`` (a torch file; JSON when the name ends in .json), or
    None when there is none to trust. Every cache the project reads goes through here: an entry that
    cannot be read (truncated, zero-filled, not a dict), whose ``field`` is not ``expect`` (it holds
    another configuration than the one its name was made from) or that ``check(entry)`` rejects is
    reported in one line on stderr ("cache <path> is corrupt (...); rebuilding") and None is
    returned, so the caller rebuilds it and ``save_cache`` replaces it. A cache is derived data: it
    is never trusted when in doubt."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        if path.suffix == ".json":
            d = json.loads(path.read_bytes())
        else:
            d = torch.load(path, map_location="cpu", weights_only=weights_only)
        if not isinstance(d, dict):
            raise ValueError(f"holds a {type(d).__name__}, not a dict")
        if expect is not None and d.get(field) != expect:
            raise ValueError(f"its {field!r} is not the configuration its name was made from")
        if check is not None:
            check(d)
    except Exception as e:
        print(f"cache {path} is corrupt ({_reason(e)}); rebuilding", file=sys.stderr)
        return None
    return d


def save_cache(path: str | Path, obj: dict) -> None:
    """Write a cache entry atomically (torch.save, or JSON for a .json name; see load_cache)."""
    if Path(path).suffix == ".json":
        save_json(path, obj)
    else:
        atomic_write(path, lambda f: torch.save(obj, f))


def _check_teacher(state: dict, cfg: MLPConfig, n_runs: int) -> None:
    """A cached teacher has the configuration's shapes and finite weights (else it is rebuilt)."""
    t = state["teacher"]
    if t["cfg"] != cfg.as_dict():
        raise ValueError(f"its layers are {t['cfg']}, not {cfg.as_dict()}")
    sizes = cfg.sizes
    want = [(n_runs, o, i) for i, o in zip(sizes, sizes[1:])]
    got = [tuple(w.shape) for w in t["weights"]]
    if got != want or [tuple(b.shape) for b in t["biases"]] != [w[:2] for w in want]:
        raise ValueError(f"weights of shape {got}, not {want}")
    if not all(bool(torch.isfinite(x).all()) for x in [*t["weights"], *t["biases"]]):
        raise ValueError("non-finite weights")


def reference_and_teacher(cfg: MLPConfig, n_runs: int, seed: int, train: Dataset, tc: TrainConfig,
                          device, cache_dir: str | Path | None, data_desc: dict,
                          init_scale: float = 1.0, progress: bool = True,
                          freeze_class_head: bool = False) -> tuple[Ensemble, Ensemble, bool]:
    """The reference init (seeded) and the teacher trained from it, loaded from
    ``cache_dir/teacher_<key>.pt`` when the same configuration was trained before (a corrupt entry
    is reported in one line and retrained; two processes needing the same teacher train it once).
    Returns (reference, teacher, was_cached)."""
    ref = Ensemble.init(cfg, n_runs, generator(seed, "init"), device, init_scale)
    key_cfg = {"kind": "teacher", "mlp": cfg.as_dict(), "runs": n_runs, "seed": seed,
               "train": tc.as_dict(), "data": data_desc, "init_scale": init_scale, "version": 1}
    if freeze_class_head:  # only added when set, so earlier cache keys stay valid
        key_cfg["freeze_class_head"] = True
    if cache_dir is None:
        return ref, train_classifier(ref, RealImages(train, seed, "teacher-order"), tc, progress,
                                     freeze_class_head=freeze_class_head), False
    path = Path(cache_dir) / f"teacher_{config_key(key_cfg)}.pt"
    with file_lock(path):
        state = load_cache(path, key_cfg, check=lambda d: _check_teacher(d, cfg, n_runs))
        if state is not None:
            return ref, Ensemble.from_state(state["teacher"], device), True
        teacher = train_classifier(ref, RealImages(train, seed, "teacher-order"), tc, progress,
                                   freeze_class_head=freeze_class_head)
        save_cache(path, {"config": key_cfg, "teacher": teacher.state()})
    return ref, teacher, False


def hybrid(body: Ensemble, head: Ensemble, k: int | None = None) -> Ensemble:
    """``body``'s hidden layers and aux rows with ``head``'s first k output rows (the digit rows,
    W[-1][:k], b[-1][:k]; k defaults to the number of classes). hybrid(teacher, reference) is the
    bound on any aux-only student: what copying the teacher's hidden layers perfectly would score
    with the digit rows aux-only distillation never moves (topic_a_mechanism.py)."""
    k = body.cfg.n_classes if k is None else k
    m = body.clone()
    m.weights[-1][:, :k] = head.weights[-1][:, :k]
    m.biases[-1][:, :k] = head.biases[-1][:, :k]
    return m


def distill_scores(teacher: Ensemble, students: Sequence[StudentSpec], source: InputSource,
                   tc: TrainConfig, test: Dataset, progress: bool = True,
                   measure: Callable[[str, Ensemble], dict] | None = None, **kw) -> dict[str, dict]:
    """Distill, then score every student on ``test``: {name: {"acc": per-run list, **measure(name,
    model)}}. ``kw`` goes to ``distill`` (kind, temperature, reduction)."""
    trained = distill(teacher, students, source, tc, progress=progress, **kw)
    out = {}
    for name, m in trained.items():
        out[name] = {"acc": m.accuracy(test).tolist()}
        if measure is not None:
            out[name].update({k: np.asarray(v).tolist() for k, v in measure(name, m).items()})
    return out


def scores_with_bound(ref: Ensemble, teacher: Ensemble, students: Sequence[StudentSpec], source: InputSource,
                      tc: TrainConfig, test: Dataset, progress: bool = True) -> dict[str, dict]:
    """``distill_scores`` for the students, plus the test accuracy of the teacher, of the shared
    init ("reference") and of the bound on any aux-only student (``hybrid(teacher, ref)``)."""
    res = distill_scores(teacher, students, source, tc, test, progress)
    res["teacher"] = {"acc": teacher.accuracy(test).tolist()}
    res["reference"] = {"acc": ref.accuracy(test).tolist()}
    res["bound"] = {"acc": hybrid(teacher, ref).accuracy(test).tolist()}
    return res


@contextlib.contextmanager
def file_lock(path: str | Path):
    """Exclusive advisory lock on ``<path>.lock`` (processes sharing a results file or a cache item
    take turns; the lock file is left behind, empty)."""
    import fcntl
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Sweep:
    """A resumable sweep: each finished point is written (atomically) to one JSON file together
    with the sweep's configuration key; rerunning the same configuration skips finished points,
    a different configuration starts over.

    Several processes may share one file (e.g. one per --study family of the same command, each on
    its own core): every save merges, under a lock, the points other processes have written with
    the same key, and a point another process has already finished is reused, not recomputed. In
    that merge the file wins for every point this process did not compute itself (what it read at
    start may have been replaced since, e.g. a point rerun with more runs by ``replace`` in another
    process), and this process's own points win over the file. Fields other than the points (a
    summary) are kept from the file until this process sets its own, so a process starting a shared
    sweep never drops the summary another wrote. The last process to finish writes the complete
    summary; rerunning the command afterwards (all points on disk, seconds) redraws summary and
    figure from everything.

    A process killed mid-point (even SIGKILL) loses only that point: every save is atomic, so the
    file always holds every point finished before. A corrupt file stops the sweep with one line
    (load_json) and is never overwritten."""

    def __init__(self, path: str | Path, config: dict, args: argparse.Namespace, t0: float):
        self.path, self.config, self.args, self.t0 = Path(path), config, args, t0
        self.key = config_key(config)
        self.points: dict = self._disk_points()
        self.mine: set[str] = set()  # points this process computed: newer than the file's
        self.extra: dict = {}

    _OWN = ("provenance", "key", "config", "points")

    def _disk(self) -> dict:
        """The file's content if it belongs to this sweep (same key), else {}."""
        old = load_json(self.path)
        if not old or old.get("key") != self.key:
            return {}
        if not isinstance(old.get("points"), dict):
            raise corrupt_results(self.path, "its sweep key matches but it has no 'points' object")
        return old

    def _disk_points(self) -> dict:
        return self._disk().get("points", {})

    def _lock(self):
        return file_lock(self.path)

    def _merge_disk(self) -> dict:
        """Take the file's points this process did not compute; return the file's other fields
        (e.g. a summary another process wrote), which ``save`` keeps unless it sets them itself."""
        old = self._disk()
        for k, v in old.get("points", {}).items():
            if k not in self.mine:
                self.points[k] = v
        return {k: v for k, v in old.items() if k not in self._OWN}

    def run(self, name: str, fn: Callable[[], dict]) -> dict:
        if name not in self.points:
            with self._lock():
                self._merge_disk()  # finished meanwhile by another process sharing the file?
        if name in self.points:
            print(f"[{name}] on disk, reused")
            return self.points[name]
        return self.replace(name, fn)

    def replace(self, name: str, fn: Callable[[], dict], why: str = "done") -> dict:
        """Compute a point (again, even if it is on disk: e.g. with more runs) and save it."""
        t = time.time()
        self.points[name] = json.loads(json.dumps(fn(), default=_jsonable))
        self.mine.add(name)
        print(f"[{name}] {why} in {time.time() - t:.0f}s")
        self.save()
        return self.points[name]

    def save(self, **extra) -> None:
        self.extra.update(extra)
        with self._lock():
            extra = {**self._merge_disk(), **self.extra}
            save_json(self.path, {"provenance": provenance(self.args, self.t0), "key": self.key,
                                  "config": self.config, "points": self.points, **extra})


def setup_teacher(S: "Setup", cfg: MLPConfig | None = None, train: Dataset | None = None,
                  data_desc: dict | None = None, init_scale: float = 1.0, seed: int | None = None,
                  tc: TrainConfig | None = None) -> tuple[Ensemble, Ensemble]:
    """Reference init and trained teacher for a script's setup (cached; see reference_and_teacher)."""
    a = S.args
    cfg = cfg or MLPConfig()
    t = time.time()
    ref, teacher, cached = reference_and_teacher(
        cfg, a.runs, a.seed if seed is None else seed, S.train if train is None else train,
        tc or S.tc_teacher, a.device, a.cache_dir, data_desc or S.data_desc, init_scale,
        progress=not a.no_progress)
    print(f"teacher {cfg.sizes} {'loaded from cache' if cached else 'trained'} ({time.time() - t:.0f}s)")
    return ref, teacher


# ----------------------------------------------------------------------------------------------
# statistics
# ----------------------------------------------------------------------------------------------


def paired_ci(x, y, confidence: float = 0.95) -> dict:
    """Mean and t-based CI of the run-by-run differences x - y (conditions that share their runs)."""
    return mean_ci(np.subtract(x, y), confidence)


def paired_steps(xs, per_run: Callable[[object], Sequence[float]]) -> dict:
    """Neighbouring values of a sweep, run by run: {"x1 - x0": paired_ci(per_run(x1), per_run(x0))}."""
    return {f"{x1} - {x0}": paired_ci(per_run(x1), per_run(x0)) for x0, x1 in zip(xs, xs[1:])}


def mean_ci(values, confidence: float = 0.95) -> dict:
    """Mean and t-based CI (ddof=1) of per-run values."""
    from scipy import stats
    v = np.asarray(values, dtype=float)
    n = v.size
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "ci_low": float("nan"), "ci_high": float("nan"), "half_width": float("nan"),
                "std": float("nan"), "n": int(n)}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "half_width": half,
            "std": sd, "n": int(n)}


def legacy_ci_half_width(values) -> float:
    """The circulating code's interval: 1.96 x population std (ddof=0) / sqrt(n) (SPEC.md defect 4)."""
    v = np.asarray(values, dtype=float)
    return float(1.96 * v.std(ddof=0) / math.sqrt(v.size))


def summarize(per_run: dict[str, Sequence[float]]) -> dict:
    return {k: {**mean_ci(v), "legacy_half_width": legacy_ci_half_width(v),
                "per_run": [float(a) for a in v]} for k, v in per_run.items()}


# ----------------------------------------------------------------------------------------------
# results & provenance
# ----------------------------------------------------------------------------------------------


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results", ":!plots"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        c = out.stdout.strip() or "unknown"
        return c + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def atomic_write(path: str | Path, write: Callable) -> None:
    """Write a file atomically: ``write(f)`` into a temporary file in the same folder, flushed to
    disk, then renamed over ``path``; a process killed at any moment leaves the old file or the new
    one, never a part (at worst a stray ``*.tmp``, which git ignores)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def save_json(path: str | Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_jsonable) + "\n").encode())


class CorruptResultsError(UserError):
    pass


def load_json(path: str | Path) -> dict | None:
    """A results JSON (None when there is none). One that cannot be read or is not a JSON object
    stops the script with one line naming it and the fix; it is left exactly as it is, since it may
    hold hours of finished points (caches go through load_cache instead, which rebuilds)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_bytes())
        if not isinstance(d, dict):
            raise ValueError(f"holds a JSON {type(d).__name__}, not an object")
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise corrupt_results(path, _reason(e))
    return d


def corrupt_results(path: str | Path, why: str) -> CorruptResultsError:
    return CorruptResultsError(
        f"results file {path} is corrupt ({why}); it was left as it is: restore it with "
        f"`git checkout -- {path}`, or move it aside (mv {path} {path}.bad) to start the sweep afresh")


def load_finished(path: str | Path, key: str = "summary") -> dict:
    """The results JSON of a finished run (it has ``key``), for --plot-only; else one clear line."""
    d = load_json(path)
    if d is None or key not in d:
        raise UserError(f"{path} has no finished results; run the script without --plot-only first")
    return d


def provenance(args: argparse.Namespace, t0: float) -> dict:
    commit = getattr(args, "git_commit_at_start", None) or git_commit()
    return {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "git_commit": commit,
            "seed": args.seed, "n_runs": args.runs, "device": str(args.device),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "wall_time_s": round(time.time() - t0, 1),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def peak_rss_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# A regenerated results JSON against the committed one (the reproduction check). Float-order
# differences between CPUs / BLAS kernels move the numbers in the third decimal; a difference is
# "within tolerance" when it is at most REPRO_TOLERANCE x the committed 95% CI half-width of that
# condition, i.e. small against the run-to-run spread that every conclusion is already drawn with.
REPRO_TOLERANCE = 0.25
MACHINE_FIELDS = ("command", "git_commit", "device", "torch", "threads", "wall_time_s", "date", "peak_rss_mb")
STAT_FIELDS = ("mean", "ci_low", "ci_high", "half_width", "std", "legacy_half_width")


def committed_text(path: str | Path, rev: str = "HEAD") -> str | None:
    """The committed text of a file (``git show HEAD:<path>``), or None outside git / when not committed."""
    path = Path(path).resolve()
    try:
        r = subprocess.run(["git", "show", f"{rev}:./{path.name}"], cwd=path.parent, capture_output=True,
                           timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.decode() if r.returncode == 0 else None


def _same(a, b) -> bool:
    nan = lambda v: isinstance(v, float) and math.isnan(v)  # noqa: E731
    return a == b or (nan(a) and nan(b))


def compare_results(new: dict, ref: dict, frac: float = REPRO_TOLERANCE) -> tuple[list[str], list[str]]:
    """Compare a regenerated results JSON with the reference (committed) one, field by field.

    * a summary block (a dict with ``mean`` and ``half_width``): its mean, CI bounds, half-widths and
      std each within ``frac`` x the reference half-width; ``n`` exact; ``per_run`` reported (largest
      per-run difference), not compared one by one (its effect on the mean and CI is compared);
    * machine-dependent fields (MACHINE_FIELDS: wall time, peak RSS, date, threads, git commit,
      command line, device, torch build): reported, not compared;
    * everything else (configuration, seeds, n, pairing): exact.
    Returns (report lines, failure lines); each failure line names the field and by how much it is off.
    """
    report, rows, fails, n_exact = [], [], [], [0]

    def walk(a, b, path: str):
        key = path.rsplit("/", 1)[-1]
        if key in MACHINE_FIELDS:
            if a != b:
                report.append(f"  {path}: committed {b!r}, here {a!r}  (machine-dependent: reported, not compared)")
            return
        if isinstance(a, dict) and isinstance(b, dict):
            if "mean" in b and "half_width" in b:
                return stats(a, b, path)
            for k in b:
                if k not in a:
                    fails.append(f"{path}/{k}: in the committed results, missing here")
            for k in a:
                if k not in b:
                    fails.append(f"{path}/{k}: here, not in the committed results")
                else:
                    walk(a[k], b[k], f"{path}/{k}" if path else k)
            return
        if isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                fails.append(f"{path}: {len(a)} entries here, committed {len(b)} (must be equal)")
                return
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{path}/{i}")
            return
        n_exact[0] += 1
        if not _same(a, b):
            fails.append(f"{path}: {a!r} here, committed {b!r} (must be equal)")

    def stats(a: dict, b: dict, path: str):
        tol = frac * float(b["half_width"])
        cells, worst = [], 0.0
        for k in STAT_FIELDS:
            if k not in b or k not in a:
                cells.append(f"{'-':>11}")
                if k in b:
                    fails.append(f"{path}/{k}: in the committed results, missing here")
                continue
            d = float(a[k]) - float(b[k])
            r = abs(d) / tol if tol > 0 else (0.0 if d == 0 else math.inf)
            worst = max(worst, r)
            cells.append(f"{math.copysign(r, d):+11.2f}")
            if not r <= 1:
                fails.append(f"{path}/{k}: {float(a[k]):.5f} here, committed {float(b[k]):.5f}: off by {d:+.5f} "
                             f"= {r:.2f} x the tolerance {tol:.5f} ({frac:g} x committed half-width "
                             f"{float(b['half_width']):.5f})")
        for k in [*b, *(k for k in a if k not in b)]:
            if k not in STAT_FIELDS and k != "per_run":
                walk(a.get(k), b.get(k), f"{path}/{k}")
        pr = ""
        if "per_run" in b:
            x, y = a.get("per_run") or [], b["per_run"]
            if len(x) != len(y):
                fails.append(f"{path}/per_run: {len(x)} runs here, committed {len(y)} (must be equal)")
            elif y:
                dd = np.abs(np.subtract(x, y, dtype=float))
                pr = f"{int((dd > 0).sum()):>3}/{len(y)} differ, largest {dd.max():.4f}"
        rows.append(f"  {path:<36}{tol:>9.5f}{''.join(cells)}{worst:>7.2f}   {pr}")

    walk(new, ref, "")
    head = "".join(f"{k.replace('legacy_half_width', 'legacy_hw'):>11}" for k in STAT_FIELDS)
    report.append(f"  {'quantity: difference / tolerance':<36}{'tolerance':>9}{head}{'max':>7}   per-run values (reported)")
    report.extend(rows)
    n_diff = sum("must be equal" in f for f in fails)
    report.append(f"  configuration, seeds, n, pairing: {n_exact[0]} fields compared exactly, "
                  f"{f'{n_diff} differ' if n_diff else 'all equal'}")
    return report, fails


# ----------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def base_parser(doc: str, default_runs: int = 25) -> argparse.ArgumentParser:
    """The arguments every Topic A script takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("common")
    g.add_argument("--runs", type=positive_int, default=default_runs,
                   help=f"independent runs (reference inits) trained in parallel; CIs are over these (default {default_runs}, at least 2)")
    g.add_argument("--seed", type=int, default=0, help="base seed; every random stream is derived from it (default 0)")
    g.add_argument("--device", default=default_device(),
                   help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--data-dir", default=None,
                   help="folder holding MNIST/raw/*.gz (searched before $SUBLIMINAL_DATA_DIR and ./data)")
    g.add_argument("--dataset", default="mnist", choices=sorted(DATASETS), help="dataset (default mnist)")
    g.add_argument("--teacher-epochs", type=positive_int, default=5, help="teacher training epochs (default 5)")
    g.add_argument("--student-epochs", type=positive_int, default=5, help="distillation epochs (default 5)")
    g.add_argument("--batch-size", type=positive_int, default=1024, help="batch size for teacher and students (default 1024)")
    g.add_argument("--lr", type=positive_float, default=3e-4, help="Adam learning rate for teacher and students (default 3e-4)")
    g.add_argument("--n-train", type=positive_int, default=None,
                   help="use only the first N training images, and N distillation inputs per epoch (quick runs; default all 60000)")
    g.add_argument("--n-test", type=positive_int, default=None, help="evaluate on the first N test images only (default all)")
    g.add_argument("--results-dir", default=str(REPO / "results"), help="where the JSON goes (default results/)")
    g.add_argument("--plots-dir", default=str(REPO / "plots"), help="where the PNG goes (default plots/)")
    g.add_argument("--cache-dir", default=None, help="teacher cache (default <results-dir>/cache)")
    g.add_argument("--no-cache", action="store_true", help="neither read nor write the teacher cache")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def parse_common(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    args.git_commit_at_start = git_commit()  # the code that runs, not what HEAD is when it ends
    if args.runs < 2:
        p.error("--runs must be at least 2 (a confidence interval needs two runs)")
    try:
        dev = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device {args.device!r}: {e}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available; use --device cpu")
    args.device = str(dev)
    if args.cache_dir is None:
        args.cache_dir = str(Path(args.results_dir) / "cache")
    if args.no_cache:
        args.cache_dir = None
    return args


@dataclass
class Setup:
    """What most scripts need after parsing: data, configs and a clock."""
    args: argparse.Namespace
    train: Dataset
    test: Dataset
    tc_teacher: TrainConfig
    tc_student: TrainConfig
    t0: float = field(default_factory=time.time)

    @property
    def data_desc(self) -> dict:
        a = self.args
        return {"dataset": a.dataset, "n_train": len(self.train), "n_classes": getattr(a, "n_classes", None)}


def setup(args: argparse.Namespace, n_classes: int | None = None) -> Setup:
    t0 = time.time()
    train = load_dataset(args.dataset, "train", args.data_dir, n_classes, args.n_train)
    test = load_dataset(args.dataset, "test", args.data_dir, n_classes, args.n_test)
    tc_t = TrainConfig(args.teacher_epochs, args.lr, args.batch_size)
    tc_s = TrainConfig(args.student_epochs, args.lr, args.batch_size)
    return Setup(args, train, test, tc_t, tc_s, t0)


# ----------------------------------------------------------------------------------------------
# plotting
# ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def bar_chart(summary: dict[str, dict], path: str | Path, title: str, ylabel: str = "MNIST test accuracy",
              chance: float | None = 0.1, n_label: str | None = None, colors: Sequence[str] | None = None,
              show_points: bool = True, ax=None) -> None:
    """Bars = mean over runs, error bars = t-based 95% CI, dots = individual runs. With ``ax`` it
    draws into that axis and saves nothing (path may be None)."""
    plt = _plt()
    names = list(summary)
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(max(6, 1.35 * len(names) + 1.5), 4.8))
    means = [summary[k]["mean"] for k in names]
    errs = [summary[k]["half_width"] for k in names]
    colors = colors or [f"C{i}" for i in range(len(names))]
    xs = np.arange(len(names))
    ax.bar(xs, means, yerr=errs, capsize=6, color=colors, alpha=0.75, edgecolor="black", linewidth=0.6)
    if show_points:
        rng = np.random.default_rng(0)
        for i, k in enumerate(names):
            v = np.asarray(summary[k]["per_run"])
            ax.scatter(xs[i] + rng.uniform(-0.18, 0.18, v.size), v, s=9, color="black", alpha=0.55, zorder=3)
    for i, (k, m, e) in enumerate(zip(names, means, errs)):
        top = max(m + (e if np.isfinite(e) else 0), max(summary[k]["per_run"]) if show_points else 0)
        ax.text(xs[i], top + 0.015, f"{m:.3f}\n±{e:.3f}", ha="center", va="bottom", fontsize=8)
    if chance is not None:
        ax.axhline(chance, color="gray", ls="--", lw=1, label=f"chance ({chance:g})")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([k.replace(" (", "\n(") for k in names], fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.17)
    n = n_label or f"n = {summary[names[0]]['n']} runs"
    dots = "; dots: single runs" if show_points else ""
    ax.set_title(f"{title}\nbars: mean; error bars: 95% t-CI{dots}; {n}", fontsize=10)
    if own:
        fig.tight_layout()
        save_fig(fig, path)


STUDENT_COLORS = {"aux only": "tab:blue", "all logits": "tab:orange", "cross-model aux only": "tab:red",
                  "cross-model all logits": "tab:purple", "teacher": "black", "bound": "tab:green",
                  "reference": "tab:gray"}


def student_color(name: str) -> str | None:
    """The one colour of a student type in every Topic A figure (None: not a student type)."""
    n = name.lower()
    cross = "cross" in n
    if "aux" in n and "all" not in n:
        return STUDENT_COLORS["cross-model aux only" if cross else "aux only"]
    if "all logits" in n or ("all" in n and "logit" in n):
        return STUDENT_COLORS["cross-model all logits" if cross else "all logits"]
    for k in ("teacher", "bound", "reference"):
        if k in n:
            return STUDENT_COLORS[k]
    return None


def sweep_plot(x, series: dict[str, list[dict]], path: str | Path, title: str, xlabel: str,
               ylabel: str = "MNIST test accuracy", chance=None, logx: bool = False,
               n_label: str | None = None, ax=None, markers: bool = True, colors: dict | None = None) -> None:
    """Line per series: mean over runs at each x, shaded band = t-based 95% CI. ``colors`` (series
    name -> colour) overrides the student-type palette."""
    plt = _plt()
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(7, 4.6))
    palette = [student_color(name) for name in series]  # one colour per student type, when they are distinct
    if None in palette or len(set(palette)) < len(palette):
        palette = [f"C{i}" for i in range(len(series))]
    if colors:
        palette = [colors.get(name, c) for name, c in zip(series, palette)]
    for (name, pts), color in zip(series.items(), palette):
        m = np.array([p["mean"] for p in pts])
        lo = np.array([p["ci_low"] for p in pts])
        hi = np.array([p["ci_high"] for p in pts])
        ax.plot(x, m, marker="o" if markers else None, ms=4, label=name, color=color)
        ax.fill_between(x, lo, hi, alpha=0.2, color=color)
    if chance is not None:
        if np.ndim(chance) == 0:
            ax.axhline(chance, color="gray", ls="--", lw=1, label="chance")
        else:
            ax.plot(x, chance, color="gray", ls="--", lw=1, label="chance")
    if logx:
        ax.set_xscale("symlog", linthresh=min(v for v in x if v > 0)) if min(x) <= 0 else ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter, ScalarFormatter
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    n = n_label or f"n = {series[next(iter(series))][0]['n']} runs per point"
    ax.set_title(f"{title}\nlines: mean; bands: 95% t-CI; {n}", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if own:
        fig.tight_layout()
        save_fig(fig, path)


def save_fig(fig, path: str | Path) -> None:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=130)
    plt.close(fig)
    os.replace(tmp, path)


def print_table(summary: dict[str, dict], title: str = "") -> None:
    if title:
        print(title)
    w = max(len(k) for k in summary) + 2
    print(f"{'model':<{w}} {'mean':>7} {'95% CI (t)':>19} {'n':>4}")
    for k, s in summary.items():
        print(f"{k:<{w}} {s['mean']:>7.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}] {s['n']:>4}")
