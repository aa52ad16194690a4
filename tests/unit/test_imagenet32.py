"""Down-sampled ImageNet read from disk by rows: the published .npz layout, the cache of compressed files, memory."""

from __future__ import annotations

import fcntl
import os
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.imagenet import write_imagenet32

from fedscape.data import imagenet32
from fedscape.data.imagenet32 import CACHE_DIR, CACHE_ENV, ImageNet32, user_cache

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread: the batches convert on one thread


def _copy_name(npz: Path) -> str:
    """The name of the unpacked copy of `npz`'s compressed `data`: its CRC-32 and size, as the zip file says."""
    with zipfile.ZipFile(npz) as zf:
        info = zf.getinfo("data.npy")
    return f"{npz.stem}.{info.CRC:08x}-{info.file_size}.data.npy"


@pytest.mark.parametrize("compressed", [False, True])
def test_rows_are_read_in_the_asked_order_across_files(tmp_path: Path, compressed: bool) -> None:
    # Prepare
    images, labels = write_imagenet32(tmp_path, compressed=compressed)
    index = np.array([20, 0, 7, 6, 12, 7, 3])  # across the three files, unsorted, one repeated

    # Execute
    stream = ImageNet32(tmp_path)
    got = stream.read(index)

    # Assert
    assert len(stream) == 21 and got.dtype == np.uint8 and got.shape == (7, 3, 32, 32)
    assert np.array_equal(got, images[index])
    assert np.array_equal(stream.labels, labels - 1)  # classes 1..1000 become 0..999
    assert (tmp_path / CACHE_DIR).exists() == compressed


def test_uncompressed_files_are_mapped_in_place(tmp_path: Path) -> None:
    # Prepare
    write_imagenet32(tmp_path, sizes=(4, 4))

    # Execute
    stream = ImageNet32(tmp_path)

    # Assert: the segments point into the .npz files themselves, past their zip and .npy headers
    assert [s.path.name for s in stream.segments] == ["train_data_batch_1.npz", "train_data_batch_2.npz"]
    assert all(s.offset > 0 and s.rows == 4 for s in stream.segments)


def test_compressed_files_are_unpacked_once(tmp_path: Path) -> None:
    # Prepare
    images, _ = write_imagenet32(tmp_path, sizes=(6, 3), compressed=True)
    ImageNet32(tmp_path)
    cached = sorted((tmp_path / CACHE_DIR).glob("*.npy"))
    stamps = [p.stat().st_mtime_ns for p in cached]

    # Execute
    again = ImageNet32(tmp_path)

    # Assert: the same cache files, not rewritten, hold the images
    assert [p.name for p in cached] == [_copy_name(tmp_path / f"train_data_batch_{k}.npz") for k in (1, 2)]
    assert [p.stat().st_mtime_ns for p in cached] == stamps
    assert np.array_equal(np.load(cached[0]), images[:6].reshape(6, 3072))
    assert np.array_equal(again.read(np.arange(9)), images)
    assert not list((tmp_path / CACHE_DIR).glob("*.tmp"))


@pytest.mark.parametrize("earlier", ["another version", "a copy named as before copies carried their CRC"])
def test_a_file_replaced_under_its_name_is_unpacked_again_and_its_old_copy_removed(tmp_path: Path, earlier) -> None:
    # Prepare: a copy of other images with the same count lies in the cache
    old, _ = write_imagenet32(tmp_path, sizes=(6,), compressed=True, seed=0)
    ImageNet32(tmp_path)
    if earlier != "another version":
        (stale,) = (tmp_path / CACHE_DIR).iterdir()
        stale.rename(tmp_path / CACHE_DIR / "train_data_batch_1.data.npy")
    new, _ = write_imagenet32(tmp_path, sizes=(6,), compressed=True, seed=1)

    # Execute
    got = ImageNet32(tmp_path).read(np.arange(6))

    # Assert: the new images, one copy (the new file's) left
    assert not np.array_equal(old, new) and np.array_equal(got, new)
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == [_copy_name(tmp_path / "train_data_batch_1.npz")]


