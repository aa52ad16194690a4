"""Torch-free facts about every dataset (what planning and config checks need without loading data)."""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from fedscape.core.config import without_baselines
from fedscape.core.names import unknown_name_error
from fedscape.data import imagenet200

# What a dataset's samples are: float images [N, C, H, W], or int64 token ids [N, T] (text).
INPUT_KINDS: tuple[str, ...] = ("image", "tokens")
# A target position that counts in no loss, accuracy or count (padding of a sequence task's y [N, T]): torch's
# default ignore_index. Readers write it (data.leaf, data.stackoverflow), models.loss skips it.
IGNORE_INDEX = -100
# LEAF's Shakespeare vocabulary (Caldas et al. 2018, models/utils/language_utils.py ALL_LETTERS): a
# character's token id is its position here.
SHAKESPEARE_VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SHAKESPEARE_SEQ_LEN = 80  # characters per input sequence in LEAF's Shakespeare
# Where a dataset's samples come from (`datasets.<name>.source`): `preprocessed`, the files its publishers'
# scripts write (CIFAR's archives, LEAF's train/ and test/ JSON); `raw`, Shakespeare only: next-character samples
# cut here from LEAF's raw texts by speaking role (raw_data/by_play_and_character/, `fedscape.data.leaf`), with the
# layer-wise LMC paper's vocabulary and any sequence length (Adilova et al., appendix: 96 characters, sequences of
# 256), where LEAF's preprocessing fixes 80 of each.
SOURCES: tuple[str, ...] = ("preprocessed", "raw")
RAW_SOURCE_DATASETS: tuple[str, ...] = ("shakespeare",)
# The vocabulary of the raw texts: the layer-wise authors' character tokenizer (their LLM runs use epfml/llm-baselines,
# src/data/shakespeare.py: sorted ASCII letters, digits, punctuation, space and newline, 96 characters; a character
# outside it is dropped). Printable ASCII whole: the text as given, where LEAF's 80 leave out e.g. `*`, `$` and `@`.
SHAKESPEARE_RAW_VOCAB = "".join(sorted(set(string.ascii_letters + string.digits + string.punctuation + " \n")))
# The share of each role's text (its end) that is its test part: the authors cut their text at 80 % (the same
# code), LEAF's and FedAvg's Shakespeare split 80/20 (McMahan et al. 2017; LEAF's -tf 0.8).
SHAKESPEARE_RAW_TEST_FRACTION = 0.2
# Stack Overflow's next-word task as Reddi et al. 2021 set it (Sec. 5 / App. C.3; TFF's baseline): the 10,000 most
# frequent words, sequences of 20 words; the model's ids add padding, out-of-vocabulary, beginning and end
STACKOVERFLOW_VOCAB_SIZE = 10_000
STACKOVERFLOW_SEQ_LEN = 20
STACKOVERFLOW_SPECIAL_TOKENS = 4
# LEAF's Reddit (Caldas et al. 2018; data/reddit/source/preprocess.py SEQ_LEN, build_vocab.py's default vocabulary
# size): sequences of 10 tokens over 10,000 ids (<PAD> 0 and <UNK> 1 among them).
REDDIT_SEQ_LEN = 10
REDDIT_VOCAB_SIZE = 10_000
# FEMNIST's 62 classes as LEAF numbers them (data_to_json.py relabel_class): digits, upper case, lower case.
FEMNIST_CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class DatasetInfo:
    """Shape of a dataset's samples, known without loading it.

    For token inputs (``inputs == "tokens"``) ``in_channels`` is the vocabulary size (the channels a
    one-hot encoding would have) and ``image_size`` the sequence length, so that models, checkpoints
    and init settings describe both kinds with the same three numbers. LEAF's datasets keep their own
    test split (``fixed_test_split``) and give as ``train_samples`` the sample count of the full data
    set, an upper bound since LEAF's sampling and split choose what its files hold (Reddit's is a lower bound: its
    entry).
    """

    in_channels: int
    image_size: int
    num_classes: int
    description: str
    train_samples: int  # the training pool before the proxy split (digits: all samples, before the test split)
    fixed_test_split: bool  # True: the dataset's own test set (CIFAR); False: `test_fraction` of the samples
    writers: bool = False  # each sample has a writer / user id (LEAF's datasets): the `natural` partition kind
    inputs: str = "image"  # one of INPUT_KINDS
    needs_data_dir: bool = False  # read from the files below `datasets.<name>.data_dir` (False: bundled)
    # How its images are held in memory: "float32", normalised once; "uint8", the decoded pixels, normalised per batch
    # on their device (`fedscape.data.datasets.StoredImages`: a quarter of the memory, the same float32 batches)
    stored: str = "float32"
    # The side of the stored training images where it is larger than image_size (None: the same): the image that
    # `resized_crop` draws its crops from, evaluated by its centre image_size crop
    train_stored_size: int | None = None
    # What each sample's label is: one class (images; LEAF's Shakespeare, the character after the sequence), or the
    # next token at every position of the sequence (the word data sets: their published files give nothing else).
    # A data set of the second kind has `targets: every` only, and no partition that splits by class.
    sequence_labels: bool = False
    # What its reader makes of the published files (the classes its accuracy never credits, `never_correct`,
    # included): bumped when that output changes for the same files, so that the
    # jobs of this data set alone rerun, as a result version does for a job kind (the files' fingerprints cover the
    # files, not the reader). Its jobs' `dataset_options` carry it from 2 (`dataset_settings`): 1 is the baseline;
    # so do the inits pretrained on it as another data set's proxy (`stages.init_settings.PretrainedInit`). Its
    # partitions' too, whichever their kind: a partition file records its labels' checksum and class counts, and a
    # job that loads it checks them against the labels it reads (`data.partition.load_partition`), so a split of the
    # same indices made with the old reader (a `natural` one, say) is refused by the jobs made from it.
    reader_version: int = 1
    # The writers its publishers count in the full data set (its entry cites them): a bound of those with training
    # samples in its files, since LEAF's non-i.i.d. sampling, minimum-sample filter (`-k`) and train/test split keep a
    # subset of its users (an i.i.d. sample, `-s iid`, makes `--iu` times as many new users: no more for `--iu` up to
    # 1), and Stack Overflow's reader reads TFF's train clients. None where none is published (no writers;
    # Shakespeare's raw texts, `dataset_info`). Planning reads it where the writers count: whether a writers' proxy
    # split without max_clients holds one (`fedscape.plan.init.proxy_split_problem`), and the share of the samples a
    # max_clients read decodes (`fedscape.plan.resources.data_bytes`). No job's settings carry it.
    published_writers: int | None = None

    @property
    def own_targets(self) -> str:
        """The targets `datasets.<name>.targets: null` stands for: `every` for sequence labels, else `next`."""
        return TARGETS[1] if self.sequence_labels else TARGETS[0]

    def client_pool_bound(self, test_fraction: float, proxy_fraction: float) -> int:
        """An upper bound of the samples split among the clients (the splits round per class)."""
        n = self.train_samples if self.fixed_test_split else self.train_samples * (1 - test_fraction)
        return int(n * (1 - proxy_fraction)) + self.num_classes

    @property
    def shape(self) -> tuple[int, int, int]:
        """(in_channels, image_size, num_classes)."""
        return self.in_channels, self.image_size, self.num_classes

    @property
    def input_description(self) -> str:
        """The samples in words, e.g. '3x32x32 images' or 'sequences of 80 tokens over 80 symbols'."""
        if self.inputs == "tokens":
            return f"sequences of {self.image_size} tokens over {self.in_channels} symbols"
        return f"{self.in_channels}x{self.image_size}x{self.image_size} images"

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations its samples admit (crop_flip moves pixels, so images only; resized_crop crops a larger
        stored image, so only a dataset that stores one)."""
        if self.inputs != "image":
            return ("none",)
        return tuple(a for a in AUGMENTATIONS if a not in STORED_IMAGE_AUGMENTATIONS or self.train_stored_size)


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1, 8, 10, "scikit-learn's bundled 8x8 digits (UCI optical digits), no download", 1797,
                          False),
    "cifar10": DatasetInfo(3, 32, 10, "CIFAR-10 (Krizhevsky 2009), python version from data_dir", 50000, True,
                           needs_data_dir=True),
    "cifar100": DatasetInfo(3, 32, 100, "CIFAR-100 (Krizhevsky 2009), python version from data_dir", 50000, True,
                            needs_data_dir=True),
    # LEAF (Caldas et al. 2018), Table 1: 3,550 writers, 805,263 samples (no `published_writers`: a full run of LEAF's
    # scripts may keep more, as Flower's copy of its FEMNIST holds 814,277 samples, so 3,550 bounds nothing);
    # 4,226,158 samples of 1,129 roles, those of
    # its all_data.json: the roles of more than two lines (preprocess_shakespeare.py) whose text is longer than one
    # 80-character window (shake_utils.py), from the Gutenberg file its get_data.sh fetches (1,129 in a full-size
    # run: TalwalkarLab/leaf#17; its train/test split keeps 660, #19).
    "femnist": DatasetInfo(1, 28, 62, "FEMNIST (LEAF, Caldas et al. 2018): 28x28 handwritten characters by "
                           "writer, LEAF's JSON from data_dir", 805263, True, writers=True, needs_data_dir=True),
    "shakespeare": DatasetInfo(len(SHAKESPEARE_VOCAB), SHAKESPEARE_SEQ_LEN, len(SHAKESPEARE_VOCAB),
                               "Shakespeare (LEAF, Caldas et al. 2018): next character of 80-character lines by "
                               "speaking role, LEAF's JSON from data_dir", 4226158, True, inputs="tokens",
                               writers=True, needs_data_dir=True, published_writers=1129),
    # FedAlign's ImageNet-200 (Mendieta et al. 2022, Sec. 4.1): 200 classes of ImageNet-1k at the code's 224x224,
    # 500 training images per class (fedscape.data.imagenet200), ImageNet's validation images as the test set.
    "imagenet200": DatasetInfo(3, imagenet200.IMAGE_SIZE, len(imagenet200.CLASSES),
                               "ImageNet-200 (FedAlign, Mendieta et al. 2022): 200 classes of ImageNet-1k, 500 "
                               "training images each, decoded to 224x224 from data_dir's train/<wnid>/ and "
                               "val/<wnid>/ JPEGs", imagenet200.TRAIN_PER_CLASS * len(imagenet200.CLASSES), True,
                               needs_data_dir=True, stored="uint8",
                               train_stored_size=imagenet200.RESIZE),
    # TFF's Stack Overflow (tff.simulation.datasets.stackoverflow: 342,477 train clients, 135,818,730 examples; Reddi
    # et al. 2021 Table 2): the next word at every position of 20-word sequences, 10,000 words and 4 special ids.
    "stackoverflow": DatasetInfo(STACKOVERFLOW_VOCAB_SIZE + STACKOVERFLOW_SPECIAL_TOKENS, STACKOVERFLOW_SEQ_LEN,
                                 STACKOVERFLOW_VOCAB_SIZE + STACKOVERFLOW_SPECIAL_TOKENS,
                                 "Stack Overflow (TFF; Reddi et al. 2021): next word at every position of "
                                 "20-word sequences by user, TFF's stackoverflow.sqlite from data_dir", 135818730,
                                 True, writers=True, inputs="tokens", needs_data_dir=True, sequence_labels=True,
                                 published_writers=342_477,
                                 # 2: an empty text is [bos, oov, eos], as TFF splits it (from 2026-11-28)
                                 reader_version=2),
    # LEAF's Reddit (Caldas et al. 2018, Table 1: 1,660,820 users, 56,587,343 comments). A comment gives one sample
    # per 10 tokens, so this is a lower bound of the samples, not the upper bound `client_pool_bound` takes it for:
    # its plan check (num_clients x partition.min_size against it) could wrongly refuse only a plan that asks tens of
    # millions of samples for its clients.
    "reddit": DatasetInfo(REDDIT_VOCAB_SIZE, REDDIT_SEQ_LEN, REDDIT_VOCAB_SIZE,
                          "Reddit (LEAF, Caldas et al. 2018): next token at every position of 10-token sequences by "
                          "user, LEAF's JSON and vocabulary pickle from data_dir", 56587343, True, writers=True,
                          inputs="tokens", needs_data_dir=True, sequence_labels=True, published_writers=1_660_820,
                          # 2: what its evaluations count changed: the reader names <PAD> and <UNK> as the classes
                          # whose prediction its accuracy never credits, as LEAF's accuracy
                          # (`fedscape.data.leaf.RedditVocab.never_correct`; the loss as before) (from 2026-11-28)
                          reader_version=2),
}
DATASET_NAMES: tuple[str, ...] = tuple(sorted(DATASETS))
# `datasets.<name>` keys added after results existed, with their baselines (what every job read before the key):
# a job's `dataset_options` leave a key out at its baseline (`dataset_settings`), so adding them reran nothing.
# `eval_stride` is the exception: its default (null, `resolved_eval_stride`) is not its baseline (1: every window, as
# every job evaluated before the key), so `dataset_settings` writes the stride it resolves to, and exactly the jobs
# that evaluate a raw text's windows at another stride (`targets: every`) rerun.
DATASET_BASELINES: dict[str, object] = {"source": "preprocessed", "seq_len": None, "targets": None,
                                         "max_clients": None, "channel_mean": None, "channel_std": None,
                                         "proxy_split": "samples", "eval_stride": 1}
# The order of the `datasets.<name>` keys in a job's settings, whatever order the config writes them in: the Hessian
# and landscape-chunk jobs keep it (the others sort their settings), and Snakemake compares the settings as text.
# It is the order the default config's options had when those jobs were first made (its two keys, then the schema's
# defaults), so that its results and those of every config that writes the same keys kept their settings; a key
# added later goes last (tests/unit/test_config.py checks that every key of the schema is here).
DATASET_OPTION_ORDER: tuple[str, ...] = ("test_fraction", "proxy_fraction", "data_dir", "download", "augment",
                                         "split_seed", "source", "seq_len", "targets", "channel_mean", "channel_std",
                                         "max_clients", "proxy_split", "eval_stride")
_OPTION_RANK = {key: i for i, key in enumerate(DATASET_OPTION_ORDER)}
# The key of a job's `dataset_options` that holds its data set's `DatasetInfo.reader_version`: the code's, not the
# config's (the schema refuses it under `datasets.<name>`), and read by no loader; absent at the first version.
READER_VERSION = "reader_version"
# Where a data set's files are and whether fedscape may fetch them (`datasets.<name>.data_dir`, `download`): not
# what the data is. Every job's settings carry these keys at these values, whatever the config says, and a job reads
# the config's own when it starts (`fedscape.data.locations.with_data_locations`, which its record keeps): moving the
# data to a node's scratch or a colleague's copy, or turning `download` off once the files are there, reruns nothing.
# What the files hold is recorded too (their fingerprint), and `make status` lists the results made from other data
# than the files there now, with the command that remakes them.
LOCATION_BASELINES: dict[str, object] = {"data_dir": None, "download": False}
# The same for a pretrained init's folders: its proxy data set's (`inits.<label>.proxy_data_dir`; None: the clients'
# data set's data_dir) and down-sampled ImageNet's (`proxy_dir`). A folder that is set is planned at its baseline
# here and one that is not stays None: whether `proxy_dir` is set says which proxy the init trains on, where it is
# does not. (Its baseline is no folder a job could read by mistake: `fedscape.stages.init` refuses it.)
INIT_LOCATION_BASELINES: dict[str, object] = {"proxy_data_dir": None, "proxy_dir": "<inits.proxy_dir>"}
# The files of down-sampled ImageNet in a pretrained init's `proxy_dir`: the training batches as Chrabaszcz et al.
# 2017 publish them (Imagenet32_train_npz: train_data_batch_1.npz ... train_data_batch_10.npz). Their validation
# file, val_data.npz, may lie beside them and is no pretraining data.
IMAGENET32_FILES = "train_data_batch_*.npz"
# What `fedscape.data.imagenet32` makes of those files, as a data set's `DatasetInfo.reader_version` is of its own:
# bumped when that output changes for the same files (their fingerprints cover the files, not the reader), so that
# the inits pretrained on them (`proxy_dir`) alone rerun. They carry it from 2, as `proxy_reader_version`
# (`proxy_reader_version_setting`): 1 is the baseline, the reader of every such init made before the version.
IMAGENET32_READER_VERSION = 1
# Datasets normalised per RGB channel with published statistics (`fedscape.data.sources.normalisation`), which
# `datasets.<name>.channel_mean` and `channel_std` may replace with a paper's own (e.g. the CIFAR std of many public
# loaders, (0.2023, 0.1994, 0.2010), that the flatness paper's code uses)
CHANNEL_STATISTICS: tuple[str, ...] = ("channel_mean", "channel_std")
RGB_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "imagenet200")
# What a text data set's targets are (`datasets.<name>.targets`): `next`, the token after each sequence (one class
# per sample, LEAF's Shakespeare task); `every`, the next token at every position, the input shifted by one (a
# sequence task, targets [N, T] and logits [N, vocab, T]: `fedscape.models.loss`), as the layer-wise LMC authors
# train and evaluate their GPT (Adilova et al. 2023; link-er/layer-wise-lmc LLMC/get_llm.py: get_batch's targets are
# the window shifted by one, its accuracy the mean over every position). null: the data set's own
# (`DatasetInfo.own_targets`), the baseline: `next` for Shakespeare, `every` for the word data sets.
TARGETS: tuple[str, ...] = ("next", "every")
# What the own proxy split (`datasets.<name>.proxy_split`, `fedscape.data.sources`) holds out of the training pool:
# `samples`, rows of every writer (stratified by class; at random for sequence labels), so that on a data set with
# writers the pretraining sees the handwriting or text of the very writers the clients hold; `writers`, whole writers
# (data sets with writers only), so that the proxy shares no writer with the clients' pool or the test part, as
# pretraining on data disjoint from the clients' asks (Nguyen et al. 2022, "Where to Begin?").
PROXY_SPLITS: tuple[str, ...] = ("samples", "writers")
# Data sets with more clients than a run reads (`datasets.<name>.max_clients`: the first k clients of the files)
MANY_CLIENT_DATASETS: tuple[str, ...] = ("stackoverflow", "reddit")
# none; crop_flip (the CIFAR standard: CROP_PADDING); resized_crop: FedAlign's ImageNet training transform
# (data_loader.py _data_transforms_imagenet: torchvision's RandomResizedCrop(224, scale=(0.08, 1)), ColorJitter(0.4,
# 0.4, 0.4), RandomHorizontalFlip), drawn per batch from the stored train_stored_size image
AUGMENTATIONS: tuple[str, ...] = ("none", "crop_flip", "resized_crop")
STORED_IMAGE_AUGMENTATIONS: tuple[str, ...] = ("resized_crop",)  # they need DatasetInfo.train_stored_size
# Client training trains them one client after another: the crop sizes differ per image, which the stacked
# clients' batches of the vectorised trainer do not take (fedscape.fl.vectorized refuses them)
SEQUENTIAL_AUGMENTATIONS: tuple[str, ...] = ("resized_crop",)
RESIZED_CROP_SCALE = (0.08, 1.0)  # the code's crop_scale: the crop's share of the image's area
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)  # torchvision RandomResizedCrop's default aspect ratios (the code keeps them)
COLOR_JITTER = 0.4  # the code's jitter_param: brightness, contrast and saturation factors drawn in [0.6, 1.4]
STORAGE: tuple[str, ...] = ("float32", "uint8")  # DatasetInfo.stored
CROP_PADDING = 4  # pixels of zero padding before the random crop (the CIFAR standard)
# Datasets fedscape reads only from files made elsewhere: `download` cannot fetch them.
NO_DOWNLOAD: dict[str, str] = {
    "femnist": "LEAF builds FEMNIST from NIST Special Database 19 with its data/femnist/preprocess.sh",
    "shakespeare": "LEAF builds Shakespeare from the Gutenberg text with its data/shakespeare/preprocess.sh",
    "imagenet200": "image-net.org distributes ImageNet-1k (ILSVRC2012) to registered users only",
    "stackoverflow": "TFF publishes stackoverflow.sqlite.lzma (tff.simulation.datasets.stackoverflow.load_data "
                     "fetches it)",
    "reddit": "LEAF builds Reddit from pushshift.io's comments with its data/reddit/ scripts",
}
# What data_dir holds for the datasets fedscape cannot download (the hint of a `download: true` error).
DATA_DIR_HOLDS: dict[str, str] = {
    "femnist": "LEAF's train/ and test/ JSON files",
    "shakespeare": "LEAF's train/ and test/ JSON files",
    "imagenet200": ("ImageNet-1k's train/<wnid>/ image folders and val/ (sorted into <wnid>/ folders, or flat "
                    "with LOC_val_solution.csv; fedscape.data.imagenet200)"),
    "stackoverflow": "TFF's stackoverflow.sqlite (decompressed from its stackoverflow.sqlite.lzma) and "
                     "stackoverflow.word_count",
    "reddit": "LEAF's train/ and test/ JSON files and vocab/reddit_vocab.pck",
}


# -- the layouts of data_dir that the readers look for (fedscape.data.sources, fedscape.data.leaf), declared here so
# that the check before a run's first job (`data_layout_problems`) looks for the same files


@dataclass(frozen=True)
class CifarLayout:
    """CIFAR-10/100's python version below a data_dir: the folder its archive unpacks to and the files read there."""

    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)

    def where(self, data_dir: str | None) -> Path:
        """Its folder below `data_dir` (below a `<data_dir>` placeholder without one)."""
        return Path(data_dir) / self.folder if data_dir is not None else Path("<data_dir>", self.folder)

    def missing(self, data_dir: str | None) -> tuple[str, ...]:
        """Its files that are not in its folder below `data_dir` (every one without a data_dir)."""
        if data_dir is None:
            return self.files
        return tuple(f for f in self.files if not (self.where(data_dir) / f).is_file())


