"""Data sets: Fashion-MNIST (verified), MNIST and CIFAR-10 through torchvision, natural photos.

Fashion-MNIST is looked for, in order, in `$WM_DATA`, the repository's `data/`, Debian's package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist) and, as a last resort, downloaded by
torchvision into `data/`. Within a root both layouts are accepted: `fashion-mnist/*.gz` (Debian's,
and what ../shared/gpu/stage-data.sh stages) and `FashionMNIST/raw/*.gz` (torchvision's).
Every file is checked against the SHA-256 of its *decompressed* idx bytes: Debian recompressed
the upstream archives, so the `.gz` bytes differ by source while the images do not.

Natural photos are the RGB and greyscale photographs bundled inside scikit-image and
scikit-learn (no download), split by image into a fixed train and test set; `WM_PHOTOS` or
`load_image_folder` takes any folder of images instead (PASCAL VOC's JPEGImages, DIV2K, ...).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from wm import ROOT


class DataError(RuntimeError):
    """Missing, truncated or corrupt data: the message names the file or says how to get it."""


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------

FASHION_FILES = {  # file -> (SHA-256 of the decompressed idx file, its size in bytes)
    "train-images-idx3-ubyte.gz": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte.gz": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte.gz": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte.gz": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MEAN, FASHION_STD = (0.2860,), (0.3530,)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"


def data_roots() -> list[Path]:
    """Folders searched for data sets, in order: $WM_DATA, then the repository's data/."""
    roots = [Path(os.environ["WM_DATA"])] if os.environ.get("WM_DATA") else []
    return roots + [ROOT / "data"]


def _fashion_dirs() -> list[Path]:
    dirs = []
    for root in data_roots():
        dirs += [root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return dirs + [DEBIAN_DIR]


def check_wm_data() -> None:
    """$WM_DATA, when set, is a folder, and a Fashion-MNIST folder in it holds all four files:
    a partial copy is named, never skipped in favour of another copy."""
    if not os.environ.get("WM_DATA"):
        return
    root = Path(os.environ["WM_DATA"])
    if not root.is_dir():
        raise DataError(f"WM_DATA={root} is not a folder: point it at a folder holding fashion-mnist/*.gz, or unset it")
    for d in (root / "fashion-mnist", root / "FashionMNIST" / "raw"):
        missing = [name for name in FASHION_FILES if not (d / name).is_file()]
        if d.is_dir() and missing:
            raise DataError(f"{d} (from WM_DATA) lacks {', '.join(missing)}: copy the missing files "
                            "there, or unset WM_DATA")


def find_fashion_mnist() -> Path | None:
    """The first folder that holds all four files (not yet verified), or None."""
    check_wm_data()
    for d in _fashion_dirs():
        if all((d / name).is_file() for name in FASHION_FILES):
            return d
    return None


def _read_verified(path: Path) -> bytes:
    """Decompress one Fashion-MNIST file and check it; a bad file raises DataError naming it."""
    sha, size = FASHION_FILES[path.name]
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:  # BadGzipFile is an OSError; a truncated stream an EOFError
        raise DataError(f"{path} is truncated or not a gzip file ({err}); delete it and fetch it again") from None
    if len(raw) != size or hashlib.sha256(raw).hexdigest() != sha:
        raise DataError(f"{path} fails its checksum (got {len(raw)} bytes, SHA-256 "
                        f"{hashlib.sha256(raw).hexdigest()[:12]}…, expected {size} bytes, {sha[:12]}…); "
                        "delete it and fetch it again")
    return raw


def ensure_fashion_mnist() -> Path:
    """Find Fashion-MNIST, or obtain it (apt as root, else torchvision online); verify; return its folder."""
    found = find_fashion_mnist()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"wm: installing Debian's {DEBIAN_PACKAGE} with apt-get", flush=True)
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        found = find_fashion_mnist()
    if found is None:
        try:
            import torchvision
            torchvision.datasets.FashionMNIST(str(ROOT / "data"), train=True, download=True)
            torchvision.datasets.FashionMNIST(str(ROOT / "data"), train=False, download=True)
        except Exception as err:  # offline: URLError, timeouts, HTTP errors
            raise DataError(
                "Fashion-MNIST not found in $WM_DATA, data/ or " f"{DEBIAN_DIR}, and both ways to get it "
                f"failed: Debian's package ({'apt-get install ' + DEBIAN_PACKAGE} needs root and apt) "
                f"and torchvision's download into data/ ({type(err).__name__}: {err}). Install the "
                "package, go online, or set WM_DATA to a folder holding fashion-mnist/*.gz") from None
        found = find_fashion_mnist()
    if found is None:
        raise DataError("Fashion-MNIST was fetched but its files are not where expected")
    for name in FASHION_FILES:
        _read_verified(found / name)
    return found


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    magic = struct.unpack(">I", raw[:4])[0]
    if magic == 2051:  # images: count, rows, cols, then uint8 pixels
        n, rows, cols = struct.unpack(">III", raw[4:16])
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows, cols)
    if magic == 2049:  # labels: count, then uint8 labels
        return np.frombuffer(raw, np.uint8, offset=8)
    raise DataError(f"{path} is not an idx file (magic number {magic})")


