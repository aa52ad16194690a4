"""ImageNet-200 of FedAlign (Mendieta et al. 2022, Local Learning Matters, Sec. 4.1 and Table 7), read from
ImageNet-1k's class folders on disk, image by image.

What the authors' code does (github.com/mmendiet/FedAlign), and what this module does with it:

- The classes. ``data_preprocessing/gen_imagenet_subset.py`` draws 200 of ImageNet-1k's 1,000 classes:
  ``np.random.seed(1993)``, ``np.random.choice(classes, 200, replace=False)`` over torchvision ImageFolder's sorted
  class folders. The script ends with the 200 wnids it drew, in draw order: `WNIDS` (one home of the list). The
  subset folder it writes is read with torchvision's ``ImageFolder`` (``datasets.py``, ``ImageFolder_custom``),
  which numbers the class folders in sorted order: label k is the class `CLASSES[k]` (``sorted(WNIDS)``).
- The images. The script copies, class by class in draw order, 500 training images drawn with
  ``np.random.choice(os.listdir(train/<wnid>), 500, replace=False)`` from the same global random state, and every
  validation image of the class (50). Here the same random calls in the same order pick 500 of the class's image
  files sorted by name (`train_subset`): ``os.listdir`` lists in the file system's order, which the code does not
  record, so its exact 500 files cannot be recovered; ours are the draw its random state makes over a sorted
  listing. A training folder with 500 images per class (the authors' generated folder) is read whole. So:
  100,000 training images (the clients' pool) and the 10,000 validation images (the test set). (The script as
  published does not run: it calls argparse without importing it and reads ``data_dir`` for ``args.data_dir``;
  this follows what it evidently does. The paper says only that the 200 classes were sampled at random.)
- The layout. The script reads ``<data_dir>/train/<wnid>/*`` and ``<data_dir>/val/<wnid>/*``: the validation images
  sorted into class folders, as the common ``valprep.sh`` does. ImageNet's flat ``val/*.JPEG`` (as ImageNet-1k
  ships it, e.g. on Kaggle) is read too, with the labels of ``LOC_val_solution.csv`` (columns ImageId,
  PredictionString; the first token of PredictionString is the image's wnid) in data_dir or, data_dir being the
  Kaggle archive's ``ILSVRC/Data/CLS-LOC``, at the archive's top level (`val_solution`): the same images in the
  same order as sorted into folders. The folder may be all of ImageNet-1k (the 200 classes are picked from it) or
  the authors' generated ``imagenet200`` folder.
  Files are those ImageFolder takes (`IMAGE_EXTENSIONS`, any case).
- The resolution. The code evaluates on ``Resize(256)`` (the shorter side to 256, bilinear) then
  ``CenterCrop(224)`` of the RGB image, and trains on ``RandomResizedCrop(224, scale=(0.08, 1))``, ``ColorJitter(0.4,
  0.4, 0.4)`` and a horizontal flip of the full-resolution image, normalised with ImageNet's mean and std
  (``data_loader.py``, ``_data_transforms_imagenet``). `decode` is the evaluation transform exactly (Pillow's
  bilinear resize, as torchvision's on a PIL image) for the test images, and for the training images unless they are
  augmented as the code does (`datasets.imagenet200.augment: resized_crop`): then they are decoded at 256x256 (the
  shorter side resized to 256, the centre 256x256 crop), the code's random resized crop, colour jitter and flip are
  drawn from that image per batch on the device (`fedscape.data.datasets.resized_crop_batch`), not from the
  full-resolution file, and their centre 224x224 crop is exactly the evaluation transform (what evaluation and the
  analyses read of them). With crop_flip (the baseline) training sees the evaluation transform with crop_flip's
  4-pixel padded crop and flip (ours). Either way the decoded pixels are held as uint8 and normalised per batch
  (`fedscape.data.datasets.StoredImages`): 15 GB for the 100,000 training images at 224x224, 19.7 GB at 256x256.

Nothing here holds the images: `ImageFolderImages` keeps the file paths and decodes the rows asked for, batch by batch
(Pillow, on a few threads), like `fedscape.data.imagenet32`. Listing the folders and the labels needs no decoding, so
the partition stage reads the labels alone. Torch-free.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

# The 200 classes in the order gen_imagenet_subset.py of the FedAlign code drew them (its closing comment, "List of
# the 200 classes"; mmendiet/FedAlign, commit 696049d).
WNIDS: tuple[str, ...] = (
    "n01729322", "n01514668", "n04550184", "n03109150", "n01990800", "n02363005", "n12267677", "n01531178",
    "n02123597", "n03016953", "n02011460", "n04153751", "n02096177", "n09468604", "n03657121", "n02101388",
    "n02107908", "n03290653", "n02107574", "n02786058", "n02115913", "n01914609", "n07614500", "n04428191",
    "n03017168", "n04355933", "n02951585", "n03759954", "n01806567", "n02112706", "n03085013", "n03485407",
    "n02526121", "n02091467", "n03710193", "n02128385", "n03775071", "n02102318", "n04604644", "n02033041",
    "n04409515", "n02088094", "n03891332", "n02128757", "n01984695", "n02279972", "n03532672", "n03250847",
    "n15075141", "n03697007", "n02536864", "n04074963", "n03000247", "n04371430", "n02002556", "n04399382",
    "n03785016", "n12768682", "n03527444", "n03942813", "n04026417", "n01537544", "n01775062", "n02814860",
    "n02640242", "n04442312", "n02120079", "n03223299", "n01774384", "n02917067", "n04525305", "n02229544",
    "n02168699", "n01744401", "n07892512", "n02749479", "n07831146", "n04152593", "n03089624", "n02669723",
    "n02950826", "n03691459", "n02116738", "n03967562", "n01882714", "n03141823", "n02105056", "n02094258",
    "n02971356", "n03075370", "n02948072", "n04591157", "n03884397", "n12620546", "n02280649", "n04266014",
    "n02112137", "n04599235", "n02840245", "n01689811", "n04099969", "n04069434", "n01755581", "n01667778",
    "n01496331", "n01641577", "n02093991", "n04235860", "n02087394", "n03998194", "n07753592", "n02916936",
    "n03207743", "n03476991", "n02077923", "n01871265", "n04554684", "n02454379", "n04286575", "n03642806",
    "n04325704", "n02086079", "n07760859", "n02091831", "n03482405", "n12057211", "n02091134", "n02104365",
    "n02895154", "n01833805", "n02028035", "n03649909", "n03775546", "n02444819", "n02017213", "n03450230",
    "n02088466", "n02795169", "n01770081", "n02105251", "n07584110", "n03498962", "n02361337", "n02747177",
    "n03970156", "n04044716", "n02493793", "n04264628", "n01768244", "n04557648", "n02219486", "n01980166",
    "n04039381", "n01829413", "n01677366", "n02281787", "n03218198", "n04590129", "n02843684", "n02410509",
    "n01704323", "n03623198", "n03534580", "n02105641", "n07734744", "n02412080", "n02102480", "n07745940",
    "n09246464", "n01773549", "n04606251", "n03134739", "n02096294", "n04040759", "n07248320", "n02111500",
    "n07768694", "n03868863", "n02086240", "n04310018", "n03476684", "n07742313", "n01828970", "n03461385",
    "n01819313", "n02492660", "n02606052", "n01749939", "n04589890", "n02090622", "n02101556", "n03874293",
    "n01873310", "n02727426", "n02488291", "n03124170", "n02981792", "n03661043", "n02708093", "n02086646",
)
CLASSES: tuple[str, ...] = tuple(sorted(WNIDS))  # label k is CLASSES[k]: ImageFolder's sorted class folders
IMAGENET_CLASSES = 1000  # the classes the subset was drawn from (ImageNet-1k)
SUBSET_SEED = 1993  # gen_imagenet_subset.py: np.random.seed(1993)
TRAIN_PER_CLASS = 500  # gen_imagenet_subset.py: np.random.choice(imgs, 500, replace=False) for the train phase
RESIZE = 256  # data_loader.py _data_transforms_imagenet: image_resize, the shorter side before the centre crop
IMAGE_SIZE = 224  # data_loader.py _data_transforms_imagenet: image_size
MEAN = (0.485, 0.456, 0.406)  # data_loader.py _data_transforms_imagenet: ImageNet's per-channel mean and std
STD = (0.229, 0.224, 0.225)
# torchvision's IMG_EXTENSIONS (the files ImageFolder takes, compared in lower case; the code's datasets.py lists
# the same)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")
_THREADS = 8  # decoding threads of a batch (Pillow releases the GIL while it decodes and resizes)

if len(set(WNIDS)) != 200:
    raise RuntimeError("ImageNet-200 needs 200 distinct wnids")


VAL_SOLUTION = "LOC_val_solution.csv"  # ImageNet's validation labels beside a flat val/ (ImageId,PredictionString)
_SOLUTION_COLUMNS = ("ImageId", "PredictionString")
_KAGGLE_DEPTH = 3  # data_dir ILSVRC/Data/CLS-LOC lies 3 folders below the Kaggle archive's top, which holds the CSV


def val_solution(data_dir: str | Path) -> Path | None:
    """The LOC_val_solution.csv that labels a flat val/: in data_dir, or at the top of the Kaggle archive whose
    ILSVRC/Data/CLS-LOC data_dir is; None where neither exists."""
    root = Path(data_dir).absolute()
    for folder in (root, *list(root.parents)[_KAGGLE_DEPTH - 1 : _KAGGLE_DEPTH]):
        if (folder / VAL_SOLUTION).is_file():
            return folder / VAL_SOLUTION
    return None


def read_val_solution(path: str | Path) -> dict[str, str]:
    """Each validation image's file stem (ImageId) and wnid (the first token of its PredictionString), read from
    LOC_val_solution.csv; ValueError naming the file for other columns or an empty prediction."""
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header[:2]) != _SOLUTION_COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(_SOLUTION_COLUMNS)} (ImageNet's "
                             f"{VAL_SOLUTION}), got {header}")
        labels = {}
        for line, row in enumerate(reader, start=2):
            tokens = row[1].split() if len(row) > 1 else []
            if not tokens:
                raise ValueError(f"{path}, line {line}: no PredictionString for {row[0] if row else '?'}")
            labels[row[0].strip()] = tokens[0]
    return labels


def _flat_images(folder: Path) -> bool:
    """Whether `folder` holds image files itself (ImageNet's flat val/), judged by its first 64 entries."""
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in islice(folder.iterdir(), 64))