CIFAR_LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"),
    "cifar100": CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta"),
}
LEAF_SPLITS = ("train", "test")  # LEAF's folders of JSON files
LEAF_JSON_DATASETS = ("femnist", "shakespeare", "reddit")  # read from LEAF's JSON files (fedscape.data.leaf)
RAW_ROLES_DIR = "by_play_and_character"  # LEAF's folder of Shakespeare's raw texts, one file per speaking role


def leaf_places(name: str, data_dir: str) -> tuple[Path, Path]:
    """Where LEAF's train/ and test/ JSON folders of dataset `name` are looked for: in `data_dir` itself, then in
    `data_dir/<name>/data` (LEAF's own layout, so that one data_dir can hold several datasets)."""
    return Path(data_dir), Path(data_dir) / name / "data"


def leaf_folder(name: str, data_dir: str | None) -> Path | None:
    """The first of `leaf_places` whose train/ and test/ both hold JSON files; None where neither does."""
    if data_dir is None:
        return None
    return next((where for where in leaf_places(name, data_dir)
                 if all(any((where / split).glob("*.json")) for split in LEAF_SPLITS)), None)


def raw_roles_places(data_dir: str) -> tuple[Path, ...]:
    """Where the folder of Shakespeare's raw texts by role (RAW_ROLES_DIR) is looked for: in `data_dir`, its
    `raw_data` (LEAF's data/shakespeare/data) and its `shakespeare/data/raw_data` (LEAF's repository)."""
    return Path(data_dir), Path(data_dir) / "raw_data", Path(data_dir) / "shakespeare" / "data" / "raw_data"


