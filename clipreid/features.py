"""Features and distances: batched inference of an encoder over images, and ``embed`` for any images.

``image_features`` is the one path from image files to features for every stage (evaluate, predict, folder
rankings, ``embed``): decoded from disk batch by batch, or from an ``ImageCache`` shared by several
checkpoints, with the same batches and the same numbers either way. An image that cannot be decoded is never
given another image's row: the result says which inputs its rows belong to (``Embedded.kept``), and the
caller either leaves the others out with their names or stops (``on_error="raise"``).

Distances are squared Euclidean between L2-normalised features (= 2 - 2 cos), the challenge's definition:
``clipreid.rerank.squared_distances`` is their one formula, which re-ranking uses too.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from .dataset import ImageSet
from .errors import UserError
from .layout import image_files
from .model import ReIDEncoder
from .progress import progress_bar
from .runtime import autocast, pick_device, resolve_precision
from .transforms import decode_images, normalize, read_image, to_device, to_uint8_tensor
from .weights import load_encoder


@torch.no_grad()
def extract_features(
    encoder: ReIDEncoder, images: ImageSet | torch.Tensor, *, batch_size: int = 64,
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, flip: bool = False,
    num_workers: int = 0, progress: bool = True, desc: str = "features",
) -> torch.Tensor:
    """L2-normalised features (N, D), float32 on the CPU, of uint8 images (an ImageSet or an (N, 3, H, W) tensor).

    ``flip`` averages the features of each image and its mirror image before normalising (test-time augmentation).
    """
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    if isinstance(images, torch.Tensor):
        batches = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        total = (len(images) + batch_size - 1) // batch_size
    else:
        # more workers than cores only adds processes (and a torch warning) on small machines
        loader = torch.utils.data.DataLoader(images, batch_size=batch_size,
                                             num_workers=min(num_workers, os.cpu_count() or 1),
                                             pin_memory=device.type == "cuda")
        batches = (x for x, _ in loader)
        total = len(loader)
    return _features(encoder, batches, total, device, dtype, flip, progress, desc)


def _features(encoder: ReIDEncoder, batches: Iterable[torch.Tensor], total: int, device: torch.device,
              dtype: torch.dtype | None, flip: bool, progress: bool, desc: str) -> torch.Tensor:
    """The inference loop of ``extract_features`` over batches of uint8 images."""
    was_training = encoder.training
    encoder.eval()
    out = []
    for x in progress_bar(batches, total=total, desc=desc, disable=not progress, leave=False, unit="batch"):
        x = normalize(to_device(x, device), encoder.mean, encoder.std)
        with autocast(device, dtype):
            f = encoder(x).float()
            if flip:
                f = f + encoder(x.flip(-1)).float()
        # kept on the device until the end: a copy back per batch would stall the queue of launched work
        out.append(torch.nn.functional.normalize(f, dim=-1))
    encoder.train(was_training)
    if not out:
        return torch.empty(0, encoder.feature_dim)
    return torch.cat(out).cpu()


# --------------------------------------------------------------------------------------------------------------
# the one image path: files -> features, with which files the rows belong to


@dataclass
class Embedded:
    """Features of the readable images among some paths, and which paths their rows belong to."""

    features: torch.Tensor  # (len(kept), D), row r is the image paths[kept[r]]
    kept: list[int]  # indices into the paths given, ascending
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason) of the images left out


class ImageCache:
    """Letterboxed uint8 images decoded once per image size (on all cores) and reused by every checkpoint of a run.

    Disabled, it keeps nothing and each checkpoint streams its images from disk through DataLoader workers. At
    224 x 224 an image takes 150 KB: about 1.5 GB for the challenge set. Unreadable images are kept black, with
    their reasons, exactly as the streaming path sees them.
    """

    def __init__(self, enabled: bool = True, progress: bool = True) -> None:
        self.enabled, self.progress = enabled, progress
        self._images: dict[tuple[tuple[str, ...], tuple[int, int], str], tuple[torch.Tensor, dict[int, str]]] = {}

    def get(self, paths: Sequence[Path], size: tuple[int, int], interpolation: str = "bilinear"
            ) -> tuple[torch.Tensor, dict[int, str]] | None:
        """(decoded images of ``paths`` at ``size``, {index: reason} of the unreadable ones), or None when
        disabled."""
        if not self.enabled:
            return None
        key = (tuple(str(p) for p in paths), tuple(size), interpolation)
        if key not in self._images:
            problems: dict[int, str] = {}
            images = decode_images(paths, size, progress=self.progress, desc="decode images",
                                   interpolation=interpolation, problems=problems)
            self._images[key] = (images, problems)
        return self._images[key]


def _unreadable_error(path: Path, reason: str, hint: str) -> UserError:
    return UserError(f"cannot read image {path}: {reason}{hint}")


@torch.no_grad()
def image_features(
    encoder: ReIDEncoder, paths: Sequence[str | os.PathLike], *, batch_size: int = 64,
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, flip: bool = False,
    num_workers: int = 0, progress: bool = True, desc: str = "features", cache: ImageCache | None = None,
    on_error: Literal["skip", "raise"] = "raise", hint: str = "",
) -> Embedded:
    """L2-normalised features (float32, CPU) of the image files ``paths``, with the inputs their rows belong to.

    The images come from ``cache`` when it is enabled, else from disk through DataLoader workers; both run the
    same batches (an unreadable image as a black one, whose row is then dropped), so the numbers do not depend
    on the path. ``on_error="raise"``: the first unreadable image ends the call with a UserError naming it
    (``hint`` appended: what to do), before the remaining images are computed; ``"skip"``: it is left out and
    listed in ``Embedded.unreadable``.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    paths = [Path(p) for p in paths]
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    problems: dict[int, str] = {}
    cached = cache.get(paths, encoder.image_size, encoder.interpolation) if cache is not None else None
    if cached is not None:
        images, problems = cached
        if problems and on_error == "raise":
            i = min(problems)
            raise _unreadable_error(paths[i], problems[i], hint)
        batches: Iterable[torch.Tensor] = (images[i:i + batch_size] for i in range(0, len(images), batch_size))
        total = (len(images) + batch_size - 1) // batch_size
    else:
        # more workers than cores only adds processes (and a torch warning) on small machines
        loader = torch.utils.data.DataLoader(_Tolerant(ImageSet(paths, encoder.image_size,
                                                                interpolation=encoder.interpolation)),
                                             batch_size=batch_size,
                                             num_workers=min(num_workers, os.cpu_count() or 1),
                                             pin_memory=device.type == "cuda")
        batches = _checked(loader, problems, paths, on_error, hint)
        total = len(loader)
    features = _features(encoder, batches, total, device, dtype, flip, progress, desc)
    kept = [i for i in range(len(paths)) if i not in problems]
    if problems:
        features = features[torch.tensor(kept, dtype=torch.long)]
    return Embedded(features, kept, [(paths[i], problems[i]) for i in sorted(problems)])