def flat_val_solution(data_dir: str | Path) -> Path | None:
    """The LOC_val_solution.csv the validation images below `data_dir` are labelled by (None: val/ is sorted into
    class folders)."""
    return _flat_val(Path(data_dir))


def _flat_val(root: Path) -> Path | None:
    """The LOC_val_solution.csv labelling root/val/ when val/ is flat (no class folder of the 200, images in it)."""
    folder = root / "val"
    if any((folder / w).is_dir() for w in CLASSES) or not _flat_images(folder):
        return None
    return val_solution(root)


def layout_problems(data_dir: str | Path) -> list[str]:
    """What `data_dir` lacks of the layout read here (train/<wnid>/ of the 200 classes; val/<wnid>/, or a flat val/
    with LOC_val_solution.csv), each naming the path; empty when nothing is missing. Lists folders only (no image is
    opened, the CSV is not read)."""
    root = Path(data_dir)
    problems = []
    for split in SPLITS:
        folder = root / split
        if not folder.is_dir():
            problems.append(f"{folder} is not a directory: expected ImageNet's {split}/<wnid>/ class folders there")
            continue
        missing = [w for w in CLASSES if not (folder / w).is_dir()]
        if not missing or (split == "val" and _flat_val(root) is not None):
            continue
        flat = split == "val" and len(missing) == len(CLASSES) and _flat_images(folder)
        hint = (f" (val/ holds the images themselves, as ImageNet ships them: put its {VAL_SOLUTION} (columns "
                f"ImageId,PredictionString) in {root}, or sort the images into val/<wnid>/ class folders, e.g. "
                "with the common valprep.sh)") if flat else ""
        shown = ", ".join(str(folder / w) for w in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        problems.append(f"{len(missing)} of ImageNet-200's {len(CLASSES)} class folders missing in {folder}: "
                        f"{shown}{more}{hint}")
    return problems


def check_layout(data_dir: str | Path) -> Path:
    """`data_dir` as a Path; FileNotFoundError naming every missing folder (`layout_problems`)."""
    problems = layout_problems(data_dir)
    if problems:
        raise FileNotFoundError("ImageNet-200 (FedAlign's 200 classes of ImageNet-1k) not found: "
                                + "; ".join(problems))
    return Path(data_dir)


def class_files(folder: Path) -> list[str]:
    """The image files of one class folder, sorted by name (ImageFolder's extensions, any case)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))


def train_subset(files: dict[str, list[str]], per_class: int = TRAIN_PER_CLASS) -> dict[str, list[str]]:
    """Each class's training files as gen_imagenet_subset.py picks them: its random state seeded with `SUBSET_SEED`
    draws the 200 classes of 1,000, then, class by class in draw order, ``per_class`` of the class's files without
    replacement (here of the files sorted by name), in the order drawn. A class of exactly ``per_class`` files (the
    authors' generated folder) keeps them all, and one of fewer (where the script fails) too. ``files``: each wnid's
    files, sorted."""
    rs = np.random.RandomState(SUBSET_SEED)
    rs.permutation(IMAGENET_CLASSES)  # the class draw: choice(classes, 200, replace=False) is permutation(1000)[:200]
    picked = {}
    for wnid in WNIDS:
        names = files[wnid]
        if len(names) < per_class:  # too few to draw from (the script would fail): all of them
            picked[wnid] = list(names)
            continue
        picked[wnid] = [names[i] for i in rs.choice(len(names), per_class, replace=False)]
    return picked


@dataclass(frozen=True)
class ImageList:
    """The image files of one split (paths) and their labels (int64, index into `CLASSES`), in ImageFolder's order:
    by class, then by file name."""

    paths: tuple[str, ...]
    labels: np.ndarray


def list_split(data_dir: str | Path, split: str, per_class: int | None = None) -> ImageList:
    """The files and labels of ``split`` (train or val) of ImageNet-200 below ``data_dir``; ``per_class``: the
    training files kept per class (`train_subset`, None: all). FileNotFoundError naming what is missing."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    root = check_layout(data_dir) / split
    solution = _flat_val(Path(data_dir)) if split == "val" else None
    folders = {wnid: root / wnid for wnid in CLASSES}
    if solution is not None:  # flat val/: each class's images by the CSV's labels, as if sorted into folders
        by_stem = {Path(n).stem: n for n in class_files(root)}
        labels = read_val_solution(solution)
        absent = sorted(i for i, w in labels.items() if w in folders and i not in by_stem)
        if absent:
            raise FileNotFoundError(f"ImageNet-200: {len(absent)} validation images of {solution} missing in {root}: "
                                    f"{', '.join(absent[:3])}{' ...' if len(absent) > 3 else ''}")
        files = {wnid: [] for wnid in CLASSES}
        for image, wnid in labels.items():
            if wnid in files:
                files[wnid].append(by_stem[image])
        folders = {wnid: root for wnid in CLASSES}
    else:
        files = {wnid: class_files(root / wnid) for wnid in CLASSES}
    empty = [str(root / w) if solution is None else f"{w} (no image of it in {solution})"
             for w in CLASSES if not files[w]]
    if empty:
        raise FileNotFoundError(f"ImageNet-200: {len(empty)} class folders without images "
                                f"({', '.join(IMAGE_EXTENSIONS)}): {', '.join(empty[:3])}"
                                f"{' ...' if len(empty) > 3 else ''}")
    if per_class is not None:
        files = train_subset(files, per_class)
    paths, labels = [], []
    for label, wnid in enumerate(CLASSES):
        names = sorted(files[wnid])  # ImageFolder lists each class's files sorted
        paths += [str(folders[wnid] / n) for n in names]
        labels += [label] * len(names)
    return ImageList(tuple(paths), np.asarray(labels, dtype=np.int64))


def decode(path: str | Path, size: int = IMAGE_SIZE, resize: int = RESIZE) -> np.ndarray:
    """uint8 ``[3, size, size]`` of one image file as the code's evaluation transform makes it: RGB (ImageFolder's
    loader), the shorter side resized to ``resize`` with Pillow's bilinear filter (the longer side to
    int(resize * long / short)), and the centre ``size`` x ``size`` crop (torchvision's Resize and CenterCrop)."""
    from PIL import Image  # lazy: Pillow only to decode images, never to plan or to list them

    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    if new_w < size or new_h < size:
        raise ValueError(f"{path}: {new_w}x{new_h} after resizing is smaller than the {size}x{size} crop")
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))  # a writable copy