def raw_roles_folder(data_dir: str | None) -> Path | None:
    """The first RAW_ROLES_DIR of `raw_roles_places` that holds .txt files; None where none does."""
    if data_dir is None:
        return None
    return next((where / RAW_ROLES_DIR for where in raw_roles_places(data_dir)
                 if any((where / RAW_ROLES_DIR).glob("*.txt"))), None)


# Stack Overflow's files in its data_dir, read by fedscape.data.stackoverflow: TFF's database, which TFF publishes
# compressed (its name + .lzma) and the reader opens decompressed, and TFF's word-count file (the vocabulary)
STACKOVERFLOW_DATABASE = "stackoverflow.sqlite"
STACKOVERFLOW_WORD_COUNT_FILE = "stackoverflow.word_count"
# LEAF's Reddit vocabulary (data/reddit/build_vocab.py writes it into --target-dir vocab), read by fedscape.data.leaf
REDDIT_VOCAB_FILE = "reddit_vocab.pck"
REDDIT_VOCAB_HOW = "make it with LEAF's data/reddit/build_vocab.py --data-dir ./data/train --target-dir vocab"


def reddit_vocab_places(directory: Path) -> tuple[Path, ...]:
    """Where REDDIT_VOCAB_FILE is looked for near `directory`, the folder of LEAF's Reddit train/ and test/: in its
    ``vocab/``, its parent's ``vocab/`` (LEAF's data/reddit/ layout) and itself."""
    return directory / "vocab", directory.parent / "vocab", directory