@lru_cache(maxsize=2)
def fashion_mnist(train: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 N×1×28×28, labels int64 N) of Fashion-MNIST's train or test split, verified."""
    folder = find_fashion_mnist()
    if folder is None:
        folder = ensure_fashion_mnist()
    prefix = "train" if train else "t10k"
    x_path, y_path = folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz"
    x = _parse_idx(_read_verified(x_path), x_path)
    y = _parse_idx(_read_verified(y_path), y_path)
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# MNIST and CIFAR-10 through torchvision (when present on disk)
# ---------------------------------------------------------------------------------------------

def _torchvision_root(folder: str, root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    for r in data_roots():
        if (r / folder).exists():
            return r
    raise DataError(f"{folder}/ not found in " + ", ".join(map(str, data_roots()))
                    + ": download it with torchvision (download=True) into one of them")


def mnist(train: bool = True, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST via torchvision's on-disk format (`ROOT/MNIST/raw/*-ubyte`): uint8 N×1×28×28, int64 N."""
    import torchvision
    ds = torchvision.datasets.MNIST(str(_torchvision_root("MNIST", root)), train=train, download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


def cifar10(train: bool = True, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 via torchvision's on-disk format (`ROOT/cifar-10-batches-py/`): uint8 N×3×32×32, int64 N."""
    import torchvision
    ds = torchvision.datasets.CIFAR10(str(_torchvision_root("cifar-10-batches-py", root)),
                                      train=train, download=False)
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)


# ---------------------------------------------------------------------------------------------
# Classification data on the device
# ---------------------------------------------------------------------------------------------

DATASETS = {  # name -> (loader, classes, per-channel mean, per-channel std)
    "fashion_mnist": (fashion_mnist, FASHION_CLASSES, FASHION_MEAN, FASHION_STD),
    "mnist": (mnist, tuple(str(i) for i in range(10)), (0.1307,), (0.3081,)),
    "cifar10": (cifar10, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                          "ship", "truck"), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 images → float32 (x/255 − mean)/std, per channel: the input tensor the models see."""
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - m) / s


@dataclass
class Classification:
    """A classification data set, normalised and on one device (batches are index slices of it)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def load_classification(name: str = "fashion_mnist", n_train: int | None = None,
                        n_test: int | None = None, seed: int = 0,
                        device: str | torch.device = "cpu") -> Classification:
    """Load NAME, optionally a seeded random subset of each split, normalised, on DEVICE."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}: choose from {', '.join(DATASETS)}")
    loader, classes, mean, std = DATASETS[name]
    g = torch.Generator().manual_seed(seed)
    parts = []
    for train, n in ((True, n_train), (False, n_test)):
        x, y = loader(train)
        if n is not None:
            if not 0 < n <= len(y):
                raise ValueError(f"n_{'train' if train else 'test'}={n} must be in 1..{len(y)}")
            idx = torch.randperm(len(y), generator=g)[:n]
            x, y = x[idx], y[idx]
        parts += [normalize(x.to(device), mean, std), y.to(device)]
    return Classification(*parts, classes=classes, mean=mean, std=std)


# ---------------------------------------------------------------------------------------------
# Natural photos
# ---------------------------------------------------------------------------------------------

# Photographs bundled in scikit-image (`skimage.data`) and scikit-learn (`load_sample_images`).
# `cat` is left out: it is `chelsea` again. Greyscale photos are repeated on three channels.
# The split is by image and fixed, so no test patch ever comes from a training photo.
PHOTOS_TRAIN = ("astronaut", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
                "retina", "flower", "moon", "coins", "clock", "gravel", "brick")
PHOTOS_TEST = ("coffee", "china", "camera", "grass")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


def photo(name: str) -> np.ndarray:
    """One bundled photo as uint8 H×W×3."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image
        img = load_sample_image(f"{name}.jpg")
    elif name in PHOTOS_TRAIN + PHOTOS_TEST:
        import skimage.data
        img = getattr(skimage.data, name)()
    else:
        raise ValueError(f"unknown photo {name!r}: the bundled photos are {', '.join(PHOTOS_TRAIN + PHOTOS_TEST)}")
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _in_test_split(name: str, test_fraction: float) -> bool:
    # SHA-256 of the file name, not hash(): the same split on every machine and every run.
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def load_image_folder(folder: str | Path, split: str | None = None, test_fraction: float = 0.2,
                      min_size: int = 64, max_images: int | None = None) -> list[np.ndarray]:
    """RGB uint8 images of any folder (searched recursively), optionally one side of a split by file name."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be None, 'train' or 'test', not {split!r}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if split is not None:
        files = [p for p in files
                 if _in_test_split(str(p.relative_to(folder)), test_fraction) == (split == "test")]
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                img = np.asarray(im.convert("RGB"))
        except OSError as err:
            raise DataError(f"{p} is not a readable image ({err})") from None
        if min(img.shape[:2]) >= min_size:
            images.append(img)
        if max_images is not None and len(images) >= max_images:
            break
    if not images:
        raise DataError(f"no image of at least {min_size}×{min_size} pixels in {folder} (split {split})")
    return images


def photos(split: str = "train") -> list[np.ndarray]:
    """The natural photos of one split: the folder in $WM_PHOTOS if set, else the bundled ones."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if os.environ.get("WM_PHOTOS"):
        return load_image_folder(os.environ["WM_PHOTOS"], split=split)
    return [photo(n) for n in (PHOTOS_TRAIN if split == "train" else PHOTOS_TEST)]


def sample_patches(images: list[np.ndarray], n: int, size: int, seed: int = 0,
                   flip: bool = True) -> torch.Tensor:
    """N random size×size patches as uint8 N×3×size×size; an image is drawn in proportion to its area."""
    usable = [im for im in images if min(im.shape[:2]) >= size]
    if not usable:
        raise ValueError(f"no image is at least {size}×{size} pixels")
    rng = np.random.default_rng(seed)
    areas = np.array([im.shape[0] * im.shape[1] for im in usable], dtype=float)
    which = rng.choice(len(usable), size=n, p=areas / areas.sum())
    out = np.empty((n, size, size, 3), np.uint8)
    for i, k in enumerate(which):
        im = usable[k]
        top = rng.integers(0, im.shape[0] - size + 1)
        left = rng.integers(0, im.shape[1] - size + 1)
        patch = im[top:top + size, left:left + size]
        if flip and rng.random() < 0.5:
            patch = patch[:, ::-1]
        out[i] = patch
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Segmentation data sets (WaterMAS's DeepLabV3 experiment): PASCAL VOC or Cityscapes layout
# ---------------------------------------------------------------------------------------------

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IGNORE_INDEX = -100  # F.cross_entropy's default: VOC's 255 border and Cityscapes' unused ids map to it

# Cityscapes labelIds → the 19 train ids of the benchmark (everything else ignored)
CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                        25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


@dataclass
class Segmentation:
    """A segmentation data set as tensors: images normalised (ImageNet statistics), masks long
    with IGNORE_INDEX for unlabelled pixels."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    num_classes: int
    size: int


def segmentation_format(root: Path) -> str | None:
    """'voc', 'cityscapes' or None, from the folder layout."""
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    return None


def segmentation_root() -> Path | None:
    """$WM_SEGMENTATION, else data/segmentation/ (or one folder below it, e.g. VOC2012/), when it
    holds a data set in VOC or Cityscapes layout; None otherwise."""
    env = os.environ.get("WM_SEGMENTATION")
    candidates = [Path(env)] if env else []
    base = ROOT / "data" / "segmentation"
    candidates += [base] + (sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else [])
    for c in candidates:
        if c.is_dir() and segmentation_format(c):
            return c
    if env:
        raise DataError(f"WM_SEGMENTATION={env} holds no VOC (JPEGImages/, SegmentationClass/) or "
                        f"Cityscapes (leftImg8bit/, gtFine/) data set")
    return None


def _voc_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing} is missing: a VOC data set lists its {split} images there")
    pairs = []
    for name in listing.read_text().split():
        img, mask = root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"
        if not (img.is_file() and mask.is_file()):
            raise DataError(f"VOC image {name} listed in {listing} lacks {img.name} or {mask.name}")
        pairs.append((img, mask))
    return pairs


def _cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    pairs = []
    for img in sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        mask = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"
        if not mask.is_file():
            raise DataError(f"Cityscapes image {img.name} has no {mask.name}")
        pairs.append((img, mask))
    return pairs


def _load_pairs(pairs, size: int, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    from PIL import Image
    xs, ys = [], []
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    if fmt == "cityscapes":
        for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
            lut[label_id] = train_id
    else:
        lut[:21] = np.arange(21)  # VOC: 0 background + 20 classes; 255 (borders) ignored
    for img_path, mask_path in pairs:
        try:
            img = Image.open(img_path).convert("RGB").resize((size, size), Image.BILINEAR)
            mask = Image.open(mask_path)
            mask.load()
        except OSError as err:
            raise DataError(f"cannot read {img_path.name} / {mask_path.name}: {err}") from err
        # masks are palette or grey images of class indices: resize with nearest, never interpolate labels
        mask = np.asarray(mask.resize((size, size), Image.NEAREST), dtype=np.uint8)
        xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        ys.append(torch.from_numpy(lut[mask]))
    return torch.stack(xs), torch.stack(ys)


def load_segmentation(root: str | Path, size: int = 128, limit: int | None = None,
                      device: str | torch.device = "cpu") -> Segmentation:
    """Train and val splits of the data set at ROOT (VOC: ImageSets/Segmentation/{train,val}.txt;
    Cityscapes: leftImg8bit/{train,val}/ with gtFine labelIds), resized to SIZE×SIZE; at most LIMIT
    training images (the first ones, in the listing's order)."""
    root = Path(root)
    fmt = segmentation_format(root)
    if fmt is None:
        raise DataError(f"{root} is neither a VOC nor a Cityscapes data set")
    find = _voc_pairs if fmt == "voc" else _cityscapes_pairs
    train, val = find(root, "train"), find(root, "val")
    if not train or not val:
        raise DataError(f"{root}: the {fmt} train and val splits must both be non-empty")
    train = train[:limit] if limit else train
    (xt, yt), (xv, yv) = _load_pairs(train, size, fmt), _load_pairs(val, size, fmt)
    xt, xv = (normalize(x.to(device), IMAGENET_MEAN, IMAGENET_STD) for x in (xt, xv))
    return Segmentation(f"{fmt} ({root.name})", xt, yt.to(device), xv, yv.to(device),
                        19 if fmt == "cityscapes" else 21, size)