def test_a_data_folder_that_cannot_be_written_unpacks_to_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    # Prepare: the cache beside the data cannot be made (a file in its place: root ignores read-only modes)
    images, _ = write_imagenet32(tmp_path / "data", sizes=(4, 3), compressed=True)
    (tmp_path / "data" / CACHE_DIR).write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))

    # Execute
    got = ImageNet32(tmp_path / "data").read(np.arange(7))

    # Assert: the images, unpacked below the user's cache in a folder of this data folder's own
    assert np.array_equal(got, images)
    assert user_cache(tmp_path / "data").parent == tmp_path / "mine" / "imagenet32"
    assert sorted(p.name for p in user_cache(tmp_path / "data").iterdir()) == [
        _copy_name(tmp_path / "data" / f"train_data_batch_{k}.npz") for k in (1, 2)]
    assert user_cache(tmp_path / "data") != user_cache(tmp_path)


def test_a_copy_beside_the_data_is_read_before_the_user_cache(tmp_path: Path, monkeypatch) -> None:
    write_imagenet32(tmp_path / "data", sizes=(4,), compressed=True)
    ImageNet32(tmp_path / "data")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))

    (segment,) = ImageNet32(tmp_path / "data").segments

    assert segment.path.parent == tmp_path / "data" / CACHE_DIR and not (tmp_path / "mine").exists()


def test_the_user_cache_follows_xdg_without_its_own_variable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    assert user_cache(tmp_path).parent == tmp_path / "xdg" / "fedscape" / "imagenet32"


def test_no_cache_folder_that_can_be_written_names_each_and_the_variable(tmp_path: Path, monkeypatch) -> None:
    write_imagenet32(tmp_path / "data", sizes=(4,), compressed=True)
    (tmp_path / "data" / CACHE_DIR).write_text("not a folder")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "below"))

    with pytest.raises(OSError, match=rf"no cache folder could be written: .*{CACHE_DIR}.*; .*file/below.*"
                                      rf"Set {CACHE_ENV} to a writable folder"):
        ImageNet32(tmp_path / "data")


def test_max_samples_keeps_a_seeded_subset_in_file_order(tmp_path: Path) -> None:
    # Prepare
    images, labels = write_imagenet32(tmp_path)

    # Execute
    a = ImageNet32(tmp_path, max_samples=8, seed=4)
    b = ImageNet32(tmp_path, max_samples=8, seed=4)
    c = ImageNet32(tmp_path, max_samples=8, seed=5)

    # Assert
    expected = np.sort(np.random.default_rng(4).permutation(21)[:8])
    assert np.array_equal(a.rows, expected) and np.array_equal(a.rows, b.rows)
    assert not np.array_equal(a.rows, c.rows)
    assert len(a) == 8 and np.array_equal(a.labels, labels[expected] - 1)
    assert np.array_equal(a.read(np.arange(8)), images[expected])


def test_batches_are_scaled_and_normalised_per_channel(tmp_path: Path) -> None:
    # Prepare
    images, _ = write_imagenet32(tmp_path, sizes=(5,))
    mean = torch.tensor([0.1, 0.5, 0.9]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.25, 2.0]).view(1, 3, 1, 1)

    # Execute
    x = ImageNet32(tmp_path).batch(torch.tensor([4, 1]), mean, std)

    # Assert
    expected = (torch.from_numpy(images[[4, 1]]).double() / 255 - mean.double()) / std.double()
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    assert torch.allclose(x.double(), expected, atol=1e-6)


