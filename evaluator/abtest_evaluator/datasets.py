"""Evaluation datasets in a fixed order, with stable sample ids for the fingerprint.

Nothing here downloads: ``digits`` ships with scikit-learn, everything else is read from a path.
"""

from __future__ import annotations

import hashlib
import inspect
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from abtest_api.errors import UserError

DATASETS = ("digits", "imagefolder", "cifar10", "cifar100", "torchvision")
SPLITS = ("train", "test")
# what a broken image file raises while it is opened or decoded (Pillow: OSError for truncated or unidentified data,
# ValueError/SyntaxError for malformed headers; IsADirectoryError is an OSError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


class UnreadableSample(UserError):
    """A sample that cannot be decoded. Raised in a DataLoader worker, it reaches the main process rebuilt from the
    worker's formatted traceback, whose last line is the original message: that line is kept."""

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


@dataclass
class EvalDataset:
    """Images in evaluation order; ``load(i)`` returns a PIL image, ``labels[i]`` its class."""

    name: str
    ids: list[str]
    labels: np.ndarray  # int64, one per sample
    num_classes: int
    load: Callable[[int], Image.Image]
    classes: list[str] | None = None
    source: Callable[[int], str] | None = None  # where sample i is read from, for errors (a file, for imagefolder)

    def decode(self, i: int, mode: str) -> Image.Image:
        """Sample ``i`` fully decoded in ``mode``; UnreadableSample naming it when its data is broken."""
        try:
            image = self.load(i)
            image.load()  # Pillow decodes lazily: a truncated file fails here, not at open
            return image.convert(mode)
        except DECODE_ERRORS as err:
            where = self.source(i) if self.source else f"{self.name} sample {i}"
            raise UnreadableSample(
                f"sample {self.ids[i]} ({where}) cannot be decoded: {err}; replace or remove it, or set spec.dataset.onUnreadable: skip"
            ) from None

    def unreadable(self, mode: str) -> list[int]:
        """Positions of the samples that cannot be decoded (every sample is decoded once)."""
        bad = []
        for i in range(len(self)):
            try:
                self.decode(i, mode)
            except UnreadableSample:
                bad.append(i)
        return bad

    def without(self, positions: list[int]) -> EvalDataset:
        """The dataset without the samples at ``positions``, in the same order (the fingerprint changes with them)."""
        drop = set(positions)
        return self.select([i for i in range(len(self)) if i not in drop]) if drop else self

    def select(self, positions: list[int] | range) -> EvalDataset:
        """The samples at ``positions``, in that order, loaded (and named in errors) by their positions here."""
        load, source = self.load, self.source
        return EvalDataset(
            self.name, [self.ids[i] for i in positions], self.labels[list(positions)], self.num_classes,
            lambda j: load(positions[j]), self.classes, (lambda j: source(positions[j])) if source else None,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    def limited(self, limit: int | None) -> EvalDataset:
        if limit is None or limit >= len(self):
            return self
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        return self.select(range(limit))

    def part(self, start: int, end: int) -> EvalDataset:
        """Samples [start, end) of the order (one shard's), loaded by their positions in the whole."""
        return self.select(range(start, end))

    def fingerprint(self) -> str:
        return fingerprint(self.ids, self.labels)


def fingerprint(ids: list[str], labels: np.ndarray) -> str:
    """sha256 over the ordered (sample id, label) pairs: equal iff two runs saw the same samples in the same order."""
    digest = hashlib.sha256()
    for sample_id, label in zip(ids, labels.tolist()):
        digest.update(f"{sample_id}\t{label}\n".encode())
    return digest.hexdigest()


def digits_indices(n: int, split: str) -> np.ndarray:
    """The contract's split: ``test`` is every index with i % 5 == 0, in order; ``train`` the rest."""
    index = np.arange(n)
    return index[index % 5 == 0] if split == "test" else index[index % 5 != 0]


def load_digits(split: str) -> EvalDataset:
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    keep = digits_indices(len(bunch.target), split)
    # 0..16 intensities -> 0..255 grey 8x8 images; the transform upscales them for CNNs.
    pixels = np.rint(bunch.images[keep] * (255.0 / 16.0)).astype(np.uint8)
    return EvalDataset(
        name="digits",
        ids=[f"digits/{i}" for i in keep],
        labels=bunch.target[keep].astype(np.int64),
        num_classes=10,
        load=lambda i: Image.fromarray(pixels[i], mode="L"),
        classes=[str(c) for c in range(10)],
    )


def _require_dir(path: str | None, dataset: str) -> Path:
    if not path:
        raise UserError(f"dataset {dataset} needs a path: pass --path DIR (spec.dataset.path)")
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"dataset path {path} is not a readable directory; check --path (spec.dataset.path) and the volume mount")
    return root


def load_imagefolder(path: str | None, split: str) -> EvalDataset:
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = _require_dir(path, "imagefolder")
    if (root / split).is_dir():  # DIR/test/<class>/..., else DIR/<class>/...
        root = root / split
    try:
        classes, class_to_idx = find_classes(str(root))
        samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as err:
        raise UserError(f"imagefolder at {root} has no class folders with images ({err}); expected DIR/<class>/<image>") from None
    return EvalDataset(
        name="imagefolder",
        ids=[str(Path(p).relative_to(root)) for p, _ in samples],
        labels=np.array([c for _, c in samples], dtype=np.int64),
        num_classes=len(classes),
        load=lambda i: Image.open(samples[i][0]),
        classes=classes,
        source=lambda i: samples[i][0],
    )