def reddit_vocab_file(directory: Path) -> Path | None:
    """The first REDDIT_VOCAB_FILE of `reddit_vocab_places`; None where none is there."""
    return next((where / REDDIT_VOCAB_FILE for where in reddit_vocab_places(directory)
                 if (where / REDDIT_VOCAB_FILE).is_file()), None)


def _cifar_layout_problems(name: str, data_dir: str, options: dict) -> list[str]:
    layout = CIFAR_LAYOUTS[name]
    missing = layout.missing(data_dir)
    if not missing or options.get("download"):  # the job downloads the archive into data_dir before reading it
        return []
    return [f"missing {', '.join(missing)} in {layout.where(data_dir)}: {name}'s python version is read from there "
            f"(the files {', '.join(layout.files)}); copy the extracted {layout.archive} into {data_dir}, or set "
            "`download: true` on a machine with internet access"]


def _leaf_layout_problems(name: str, data_dir: str, options: dict) -> list[str]:
    if options.get("source") == "raw":
        if raw_roles_folder(data_dir) is not None:
            return []
        places = ", ".join(str(where / RAW_ROLES_DIR) for where in raw_roles_places(data_dir))
        return [f"no .txt files in {places}: source: raw reads LEAF's raw texts by speaking role "
                f"({RAW_ROLES_DIR}/<PLAY>_<ROLE>.txt, in LEAF's data/shakespeare/data/raw_data/)"]
    if leaf_folder(name, data_dir) is not None:
        return []
    splits = " and ".join(f"{split}/*.json" for split in LEAF_SPLITS)
    return [f"no {splits} in {' or '.join(str(p) for p in leaf_places(name, data_dir))}: expected "
            f"{DATA_DIR_HOLDS[name]} ({NO_DOWNLOAD[name]}; data_dir is LEAF's data/{name}/data folder or a folder "
            f"holding {name}/data)"]