class ImageFolderImages:
    """uint8 images ``[N, 3, size, size]`` of a list of files, decoded (`decode`) only for the rows indexed.

    Indexing with an integer array (or a slice) gives those rows in that order, as a numpy array would, so a
    `fedscape.data.sources.Source` holds it as its images; nothing is cached, so the resident memory is one batch.
    """

    def __init__(self, paths: Sequence[str], size: int = IMAGE_SIZE, resize: int = RESIZE) -> None:
        self.paths = tuple(paths)
        self.size, self.resize = size, resize

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return len(self.paths), 3, self.size, self.size

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __getitem__(self, index: np.ndarray | Sequence[int] | slice | int) -> np.ndarray:
        if isinstance(index, slice):
            index = np.arange(len(self.paths))[index]
        if np.ndim(index) == 0:
            return self.read(np.asarray([index]))[0]
        return self.read(np.asarray(index))

    def read(self, index: np.ndarray) -> np.ndarray:
        """The decoded images of rows ``index`` (positions in the file list), in that order."""
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < -len(self.paths) or rows.max() >= len(self.paths)):
            raise IndexError(f"index out of range for {len(self.paths)} images")
        out = np.empty((len(rows), 3, self.size, self.size), dtype=np.uint8)

        def one(j: int) -> None:
            out[j] = decode(self.paths[int(rows[j])], self.size, self.resize)

        if len(rows) <= 1:
            for j in range(len(rows)):
                one(j)
        else:
            with ThreadPoolExecutor(min(_THREADS, len(rows), os.cpu_count() or 1)) as pool:
                list(pool.map(one, range(len(rows))))
        return out
