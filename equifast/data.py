"""Data for the demo: scikit-learn's handwritten digits (no download), MNIST from IDX files, and
random rotations by multiples of 90° that record the angle.

* ``load_digits(size=8)`` — the 1797 8x8 digits shipped inside scikit-learn's wheel, as float
  images [N, 1, size, size] in [0, 1]; ``size`` > 8 upsamples by nearest-neighbour repetition
  (size must be a multiple of 8). Nearest upsampling commutes exactly with 90° rotations, so the
  rotated test set is exactly the rotation of upsampled images. Split into train/test (stratified,
  fixed seed).
* ``load_mnist(path)`` — real MNIST from the four IDX files (``train-images-idx3-ubyte[.gz]`` ...)
  in a directory given by the user (raw or gzip; both ``-idx3-ubyte`` and ``.idx3-ubyte`` names).
* ``rotate_batch(x, group, generator)`` / ``RandomRotation`` — rotate every image by a random
  group element k (for C4: k·90° counter-clockwise, ``torch.rot90(x, k)``) and return k.
"""
from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from . import groups as _groups

__all__ = ["Split", "load_digits", "load_mnist", "read_idx", "rotate_batch", "RandomRotation", "RotatedDataset",
           "rotation_angle"]


@dataclass
class Split:
    """Images [N, 1, H, W] float32 in [0, 1] and labels [N] int64, for train and test."""
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    name: str = ""

    def limit(self, n_train: Optional[int] = None, n_test: Optional[int] = None) -> "Split":
        """The first n_train / n_test examples (for quick runs)."""
        return Split(self.x_train[:n_train], self.y_train[:n_train], self.x_test[:n_test], self.y_test[:n_test],
                     self.name)


def load_digits(size: int = 8, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """scikit-learn's 8x8 handwritten digits (1797 images, 10 classes; no download).

    Returns a stratified train/test ``Split`` of images [N, 1, size, size] (float32 in [0, 1];
    pixel values 0..16 divided by 16) and labels [N]. ``size`` must be a multiple of 8; size > 8
    repeats every pixel (nearest-neighbour upsampling, which commutes with 90° rotations)."""
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if size % 8 or size < 8:
        raise ValueError(f"load_digits: size must be a positive multiple of 8, got {size}")
    data = _sk_load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)      # [N, 1, 8, 8]
    if size > 8:
        r = size // 8
        x = x.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3)
    y = torch.from_numpy(data.target.astype(np.int64))
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=data.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return Split(x[tr].contiguous(), y[tr], x[te].contiguous(), y[te], name=f"sklearn-digits-{size}x{size}")


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read one IDX file (raw or gzip-compressed) into a numpy array."""
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = data[2], data[3]
    if dtype not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{dtype:02x}")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=_IDX_DTYPES[dtype], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def _find(directory: str, stem: str, kind: str) -> str:
    candidates = [f"{stem}-{kind}-ubyte", f"{stem}.{kind}-ubyte", f"{stem}-{kind}", f"{stem}.{kind}"]
    for name in candidates:
        for suffix in ("", ".gz"):
            p = os.path.join(directory, name + suffix)
            if os.path.exists(p):
                return p
    raise FileNotFoundError(f"MNIST file {stem}-{kind}-ubyte[.gz] not found in {directory!r} "
                            f"(expected the four IDX files: train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                            f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz)")


def load_mnist(path: Union[str, os.PathLike]) -> Split:
    """Real MNIST from the IDX files in directory ``path`` (raw or .gz): 60000 train and 10000 test
    images [N, 1, 28, 28] float32 in [0, 1] and labels [N] int64."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_mnist: {path!r} is not a directory")
    out = []
    for stem in ("train", "t10k"):
        images = read_idx(_find(path, f"{stem}-images", "idx3"))
        labels = read_idx(_find(path, f"{stem}-labels", "idx1"))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"load_mnist: {stem} images {images.shape} and labels {labels.shape} do not match")
        out += [torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1),
                torch.from_numpy(labels.astype(np.int64))]
    return Split(*out, name="mnist-28x28")


def rotate_batch(x: Tensor, group="C4", generator: Optional[torch.Generator] = None,
                 elements: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Transform every image of x [B, C, H, W] by a random group element (or the given ``elements`` [B]).

    Returns (x_rot [B, C, H, W], k [B] int64) with x_rot[i] = group.act(x[i], k[i]); for C4 that is a
    counter-clockwise rotation by 90°·k (``torch.rot90(x[i], k, dims=(-2, -1))``)."""
    G = _groups.get(group)
    B = x.shape[0]
    if elements is None:
        elements = torch.randint(0, G.order, (B,), generator=generator)
    elements = torch.as_tensor(elements, dtype=torch.int64)
    views = G.act_all(x)                                       # [n, B, C, H, W]
    out = views[elements.to(x.device), torch.arange(B, device=x.device)]
    return out, elements


def rotation_angle(k: Tensor, group="C4") -> Tensor:
    """Degrees (counter-clockwise) of group elements (rotation part; see ``equifast.nn.element_angle``)."""
    from .nn.head import element_angle
    return element_angle(group, k)


class RandomRotation:
    """Transform for one image [C, H, W]: returns (rotated image, k) with k uniform in the group.

    ``RandomRotation(group="C4", seed=None)``; ``angle(k)`` gives degrees."""

    def __init__(self, group="C4", seed: Optional[int] = None):
        self.group = _groups.get(group)
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)

    def __call__(self, img: Tensor) -> Tuple[Tensor, int]:
        k = int(torch.randint(0, self.group.order, (1,), generator=self.generator))
        return self.group.act(img, k), k

    def angle(self, k) -> float:
        return float(rotation_angle(torch.tensor(k), self.group))


class RotatedDataset(torch.utils.data.Dataset):
    """(image, label) pairs, each image transformed by a fixed random group element drawn once from
    ``seed``: items are (image [C, H, W], label, k). The paper's rotated test set."""

    def __init__(self, x: Tensor, y: Tensor, group="C4", seed: int = 0):
        self.group = _groups.get(group)
        gen = torch.Generator().manual_seed(seed)
        self.x, self.k = rotate_batch(x, self.group, gen)
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], self.k[i]