def _reddit_layout_problems(data_dir: str, options: dict) -> list[str]:
    problems = _leaf_layout_problems("reddit", data_dir, options)
    folder = leaf_folder("reddit", data_dir)
    if problems or reddit_vocab_file(folder) is not None:
        return problems
    places = ", ".join(str(where) for where in reddit_vocab_places(folder))
    return [f"no {REDDIT_VOCAB_FILE} in {places}: reddit's token ids are those of LEAF's vocabulary pickle; "
            f"{REDDIT_VOCAB_HOW}"]


def _stackoverflow_layout_problems(data_dir: str, options: dict) -> list[str]:
    missing = [name for name in (STACKOVERFLOW_DATABASE, STACKOVERFLOW_WORD_COUNT_FILE)
               if not (Path(data_dir) / name).is_file()]
    if not missing:
        return []
    compressed = Path(data_dir) / f"{STACKOVERFLOW_DATABASE}.lzma"
    if STACKOVERFLOW_DATABASE in missing and compressed.is_file():
        how = (f"{compressed} is there: decompress it once with fedscape.data.stackoverflow."
               f"decompress_database({str(data_dir)!r})")
    else:
        how = NO_DOWNLOAD["stackoverflow"]
    return [f"missing {', '.join(missing)} in {data_dir}: expected {DATA_DIR_HOLDS['stackoverflow']} ({how})"]