def test_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    # Prepare: 12,000 images (37 MB); the loader it replaces held them all as float32 (147 MB)
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(tmp_path / f"train_data_batch_{i + 1}.npz", data=rng.integers(0, 256, (4000, 3072), dtype=np.uint8),
                 labels=rng.integers(1, 1001, 4000))
    size = sum(p.stat().st_size for p in tmp_path.glob("*.npz"))
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)

    # Execute: open it and read every image once, 128 at a time in a random order
    tracemalloc.start()
    stream = ImageNet32(tmp_path)
    checksum = 0.0
    for b in torch.randperm(len(stream), generator=torch.Generator().manual_seed(0)).split(128):
        checksum += float(stream.batch(b, mean, std).sum())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    # Assert: the labels and a few batches, not the file (numpy's buffers are traced; mapped pages are not)
    assert size > 36e6
    assert peak < 2e6, f"peak {peak / 1e6:.1f} MB"
    assert checksum == pytest.approx(sum(float(np.load(p)["data"].sum(dtype=np.float64)) for p in
                                         sorted(tmp_path.glob("*.npz"))) / 255, rel=1e-6)


@pytest.mark.parametrize(("arrays", "match"), [
    ({"data": np.zeros((3, 3072), np.uint8)}, r"expected arrays `data` and `labels`, found \['data'\]"),
    ({"data": np.zeros((3, 3072), np.float32), "labels": np.ones(3)}, r"expected `data` as uint8 \[N, 3072\]"),
    ({"data": np.zeros((3, 100), np.uint8), "labels": np.ones(3)}, r"expected `data` as uint8 \[N, 3072\]"),
    ({"data": np.zeros((3, 3072), np.uint8), "labels": np.ones(2)}, "3 images but 2 labels"),
])
def test_malformed_files_are_named(tmp_path: Path, arrays: dict, match: str) -> None:
    # Prepare
    np.savez(tmp_path / "train_data_batch_1.npz", **arrays)

    # Execute / Assert
    with pytest.raises(ValueError, match=match) as excinfo:
        ImageNet32(tmp_path)
    assert "train_data_batch_1.npz" in str(excinfo.value)


def test_an_empty_folder_names_the_expected_files(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(FileNotFoundError, match=r"no train_data_batch_\*\.npz in .*train_data_batch_1\.npz"):
        ImageNet32(tmp_path)


def test_only_the_training_batches_are_read_not_the_validation_file_beside_them(tmp_path: Path) -> None:
    # Prepare: the published training batches and, beside them, the published validation file
    images, labels = write_imagenet32(tmp_path, sizes=(4, 3))
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "val_data.npz", data=rng.integers(0, 256, (6, 3072), dtype=np.uint8),
             labels=rng.integers(1, 1001, 6).tolist())

    # Execute
    stream = ImageNet32(tmp_path)

    # Assert: the training images alone
    assert [s.path.name for s in stream.segments] == ["train_data_batch_1.npz", "train_data_batch_2.npz"]
    assert len(stream) == 7 and np.array_equal(stream.labels, labels - 1)
    assert np.array_equal(stream.read(np.arange(7)), images)


def test_a_folder_without_training_batches_is_refused_naming_what_it_holds(tmp_path: Path) -> None:
    # Prepare: the validation file alone
    np.savez(tmp_path / "val_data.npz", data=np.zeros((2, 3072), np.uint8), labels=[1, 2])

    # Execute / Assert
    with pytest.raises(FileNotFoundError, match=r"no train_data_batch_\*\.npz in .*; the \.npz files there "
                                                r"\(val_data\.npz\) are no training batches"):
        ImageNet32(tmp_path)


@pytest.mark.parametrize("labels", [[0, 1, 2], [5, 1001, 7], [-1, 3, 4]])
def test_labels_outside_1_to_1000_are_refused_naming_the_file(tmp_path: Path, labels: list[int]) -> None:
    # Prepare: a valid first batch, and a second whose labels are not the published 1..1000 (e.g. re-saved from 0)
    write_imagenet32(tmp_path, sizes=(3,))
    np.savez(tmp_path / "train_data_batch_2.npz", data=np.zeros((3, 3072), np.uint8), labels=labels)

    # Execute / Assert
    with pytest.raises(ValueError, match=rf"train_data_batch_2\.npz: labels {min(labels)}\.\.{max(labels)}, but "
                                         r"down-sampled ImageNet's files number its classes 1\.\.1000"):
        ImageNet32(tmp_path)