def load_cifar(path: str | None, split: str, variant: str) -> EvalDataset:
    """The standard python-pickle batches (``cifar-10-batches-py`` / ``cifar-100-python``)."""
    root = _require_dir(path, variant)
    folder, files, label_key, meta, names_key = {
        "cifar10": (
            "cifar-10-batches-py",
            {"test": ["test_batch"], "train": [f"data_batch_{i}" for i in range(1, 6)]},
            "labels",
            "batches.meta",
            "label_names",
        ),
        "cifar100": ("cifar-100-python", {"test": ["test"], "train": ["train"]}, "fine_labels", "meta", "fine_label_names"),
    }[variant]
    if (root / folder).is_dir():
        root = root / folder
    images, labels, ids = [], [], []
    for batch in files[split]:
        try:
            with open(root / batch, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            raise UserError(
                f"cannot read {variant} batch {root / batch} ({err.__class__.__name__}); point --path at the extracted {folder} folder"
            ) from None
        entry = cifar_entry(entry, root / batch, ("data", label_key))
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(entry[label_key])
        ids.extend(f"{batch}/{i}" for i in range(len(entry[label_key])))
    pixels = np.concatenate(images)
    classes = None
    if (root / meta).is_file():
        with open(root / meta, "rb") as fh:
            classes = cifar_entry(pickle.load(fh, encoding="latin1"), root / meta, ()).get(names_key)
    return EvalDataset(
        name=variant,
        ids=ids,
        labels=np.asarray(labels, dtype=np.int64),
        num_classes=10 if variant == "cifar10" else 100,
        load=lambda i: Image.fromarray(pixels[i]),
        classes=classes,
    )


def cifar_entry(entry, path: Path, required: tuple[str, ...]) -> dict:
    """A CIFAR pickle as a dict with str keys: the original batches have them, but batches re-pickled by Python 3 tools
    (``pickle.load(f, encoding="bytes")`` written back) have bytes keys; both are accepted."""
    if not isinstance(entry, dict):
        raise UserError(f"{path} holds a {type(entry).__name__}, not a CIFAR batch (a dict with keys {', '.join(required)})")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in required if k not in entry]
    if missing:
        raise UserError(
            f"{path} is not a CIFAR batch: no {', '.join(repr(k) for k in missing)} key (it has {', '.join(map(repr, sorted(map(str, entry))))}); "
            "expected the python-pickle batches of cifar-10-batches-py / cifar-100-python"
        )
    return entry


def load_torchvision(path: str | None, split: str, class_name: str | None) -> EvalDataset:
    """Any ``torchvision.datasets`` class that takes ``root`` and ``train``/``split``, never downloading."""
    import torchvision.datasets as tvd

    if not class_name or not inspect.isclass(getattr(tvd, class_name, None)):
        raise UserError(
            f"torchvision dataset class {class_name!r} is unknown; set --dataset-class (spec.dataset.className) to a torchvision.datasets class such as MNIST"
        )
    root = _require_dir(path, f"torchvision/{class_name}")
    cls = getattr(tvd, class_name)
    params = inspect.signature(cls).parameters
    kwargs = {"root": str(root)}
    if "download" in params:
        kwargs["download"] = False
    if "train" in params:
        kwargs["train"] = split == "train"
    elif "split" in params:
        kwargs["split"] = split
    try:
        ds = cls(**kwargs)
    except (RuntimeError, OSError, ValueError) as err:
        raise UserError(
            f"torchvision.datasets.{class_name} could not be read from {root}: {err}; place the files there (downloads are disabled)"
        ) from None
    targets = next((getattr(ds, a) for a in ("targets", "labels", "_labels") if hasattr(ds, a)), None)
    labels = np.asarray(targets if targets is not None else [ds[i][1] for i in range(len(ds))], dtype=np.int64)
    classes = list(getattr(ds, "classes", []) or []) or None
    return EvalDataset(
        name=f"torchvision/{class_name}",
        ids=[f"{class_name}/{split}/{i}" for i in range(len(ds))],
        labels=labels,
        num_classes=len(classes) if classes else int(labels.max()) + 1,
        load=lambda i: ds[i][0],
        classes=classes,
    )


def load_dataset(
    name: str, split: str = "test", path: str | None = None, limit: int | None = None, class_name: str | None = None
) -> EvalDataset:
    if split not in SPLITS:
        raise UserError(f"--split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    if name == "digits":
        ds = load_digits(split)
    elif name == "imagefolder":
        ds = load_imagefolder(path, split)
    elif name in ("cifar10", "cifar100"):
        ds = load_cifar(path, split, name)
    elif name == "torchvision":
        ds = load_torchvision(path, split, class_name)
    else:
        raise UserError(f"--dataset {name!r} is unknown; use one of {', '.join(DATASETS)}")
    if len(ds) == 0:
        raise UserError(f"dataset {name} ({split}) at {path} has no samples; check --path and --split")
    return ds.limited(limit)