# Datasets whose folder layout is checked before their jobs start (torch-free, listing folders only): (data_dir,
# its `datasets.<name>` settings) -> the problems of the data_dir, each naming the missing path.
_LAYOUT_PROBLEMS = {
    "imagenet200": lambda data_dir, options: imagenet200.layout_problems(data_dir),
    **{name: partial(_cifar_layout_problems, name) for name in CIFAR_LAYOUTS},
    **{name: partial(_leaf_layout_problems, name) for name in LEAF_JSON_DATASETS},
    "reddit": _reddit_layout_problems,  # LEAF's JSON, and its vocabulary
    "stackoverflow": _stackoverflow_layout_problems,
}


def dataset_info(name: str, options: dict | None = None) -> DatasetInfo:
    """Static facts about dataset `name` read with its `datasets.<name>` settings `options` (None: the defaults);
    ValueError naming the valid ones for an unknown name.

    Shakespeare from its raw texts (`source: raw`) has the raw vocabulary (SHAKESPEARE_RAW_VOCAB) and sequences of
    `seq_len` characters (null: LEAF's 80), and no published writer count: its role files (by_play_and_character/,
    every role of more than two lines) include those LEAF's 1,129 leave out for holding no 80-character window, which
    a shorter seq_len reads.
    """
    if name not in DATASETS:
        raise unknown_name_error("dataset", name, DATASET_NAMES)
    info = DATASETS[name]
    if (options or {}).get("source") == "raw" and name == "shakespeare":
        vocab, seq_len = len(SHAKESPEARE_RAW_VOCAB), options.get("seq_len") or SHAKESPEARE_SEQ_LEN
        return replace(info, in_channels=vocab, image_size=int(seq_len), num_classes=vocab, published_writers=None,
                       description=f"Shakespeare from LEAF's raw texts by speaking role: next character of "
                                   f"{seq_len}-character sequences over {vocab} characters, from data_dir")
    return info


