"""ImageNet-200 (FedAlign, Mendieta et al. 2022): the code's classes and label order, its draw of the training
images, its evaluation transform, images decoded batch by batch, the folder checks, partitions from the labels
alone, and the ImageNet-stem ResNet18 the code trains on it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers.configs import DEFAULT, SCHEMA
from helpers.imagenet import OTHER_WNIDS, flatten_val, write_imagenet

from fedscape.core.config import ConfigError
from fedscape.core.runs import build_runs
from fedscape.data import imagenet200
from fedscape.data.datasets import StoredImages, from_source
from fedscape.data.imagenet200 import CLASSES, WNIDS, ImageFolderImages, decode, list_split, train_subset
from fedscape.data.sources import Source, load_source
from fedscape.data.specs import dataset_info, dataset_option_problems
from fedscape.models.registry import build_model
from fedscape.models.specs import model_option_problems
from fedscape.plan.workflow import check_config, check_data

TOL64 = 1e-10


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    return write_imagenet(tmp_path_factory.mktemp("imagenet"))


def test_the_200_classes_are_the_draw_of_the_codes_seed():
    # Prepare: gen_imagenet_subset.py draws np.random.choice(sorted 1000 wnids, 200, replace=False) after seed 1993,
    # i.e. the first 200 of permutation(1000): the drawn wnids must sort as their positions among the 1000 do
    positions = np.random.RandomState(imagenet200.SUBSET_SEED).permutation(imagenet200.IMAGENET_CLASSES)[:200]

    # Execute
    by_position = dict(zip(positions.tolist(), WNIDS, strict=True))

    # Assert: 200 distinct wnids, ordered as their positions; where the position is ImageNet-1k's known class index,
    # the wnid is that class (5 electric ray, 7 cock, 11 goldfinch, 999 toilet tissue)
    assert len(set(WNIDS)) == 200 and CLASSES == tuple(sorted(WNIDS))
    assert [by_position[p] for p in sorted(by_position)] == sorted(WNIDS)
    assert {p: by_position[p] for p in (5, 7, 11, 999)} == {5: "n01496331", 7: "n01514668", 11: "n01531178",
                                                             999: "n15075141"}
    assert dataset_info("imagenet200").shape == (3, 224, 200)


@pytest.mark.parametrize("split", ["train", "val"])
def test_labels_follow_imagefolders_order_of_the_200_class_folders(tmp_path, split):
    from torchvision.datasets import ImageFolder  # the code reads the subset folder with it

    # Prepare: a folder of exactly the 200 classes (what the code's script writes), and one with 2 classes more
    subset = write_imagenet(tmp_path / "subset", others=False)
    full = write_imagenet(tmp_path / "full")

    # Execute
    ours = list_split(subset, split)
    theirs = ImageFolder(str(subset / split)).samples
    with_others = list_split(full, split)

    # Assert: the same files with the same labels in the same order as ImageFolder; the other classes are skipped
    assert list(zip(ours.paths, ours.labels.tolist(), strict=True)) == theirs
    assert [p.replace(str(full), str(subset)) for p in with_others.paths] == list(ours.paths)
    assert not any(w in p for p in with_others.paths for w in OTHER_WNIDS)
    assert ours.labels.dtype == np.int64 and sorted(set(ours.labels.tolist())) == list(range(200))


def test_training_images_are_the_scripts_draw_over_the_sorted_files():
    # Prepare: class files as sorted listings; the script's own calls on the global random state
    files = {w: [f"{w}_{i:04d}.JPEG" for i in range(7 + k % 5)] for k, w in enumerate(WNIDS)}
    state = np.random.get_state()
    try:
        np.random.seed(imagenet200.SUBSET_SEED)
        np.random.choice([f"c{i:04d}" for i in range(1000)], 200, replace=False)
        expected = {w: list(np.random.choice(files[w], 6, replace=False)) for w in WNIDS}
    finally:
        np.random.set_state(state)

    # Execute
    picked = train_subset(files, per_class=6)
    whole = train_subset({w: names[:6] for w, names in files.items()}, per_class=6)

    # Assert: the same files in every class; a class of exactly per_class files (the code's folder) keeps them all
    assert picked == expected
    assert {w: sorted(v) for w, v in whole.items()} == {w: names[:6] for w, names in files.items()}


def test_list_split_keeps_per_class_training_images(imagenet):
    # Execute
    kept = list_split(imagenet, "train", per_class=3)
    everything = list_split(imagenet, "train")

    # Assert: the rich classes (3, 4, 5 images) keep 3 each, the others their one image
    counts = np.bincount(kept.labels, minlength=200)
    rich = [CLASSES.index(w) for w in WNIDS[:3]]
    assert counts[rich].tolist() == [3, 3, 3] and counts.sum() == 197 + 9
    assert set(kept.paths) <= set(everything.paths) and len(everything.paths) == 197 + 12


def test_decode_equals_the_codes_evaluation_transform(imagenet):
    from torchvision import transforms
    from torchvision.datasets.folder import default_loader

    # Prepare: the code's valid_transform without its Normalize (data_loader.py _data_transforms_imagenet), on
    # landscape, portrait, square, small and grey-scale images
    transform = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])
    paths = list_split(imagenet, "train").paths[:12]

    for path in paths:
        # Execute
        ours = decode(path)
        theirs = transform(default_loader(path))

        # Assert: the same pixels, exactly
        assert ours.dtype == np.uint8 and ours.shape == (3, 224, 224)
        torch.testing.assert_close(torch.from_numpy(ours).float().div(255), theirs, rtol=0, atol=0)


@pytest.mark.parametrize("index", [[4, 0, 4, 9], np.array([7, 2]), slice(1, 9, 3), []])
def test_a_batch_of_rows_equals_the_same_rows_decoded_directly(imagenet, index):
    # Prepare
    paths = list_split(imagenet, "train").paths[:10]
    images = ImageFolderImages(paths, size=48, resize=56)
    rows = np.arange(10)[index]

    # Execute
    batch = images[index]

    # Assert: those rows, in that order (repeats included), nothing cached between calls
    assert batch.shape == (len(rows), 3, 48, 48) and batch.dtype == np.uint8
    for j, row in enumerate(rows):
        np.testing.assert_array_equal(batch[j], decode(paths[row], 48, 56))
    np.testing.assert_array_equal(images[3], decode(paths[3], 48, 56))
    assert images.shape == (10, 3, 48, 48) and len(images) == 10
    with pytest.raises(IndexError, match="out of range for 10 images"):
        images[[10]]


def test_source_lists_without_decoding_and_the_dataset_equals_rows_decoded_directly(imagenet, monkeypatch):
    # Prepare: decoding forbidden while the source is read (a partition reads its labels alone)
    real_decode = imagenet200.decode

    def no_decoding(*args, **kwargs):
        raise AssertionError("the labels must not decode an image")

    monkeypatch.setattr(imagenet200, "decode", no_decoding)

    # Execute
    src = load_source("imagenet200", data_dir=str(imagenet), proxy_fraction=0.25, seed=3)
    labels = src.labels

    # Assert: the code's 200 classes; train and proxy split the training images, the validation ones are the test set
    assert src.num_classes == 200 and src.class_names == CLASSES
    assert len(src.train_index) + len(src.proxy_index) == 197 + 12 == len(src.train_labels)
    assert not set(src.train_index) & set(src.proxy_index) and len(labels) == len(src.train_index)
    assert src.test_labels.tolist() == list(range(200))

    # Prepare: the same source with small images (the float tensors of 224x224 images are 600 kB each), decoded
    # in chunks of 4
    monkeypatch.setattr(imagenet200, "decode", real_decode)
    small = Source(src.name, ImageFolderImages(src.train_images.paths, 40, 48), src.train_labels,
                   ImageFolderImages(src.test_images.paths[:7], 40, 48), src.test_labels[:7], src.train_index[:11],
                   np.arange(7), src.proxy_index[:3], 200, CLASSES)
    monkeypatch.setattr("fedscape.data.datasets._DECODE_CHUNK", 4)

    # Execute
    ds = from_source(small)

    # Assert: every row is held as its decoded pixels (uint8) and read as the image scaled to [0, 1] and normalised
    # with ImageNet's statistics (the code's)
    mean = torch.tensor(imagenet200.MEAN).view(3, 1, 1)
    std = torch.tensor(imagenet200.STD).view(3, 1, 1)
    for x, index, paths in ((ds.x_train, small.train_index, small.train_images.paths),
                            (ds.x_proxy, small.proxy_index, small.train_images.paths),
                            (ds.x_test, np.arange(7), small.test_images.paths)):
        pixels = torch.stack([torch.from_numpy(decode(paths[i], 40, 48)) for i in index])
        assert isinstance(x, StoredImages) and x.pixels.dtype == torch.uint8
        torch.testing.assert_close(x.pixels, pixels, rtol=0, atol=0)
        torch.testing.assert_close(x[:], (pixels.float() / 255 - mean) / std, rtol=0, atol=0)
    assert ds.y_train.tolist() == small.train_labels[small.train_index].tolist()


def test_a_partition_reads_the_labels_alone(imagenet, tmp_path, monkeypatch):
    from fedscape.data.partition import load_partition
    from fedscape.stages.partition import partition_job

    # Prepare
    def no_decoding(*args, **kwargs):
        raise AssertionError("a partition must not decode an image")

    monkeypatch.setattr(imagenet200, "decode", no_decoding)
    settings = {"dataset": "imagenet200", "dataset_options": {"data_dir": str(imagenet), "proxy_fraction": 0.0},
                "alpha": "0.5", "num_clients": 4, "seed": 0, "min_size": 2, "max_tries": 100}

    # Execute
    partition_job(settings, tmp_path / "p.npz", tmp_path / "p.csv")

    # Assert: every training image goes to exactly one client
    labels = list_split(imagenet, "train", imagenet200.TRAIN_PER_CLASS).labels
    part = load_partition(tmp_path / "p.npz", labels)
    assert sorted(np.concatenate(part.client_indices).tolist()) == list(range(len(labels)))


def test_missing_folders_are_named(tmp_path):
    # Prepare: no folders at all; then train without one class; then ImageNet's flat val/ (not sorted into classes)
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = write_imagenet(tmp_path / "partial")
    (partial / "train" / CLASSES[5] / f"{CLASSES[5]}_1.JPEG").unlink()
    (partial / "train" / CLASSES[5]).rmdir()
    flat = write_imagenet(tmp_path / "flat")
    for folder in (flat / "val").iterdir():
        for image in folder.iterdir():
            image.rename(flat / "val" / image.name)
        folder.rmdir()

    # Execute
    problems = {name: imagenet200.layout_problems(root) for name, root in
                (("empty", empty), ("partial", partial), ("flat", flat))}

    # Assert: each names the path it misses
    assert problems["empty"] == [f"{empty / 'train'} is not a directory: expected ImageNet's train/<wnid>/ class "
                                 "folders there",
                                 f"{empty / 'val'} is not a directory: expected ImageNet's val/<wnid>/ class folders "
                                 "there"]
    assert problems["partial"] == [f"1 of ImageNet-200's 200 class folders missing in {partial / 'train'}: "
                                   f"{partial / 'train' / CLASSES[5]}"]
    assert len(problems["flat"]) == 1 and "200 of ImageNet-200's 200 class folders missing" in problems["flat"][0]
    assert (f"val/ holds the images themselves, as ImageNet ships them: put its LOC_val_solution.csv (columns "
            f"ImageId,PredictionString) in {flat}, or sort the images into val/<wnid>/ class folders"
            ) in problems["flat"][0]
    with pytest.raises(FileNotFoundError, match=f"missing in {partial / 'train'}: {partial / 'train' / CLASSES[5]}"):
        load_source("imagenet200", data_dir=str(partial))
    with pytest.raises(FileNotFoundError, match="ImageNet-200 is read from a data_dir .* and none was given"):
        load_source("imagenet200")
    with pytest.raises(ValueError, match="datasets.imagenet200.download: fedscape cannot download imagenet200"):
        load_source("imagenet200", data_dir=str(empty), download=True)
    assert dataset_option_problems("imagenet200", {"download": True}) == [
        "datasets.imagenet200.download: fedscape cannot download imagenet200 (image-net.org distributes ImageNet-1k "
        "(ILSVRC2012) to registered users only); set download: false and data_dir to the folder holding "
        "ImageNet-1k's train/<wnid>/ image folders and val/ (sorted into <wnid>/ folders, or flat with "
        "LOC_val_solution.csv; fedscape.data.imagenet200)"]


@pytest.mark.parametrize("kaggle", [False, True])
def test_a_flat_val_folder_with_imagenets_solution_csv_is_the_sorted_one(tmp_path, kaggle):
    # Prepare: the same ImageNet sorted into val/<wnid>/ and flat as ImageNet ships it (3 validation images per
    # class, ImageNet-1k's other classes among them), the CSV in data_dir or, data_dir being the Kaggle archive's
    # ILSVRC/Data/CLS-LOC, at the archive's top
    sorted_root = write_imagenet(tmp_path / "sorted", val_per_class=3)
    top = tmp_path / "kaggle"
    flat_root = write_imagenet(top / "ILSVRC" / "Data" / "CLS-LOC" if kaggle else tmp_path / "flat", val_per_class=3)
    csv = flatten_val(flat_root, top if kaggle else None)

    # Execute
    problems = imagenet200.layout_problems(flat_root)
    ours, theirs = list_split(flat_root, "val"), list_split(sorted_root, "val")

    # Assert: no problem; the same labels, images and order (by class, then file name) as the sorted folders
    assert problems == [] and csv.exists() and not (flat_root / "val" / CLASSES[0]).exists()
    assert ours.labels.tolist() == theirs.labels.tolist() and len(ours.paths) == 600
    assert [p.split("/")[-1] for p in ours.paths] == [p.split("/")[-1] for p in theirs.paths]
    assert all(p.startswith(str(flat_root / "val") + "/ILSVRC2012_val_") for p in ours.paths)
    for a, b in zip(ours.paths[:7], theirs.paths[:7], strict=True):
        np.testing.assert_array_equal(decode(a), decode(b))


def test_a_flat_val_folder_names_what_its_csv_lacks(tmp_path):
    # Prepare: a listed image deleted; a CSV of other columns
    root = write_imagenet(tmp_path / "in")
    csv = flatten_val(root)
    gone = sorted((root / "val").iterdir())[0]
    gone.unlink()
    bad = write_imagenet(tmp_path / "bad")
    flatten_val(bad).write_text("id,label\nx,n01440764\n")

    # Execute / Assert: the file, the missing image, the expected columns
    with pytest.raises(FileNotFoundError, match=f"1 validation images of {csv} missing in {root / 'val'}: "
                                                f"{gone.stem}"):
        list_split(root, "val")
    with pytest.raises(ValueError, match="expected the columns ImageId,PredictionString"):
        list_split(bad, "val")


def _imagenet_config(data_dir: str) -> dict:
    config = {k: copy.deepcopy(v) for k, v in DEFAULT.items()
              if k in ("partition", "training", "seeds", "alphas", "num_clients", "participation")}
    config.update({"inits": {"random": {"kind": "random", "seed": 0}},
                   "datasets": {"imagenet200": {"data_dir": data_dir, "proxy_fraction": 0.0}},
                   "models": ["resnet18"], "model_options": {"resnet18": {"norm": "batch", "stem": "imagenet"}},
                   "algorithms": {"fedavg": {"name": "fedavg"}}})
    return check_config(config, SCHEMA)


def test_the_workflow_checks_the_folders_before_jobs_start_and_plans_without_them(tmp_path):
    # Prepare: a data_dir without its train/ folder
    partial = write_imagenet(tmp_path / "in", others=False)
    for folder in (partial / "train").iterdir():
        for image in folder.iterdir():
            image.unlink()
        folder.rmdir()
    (partial / "train").rmdir()

    # Execute: planning (what a dry run does) needs no data; the start of a run checks it
    config = _imagenet_config(str(partial))
    runs = build_runs(config)
    with pytest.raises(ConfigError) as err:
        check_data(config, runs, [("train", {"dataset": "imagenet200"})])
    complete = _imagenet_config(str(write_imagenet(tmp_path / "ok")))

    # Assert: the key and the missing path named; a complete folder passes
    assert {r.dataset for r in runs} == {"imagenet200"}
    assert str(err.value).splitlines()[1:] == [
        f"  - datasets.imagenet200.data_dir: {partial / 'train'} is not a directory: expected ImageNet's "
        "train/<wnid>/ class folders there"]
    check_data(complete, build_runs(complete), None)


def test_a_bad_stem_is_refused_with_a_suggestion():
    # Execute
    problems = model_option_problems("resnet18", {"norm": "batch", "stem": "imagnet"})

    # Assert
    assert problems == ["model_options.resnet18.stem: 'imagnet' is not a stem of resnet18. Did you mean "
                        "'imagenet'? Valid: cifar, imagenet"]
    assert model_option_problems("resnet18", {"stem": "imagenet"}) == []


def test_resnet18_with_the_imagenet_stem_is_the_codes_resnet18(float64_default):
    from torchvision.models import resnet18

    # Prepare: the FedAlign code's ImageNet-200 ResNet18 is torchvision's construction (models/resnet.py ImageNet:
    # 7x7 stride-2 conv, max-pool, BasicBlock [2, 2, 2, 2], 1x1-conv + BN shortcuts, fc 512 -> 200)
    ours = build_model("resnet18", 200, 3, 224, norm="batch", stem="imagenet")
    theirs = resnet18(num_classes=200)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    # Execute: their weights and batch-norm statistics into ours, parameter by parameter in order
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert p.shape == q.shape
            p.copy_(q)
        ours_bn = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        theirs_bn = [m for m in theirs.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for a, b in zip(ours_bn, theirs_bn, strict=True):
            a.running_mean.copy_(torch.rand(b.running_mean.shape) - 0.5)
            a.running_var.copy_(torch.rand(b.running_var.shape) + 0.5)
            b.running_mean.copy_(a.running_mean)
            b.running_var.copy_(a.running_var)
    ours.eval()
    theirs.eval()

    # Assert: 11,279,112 parameters each, the same function; the CIFAR stem has 7,680 fewer (3x3 vs 7x7)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == 11_279_112
    torch.testing.assert_close(ours(x), theirs(x), rtol=TOL64, atol=TOL64)
    cifar = build_model("resnet18", 200, 3, 224, norm="batch")
    assert count - sum(p.numel() for p in cifar.parameters()) == 64 * 3 * (49 - 9)


def test_imagenet_stem_keeps_every_forward_of_the_resnet(float64_default):
    # Prepare: group norm (no running statistics), 3 clients' parameters stacked
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, 32, stem="imagenet")
    g = torch.Generator().manual_seed(1)
    params = {n: torch.stack([p.detach() + 0.05 * (1 + j) * torch.randn(p.shape, generator=g) for j in range(3)])
              for n, p in model.named_parameters()}
    x = torch.randn(3, 4, 3, 32, 32, generator=g)

    # Execute
    stacked = model.forward_stacked(params, x)
    vmapped = torch.func.vmap(lambda p, xb: torch.func.functional_call(model, p, (xb,)))(params, x)
    full = model(x[0])

    # Assert: the stacked forward, the full-width forward and the last block's forward agree with the plain one
    torch.testing.assert_close(stacked, vmapped, rtol=TOL64, atol=TOL64)
    torch.testing.assert_close(model.forward_width(x[0], 1.0), full, rtol=TOL64, atol=TOL64)
    torch.testing.assert_close(model.forward_last_block(x[0])[2], full, rtol=TOL64, atol=TOL64)
    assert model.forward_width(x[0], 0.8).shape == full.shape


def test_down_sampled_imagenet_is_no_proxy_for_imagenet200(tmp_path):
    from fedscape.stages.init import proxy_data
    from fedscape.stages.init_settings import InitJob

    # Prepare: a pretrained init on ImageNet32 for ImageNet-200 (planning refuses it; the job refuses it too)
    settings = InitJob.from_settings({
        "dataset": "imagenet200", "model": "resnet18", "model_options": {"stem": "imagenet"}, "in_channels": 3,
        "image_size": 224, "num_classes": 200, "init": "pre", "kind": "pretrained", "seed": 0, "epochs": 1,
        "lr": 0.1, "batch_size": 4, "momentum": 0.0, "weight_decay": 0.0, "proxy_dataset": None,
        "proxy_data_dir": None, "proxy_dir": str(tmp_path), "max_samples": None, "dataset_options": {},
        "device": "cpu"})

    # Execute / Assert: RGB with normalisation statistics, but not 32x32
    with pytest.raises(ValueError, match="down-sampled ImageNet. needs a 32x32 RGB dataset, not imagenet200"):
        proxy_data(settings)