class _Tolerant(torch.utils.data.Dataset):
    """An ImageSet whose unreadable images come back black with the reason (decided where they are decoded, in
    DataLoader workers too), so one bad file does not end the whole set; "" for a readable image."""

    def __init__(self, images: ImageSet):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        image, reason = read_image(self.images.paths[i], self.images.size, self.images.interpolation)
        if image is None:
            return torch.zeros(3, *self.images.size, dtype=torch.uint8), reason or "it could not be decoded"
        return image, ""


def _checked(loader: Any, problems: dict[int, str], paths: list[Path], on_error: str,
             hint: str) -> Iterator[torch.Tensor]:
    """The loader's image batches; records the unreadable images, or raises at the first one."""
    done = 0
    for x, reasons in loader:
        for j, reason in enumerate(reasons):
            if reason:
                if on_error == "raise":
                    raise _unreadable_error(paths[done + j], reason, hint)
                problems[done + j] = reason
        done += len(reasons)
        yield x


# --------------------------------------------------------------------------------------------------------------
# embedding any images: the public API for using a trained encoder outside the scripts


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every .jpg/.jpeg/.png file under ``folder`` (recursively), sorted by path; UserError if there is none.

    Hidden files and everything inside hidden folders are not images (the ``._x.jpg`` files of macOS copies,
    .git/, ...): ``layout.image_files``, the one scanner, as preprocess_data.py lists them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} not found")
    paths = image_files(folder, recursive=True)[0]
    if not paths:
        raise UserError(f"no .jpg/.jpeg/.png images under {folder}")
    return paths