def fits_dataset(name: str, num_classes: int, in_channels: int, image_size: int) -> bool:
    """Whether a model of this shape can be one trained on dataset `name` with some of its settings: its default
    shape, or (Shakespeare from its raw texts) the raw vocabulary at a sequence length of `image_size`.

    A run id names the dataset but not its settings, so a checkpoint's shape is checked against each of them.
    """
    shape = (num_classes, in_channels, image_size)
    infos = [dataset_info(name)]
    if name in RAW_SOURCE_DATASETS:
        infos.append(dataset_info(name, {"source": "raw", "seq_len": image_size}))
    return any((i.num_classes, i.in_channels, i.image_size) == shape for i in infos)


def resolved_targets(name: str, options: dict) -> str:
    """What the models trained on data set `name` predict, read from its `datasets.<name>` settings `options`:
    `targets`, or where it is null (or left out at its baseline) the data set's own (`DatasetInfo.own_targets`)."""
    return options.get("targets") or dataset_info(name).own_targets


def resolved_eval_stride(name: str, options: dict) -> int:
    """The stride s of the windows that evaluations score of data set `name` cut from its raw texts (`source: raw`),
    read from its `datasets.<name>` settings `options`: per role and part the windows starting at 0, s, 2s, ...
    (`fedscape.data.leaf.read_shakespeare_raw`), where training draws from the windows at every start.

    `eval_stride` null (the default) scores each character's target once: seq_len with `targets: every` (each window
    scores its seq_len next characters: the non-overlapping windows, the standard evaluation of a language model,
    where every window would score each character seq_len times, once at each position), 1 with `targets: next` (each
    window scores the character after it). Left out, as a job's settings leave it at its baseline, it is 1: every
    window, what every job evaluated before the key. Null is 1 for a data set not cut from raw texts (every sample),
    which takes no other (`dataset_option_problems`)."""
    stride = options.get("eval_stride", DATASET_BASELINES["eval_stride"])
    if stride is not None:
        return stride
    if options.get("source", DATASET_BASELINES["source"]) != SOURCES[1]:
        return 1
    return (options.get("seq_len") or SHAKESPEARE_SEQ_LEN) if resolved_targets(name, options) == TARGETS[1] else 1


def dataset_settings(name: str, options: dict) -> dict:
    """`datasets.<name>` as a job's settings carry it: less the keys at their baseline (DATASET_BASELINES), and
    `targets` where it names the data set's own (so `targets: next` on Shakespeare is the job of null); `eval_stride`
    as it resolves (`resolved_eval_stride`: null and the number it stands for are one job); with the data set's
    `reader_version` last where it is past the first (READER_VERSION), which no config key sets."""
    settings = without_baselines({**options, "eval_stride": resolved_eval_stride(name, options)}, DATASET_BASELINES)
    if name in DATASETS and settings.get("targets") == DATASETS[name].own_targets:
        del settings["targets"]
    for key, baseline in LOCATION_BASELINES.items():
        if key in settings:
            settings[key] = baseline
    settings = dict(sorted(settings.items(), key=lambda item: _OPTION_RANK.get(item[0], len(_OPTION_RANK))))
    if (version := reader_version_setting(name)) is not None:
        settings[READER_VERSION] = version
    return settings


def reader_version_setting(name: str | None) -> int | None:
    """Data set `name`'s `DatasetInfo.reader_version` as the settings of a job that reads it carry it: where it is
    past the first, None at the first (the reader of every job made before the versions, whose settings it leaves as
    they were), for a name that is no data set's, and for None (no data set)."""
    return _past_first(DATASETS[name].reader_version) if name in DATASETS else None


def proxy_reader_version_setting(proxy_dataset: str | None, proxy_dir: str | None) -> int | None:
    """The reader version of a pretrained init's proxy data as its settings carry it (None at the first, as
    `reader_version_setting`): down-sampled ImageNet's (IMAGENET32_READER_VERSION) where `proxy_dir` is set, which the
    init reads instead of any proxy_dataset (`fedscape.stages.init.proxy_data`), else `proxy_dataset`'s."""
    return _past_first(IMAGENET32_READER_VERSION) if proxy_dir else reader_version_setting(proxy_dataset)


def _past_first(version: int) -> int | None:
    """A reader's version as a job's settings carry it: None at the first, the baseline of every job made before
    reader versions."""
    return version if version > 1 else None


def target_model_options(name: str, options: dict) -> dict:
    """The model option data set `name`'s targets (`datasets.<name>` settings `options`) ask of the models trained on
    it: `{"targets": "every"}` for a sequence task, none for one class per sample (so the init jobs of other data
    sets keep their settings); `fedscape.models.registry.build_model` reads it."""
    targets = resolved_targets(name, options)
    return {} if targets == TARGETS[0] else {"targets": targets}