def test_labels_are_shifted_by_one_and_the_classes_are_imagenets_whatever_the_files_hold(tmp_path: Path) -> None:
    # Prepare: a subset of the classes, without class 1 (0 once shifted) or class 1000
    np.savez(tmp_path / "train_data_batch_1.npz", data=np.zeros((4, 3072), np.uint8), labels=[2, 3, 5, 40])

    # Execute
    stream = ImageNet32(tmp_path, max_samples=3, seed=1)

    # Assert: 1..1000 are 0..999 always, and the classifier pretrained on them has ImageNet's 1000 classes
    assert set(stream.labels.tolist()) <= {1, 2, 4, 39} and len(stream) == 3
    assert stream.num_classes == 1000


def test_a_truncated_file_is_named_when_read(tmp_path: Path) -> None:
    # Prepare: the unpacked copy of a compressed file loses its last image
    write_imagenet32(tmp_path, sizes=(4,), compressed=True)
    stream = ImageNet32(tmp_path)
    cached = tmp_path / CACHE_DIR / _copy_name(tmp_path / "train_data_batch_1.npz")
    cached.write_bytes(cached.read_bytes()[:-100])

    # Execute / Assert: the images before it still read
    assert stream.read(np.array([0, 2])).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"train_data_batch_1\.[0-9a-f]{8}-\d+\.data\.npy: ends before image 3 of 4"):
        stream.read(np.array([1, 3]))


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.999])
def test_a_truncated_batch_is_named_when_opened(tmp_path: Path, compressed: bool, keep: float) -> None:
    # Prepare: the second of two batches cut short (an interrupted copy): empty, half, or all but its last bytes
    write_imagenet32(tmp_path, sizes=(3, 4), compressed=compressed)
    path = tmp_path / "train_data_batch_2.npz"
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * keep)])

    # Execute / Assert: the file is named, and what zipfile said (alone: "BadZipFile: File is not a zip file")
    with pytest.raises(ValueError, match=r"train_data_batch_2\.npz: cannot read this \.npz: the file is damaged, "
                                         r"e\.g\. truncated .*\(BadZipFile: File is not a zip file\)") as excinfo:
        ImageNet32(tmp_path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_batch_with_damaged_arrays_is_named(tmp_path: Path, compressed: bool) -> None:
    # Prepare: a batch whose zip directory is intact but whose `data` member's bytes are overwritten
    write_imagenet32(tmp_path, sizes=(4,), compressed=compressed)
    path = tmp_path / "train_data_batch_1.npz"
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("data.npy")
    content = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    content[start : start + 64] = bytes(64)
    path.write_bytes(bytes(content))

    # Execute / Assert
    with pytest.raises(ValueError, match=r"train_data_batch_1\.npz: cannot read (the header of )?`data`: the file is "
                                         "damaged") as excinfo:
        ImageNet32(tmp_path)
    assert str(path) in str(excinfo.value)


@pytest.mark.parametrize("keep", ["all but the last image's tail", "the header alone"])
def test_a_copy_cut_short_in_the_cache_is_unpacked_again_not_read(tmp_path: Path, keep: str, caplog) -> None:
    # Prepare: the copy of a compressed file cut short, as a node's crash leaves one written before it reached the disk
    images, _ = write_imagenet32(tmp_path, sizes=(4,), compressed=True)
    ImageNet32(tmp_path)
    cached = tmp_path / CACHE_DIR / _copy_name(tmp_path / "train_data_batch_1.npz")
    whole = cached.read_bytes()
    cached.write_bytes(whole[:-100] if keep != "the header alone" else whole[: len(whole) - images[0].size * 4])

    # Execute
    with caplog.at_level("WARNING", logger="fedscape.data.imagenet32"):
        got = ImageNet32(tmp_path).read(np.arange(4))

    # Assert: every image read, from a whole copy made again; the warning names it
    assert np.array_equal(got, images)
    assert cached.read_bytes() == whole
    assert f"{cached}: {len(whole) - (100 if keep != 'the header alone' else images[0].size * 4)} bytes" in caplog.text


def _temporary_copy(cache: Path, name: str, letters: str) -> Path:
    """A temporary copy as an unpack writes it (`.<copy's name>.<mkstemp's letters>.tmp`), partly written."""
    cache.mkdir(exist_ok=True)
    tmp = cache / f".{name}.{letters}.tmp"
    tmp.write_bytes(b"\x93NUMPY" + bytes(1000))
    return tmp


@pytest.mark.parametrize("copy_there", [False, True])
def test_temporary_copies_of_killed_unpacks_are_removed_and_running_ones_kept(tmp_path: Path, copy_there: bool) -> None:
    # Prepare: beside the cache's copy (or where there is none yet), the temporary files of two killed unpacks (of this
    # version and of an earlier one), one of a running unpack (which holds its lock), and another file's
    images, _ = write_imagenet32(tmp_path, sizes=(4, 3), compressed=True)
    if copy_there:
        ImageNet32(tmp_path)
    cache = tmp_path / CACHE_DIR
    name = _copy_name(tmp_path / "train_data_batch_1.npz")
    earlier = "train_data_batch_1.0badc0de-99.data.npy"
    killed = [_temporary_copy(cache, name, "k1ll3d_a"), _temporary_copy(cache, earlier, "k1ll3d_b")]
    running = _temporary_copy(cache, name, "runn1ng_")
    other = _temporary_copy(cache, "train_data_batch_10.data.npy", "0th3r_fl")
    with running.open("rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)

        # Execute
        got = ImageNet32(tmp_path).read(np.arange(7))

        # Assert: the killed unpacks' files are gone; the running one's, and another file's (whose opening cleans
        # them), are left
        assert np.array_equal(got, images)
        assert [p.exists() for p in killed] == [False, False]
        assert running.exists() and other.exists()


def test_an_unpack_holds_the_lock_of_its_temporary_copy_while_it_writes(tmp_path: Path, monkeypatch) -> None:
    # Prepare: another job's clean-up runs while this one writes its copy
    images, _ = write_imagenet32(tmp_path, sizes=(4,), compressed=True)
    seen = []
    read = zipfile.ZipExtFile.read

    def read_and_clean(self, *args):
        if not seen and list((tmp_path / CACHE_DIR).glob("*.tmp")):  # writing the copy (the labels are read before)
            seen.append(sorted(p.name for p in (tmp_path / CACHE_DIR).iterdir()))
            imagenet32._remove_abandoned(tmp_path / "train_data_batch_1.npz", tmp_path / CACHE_DIR)
            seen.append(sorted(p.name for p in (tmp_path / CACHE_DIR).iterdir()))
        return read(self, *args)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", read_and_clean)

    # Execute
    got = ImageNet32(tmp_path).read(np.arange(4))

    # Assert: the clean-up saw the unpack's temporary copy and left it; the copy was made whole
    assert np.array_equal(got, images)
    assert len(seen[0]) == 1 and seen[0][0].endswith(".tmp") and seen[1] == seen[0]
    assert [p.name for p in (tmp_path / CACHE_DIR).iterdir()] == [_copy_name(tmp_path / "train_data_batch_1.npz")]


def test_a_copy_reaches_the_disk_before_its_name(tmp_path: Path, monkeypatch) -> None:
    # Prepare: record the syncs and renames of the unpack
    write_imagenet32(tmp_path, sizes=(4,), compressed=True)
    calls = []
    sync, replace = imagenet32.sync_fd, os.replace
    monkeypatch.setattr(imagenet32, "sync_fd", lambda fd: (calls.append(("sync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                           sync(fd)))
    monkeypatch.setattr(imagenet32.os, "replace", lambda a, b: (calls.append(("replace", str(a))), replace(a, b)))

    # Execute
    ImageNet32(tmp_path)

    # Assert: the temporary copy was synced, then renamed into place
    assert [kind for kind, _ in calls] == ["sync", "replace"] and calls[0][1] == calls[1][1]