def _is_path(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _is_image(x: Any) -> bool:
    return isinstance(x, Image.Image | np.ndarray | torch.Tensor)


def _gather_inputs(inputs: Any) -> tuple[list[Any], list[str], bool]:
    """(items, names, are_paths) of the ``embed`` inputs, checked before any model is loaded."""
    if _is_path(inputs):
        root = Path(inputs)
        if root.is_dir():
            paths = list_images(root)
            return paths, [p.relative_to(root).as_posix() for p in paths], True
        inputs = [root]
    elif isinstance(inputs, Image.Image) or (_is_image(inputs) and inputs.ndim == 3):
        inputs = [inputs]  # one image
    items = list(inputs)
    if not items:
        raise UserError("no images to embed: the input list is empty")
    if all(_is_path(x) for x in items):
        missing = [p for p in items if not Path(p).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(f"image {missing[0]} not found{more}")
        return [Path(p) for p in items], [str(p) for p in items], True
    if all(_is_image(x) for x in items):
        return items, [str(i) for i in range(len(items))], False
    raise TypeError("embed inputs must be a folder, a list of image paths, or a list of PIL images / HxWx3 uint8 "
                    "arrays, not a mix")


@torch.no_grad()
def embed(
    checkpoint: str | os.PathLike | ReIDEncoder, inputs: Any, *, batch_size: int = 64, device: str = "auto",
    flip: bool = False, precision: str = "fp32", num_workers: int = 0, progress: bool = True,
    on_error: Literal["skip", "raise"] = "skip",
) -> tuple[torch.Tensor, list[str]]:
    """L2-normalised float32 features (N, D) on the CPU of some images, and the names of the embedded images.

    ``inputs``: a folder (every .jpg/.jpeg/.png under it, recursively, sorted, hidden files left out; names are
    the paths relative to it), one image file or a list of paths (names are the paths as given), or a list of
    PIL images / HxWx3 uint8 arrays (names "0", "1", ...). ``checkpoint`` is a clipreid checkpoint (or its run
    folder) or an already loaded encoder; ``device="auto"`` uses the encoder's own device, any other device
    moves it there. Images are letterboxed as in training; ``flip`` averages each image with its mirror image.
    An image file that cannot be decoded is left out with a warning listing such files (``on_error="skip"``:
    names and features then hold only the embedded images, row for row) or ends the call with a UserError
    naming it (``on_error="raise"``). A convenience for users: the library itself uses ``image_features``.

        features, names = embed("model/ViT-L-14-quickgelu_test_seed1/best.pt", "crops/")
        distances = squared_distances(features[:10], features[10:])
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', not {on_error!r}")
    items, names, are_paths = _gather_inputs(inputs)
    if isinstance(checkpoint, ReIDEncoder):
        encoder = checkpoint
        dev = next(encoder.parameters()).device if device == "auto" else pick_device(device)
        encoder.to(dev)
    else:
        dev = pick_device(device)
        encoder = load_encoder(checkpoint, dev)
    dtype = resolve_precision(precision, dev)
    if are_paths:
        got = image_features(encoder, items, batch_size=batch_size, device=dev, dtype=dtype, flip=flip,
                             num_workers=num_workers, progress=progress, desc="embed", on_error=on_error)
        if not got.kept:
            path, reason = got.unreadable[0]
            raise UserError(f"none of the {len(names)} images could be read, e.g. {path}: {reason}")
        if got.unreadable:
            kept = set(got.kept)
            bad = [names[i] for i in range(len(names)) if i not in kept]
            listed = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
            warnings.warn(f"skipped {len(bad)} unreadable image(s): {listed}", stacklevel=2)
        return got.features, [names[i] for i in got.kept]
    boxed = []
    for i, image in enumerate(items):
        if isinstance(image, np.ndarray) and (image.ndim != 3 or image.shape[2] != 3):
            raise ValueError(f"inputs[{i}]: expected an HxWx3 uint8 array, got shape {image.shape}")
        try:
            boxed.append(to_uint8_tensor(image, encoder.image_size, encoder.interpolation))
        except ValueError as err:
            raise ValueError(f"inputs[{i}]: {err}") from None
    features = extract_features(encoder, torch.stack(boxed), batch_size=batch_size, device=dev, dtype=dtype,
                                flip=flip, num_workers=num_workers, progress=progress, desc="embed")
    return features, names