def dataset_option_problems(name: str, options: dict) -> list[str]:
    """Settings of `datasets.<name>` that its kind of data cannot honour (each naming the key)."""
    if name not in DATASETS:
        return []
    info, problems = DATASETS[name], []
    augment = options.get("augment", "none")
    if augment in STORED_IMAGE_AUGMENTATIONS and info.inputs == "image" and augment not in info.augmentations:
        problems.append(f"datasets.{name}.augment: {augment} draws crops from training images stored larger than "
                        f"the images trained on, which only "
                        f"{', '.join(n for n, i in DATASETS.items() if i.train_stored_size)} keeps; use "
                        f"{' or '.join(info.augmentations)}")
    elif augment in AUGMENTATIONS and augment not in info.augmentations:
        problems.append(f"datasets.{name}.augment: {augment} augments images, but {name} gives "
                        f"{info.input_description}; use {' or '.join(info.augmentations)}")
    source = options.get("source", DATASET_BASELINES["source"])
    if source == "raw" and name not in RAW_SOURCE_DATASETS:
        problems.append(f"datasets.{name}.source: raw builds samples from a dataset's raw texts, which only "
                        f"{', '.join(RAW_SOURCE_DATASETS)} has; use source: preprocessed")
    seq_len = options.get("seq_len")
    if seq_len is not None and source != "raw":
        problems.append(f"datasets.{name}.seq_len: {seq_len} characters per sequence, but only shakespeare from its "
                        f"raw texts (source: raw) cuts sequences of a chosen length (LEAF's preprocessed files fix "
                        f"{SHAKESPEARE_SEQ_LEN}); set source: raw or leave seq_len null")
    eval_stride = options.get("eval_stride")
    if eval_stride is not None and source != SOURCES[1]:
        problems.append(f"datasets.{name}.eval_stride: {eval_stride} evaluates the windows of a text cut from its raw "
                        f"texts at that stride, but only {', '.join(RAW_SOURCE_DATASETS)} from its raw texts (source: "
                        f"raw) has overlapping windows; set source: raw or leave eval_stride null")
    targets = options.get("targets")
    if targets == TARGETS[1] and info.inputs != "tokens":
        problems.append(f"datasets.{name}.targets: {targets} predicts the next token at every position of a text, "
                        f"but {name} gives {info.input_description}; leave targets null")
    elif targets == TARGETS[0] and info.sequence_labels:
        problems.append(f"datasets.{name}.targets: {targets} predicts one token after each sequence, but {name}'s "
                        f"files give the next token at every position (no token after the sequence); leave targets "
                        f"null or set every")
    for key in CHANNEL_STATISTICS:
        if options.get(key) is not None and name not in RGB_DATASETS:
            problems.append(f"datasets.{name}.{key}: per-channel statistics replace an RGB dataset's published ones "
                            f"({', '.join(RGB_DATASETS)}); {name} gives {info.input_description}; leave {key} null")
    if options.get("proxy_split", DATASET_BASELINES["proxy_split"]) == PROXY_SPLITS[1]:
        if not info.writers:
            problems.append(f"datasets.{name}.proxy_split: writers holds out whole writers, but the samples of "
                            f"{name} name no writer (those of "
                            f"{', '.join(n for n, i in DATASETS.items() if i.writers)} do); use proxy_split: samples")
        elif options.get("proxy_fraction") == 0:
            problems.append(f"datasets.{name}.proxy_split: writers chooses how the proxy split holds data out, but "
                            f"proxy_fraction is 0 (no proxy split); set proxy_fraction above 0 or proxy_split: "
                            f"samples")
    max_clients = options.get("max_clients")
    if max_clients is not None and name not in MANY_CLIENT_DATASETS:
        problems.append(f"datasets.{name}.max_clients: {max_clients} reads the first clients of a data set's files, "
                        f"which only {', '.join(MANY_CLIENT_DATASETS)} need; leave max_clients null")
    if options.get("download") and name in NO_DOWNLOAD:
        problems.append(f"datasets.{name}.download: fedscape cannot download {name} ({NO_DOWNLOAD[name]}); "
                        f"set download: false and data_dir to the folder holding {DATA_DIR_HOLDS[name]}")
    return problems


def data_layout_problems(name: str, data_dir: str, options: dict | None = None) -> list[str]:
    """What the existing folder `data_dir` lacks of dataset `name`'s layout as its `datasets.<name>` settings
    `options` read it (Shakespeare's `source`; nothing for a CIFAR that `download` fetches), each naming the path
    (empty for the datasets without such a check: their readers name what they miss)."""
    check = _LAYOUT_PROBLEMS.get(name)
    return check(data_dir, options or {}) if check else []


def held_out_count(n: int, fraction: float) -> int:
    """The rows a split of `fraction` holds out of `n` (`fedscape.data.sources`' test and proxy splits): round(fraction
    * n), known from the counts alone, so that planning sizes a split as the reader makes it."""
    return round(fraction * n)
