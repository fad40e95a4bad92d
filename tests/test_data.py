"""The data layer: sources, splits, downloads, folders, IDX files and the batched pipeline."""

import gzip
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import sys
import tarfile
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED, make_archive, write_cifar_folder
from reslab.data import DataOptions, EvalLoader, Normalizer, TrainLoader, load_dataset
from reslab.data.arrays import ImageArrays, stratified_split
from reslab.data.augment import crop_flip, cutout
from reslab.data.cifar import locate
from reslab.data.download import download_file, safe_extract
from reslab.data.idx import read_idx
from reslab.errors import DataError


# ---- CIFAR --------------------------------------------------------------------------------
@pytest.mark.parametrize("str_keys", [False, True])
def test_cifar_archive_loads_with_bytes_or_str_keys(tmp_path, str_keys, monkeypatch):
    monkeypatch.setenv("RESLAB_SKIP_MD5", "1")  # a test-made archive, not the published one
    src = write_cifar_folder(tmp_path / "src", per_batch=20, str_keys=str_keys)
    root = tmp_path / "root"
    root.mkdir()
    make_archive(src, root / "cifar-10-python.tar.gz")
    train = load_dataset("cifar10", "trainval", DataOptions(root=str(root), download=False))
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    assert train.class_counts() == [10] * 10
    # Pixels are stored as R, G, B planes of 32x32: the first row of data is image 0's red plane.
    import pickle

    with open(src / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    data = raw[b"data" if not str_keys else "data"]
    assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(data[0, :1024]))
    test = load_dataset("cifar10", "test", DataOptions(root=str(root), download=False))
    assert len(test) == 20


def test_validation_split_is_deterministic_stratified_and_disjoint(tiny_cifar):
    opts = DataOptions(root=str(tiny_cifar), download=False)
    train, val = load_dataset("cifar10", "train", opts), load_dataset("cifar10", "val", opts)
    assert len(train) == 90 and len(val) == 10
    assert val.class_counts() == [1] * 10
    labels = torch.arange(100) % 10
    tr, va = stratified_split(labels, 0.1)
    assert set(tr.tolist()).isdisjoint(va.tolist()) and len(tr) + len(va) == 100
    # The held-out images are each class's last ones in file order.
    assert va.tolist() == list(range(90, 100))
    assert torch.equal(stratified_split(labels, 0.1)[1], va)


def test_missing_cifar_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match="put cifar-10-python.tar.gz .* in"):
        load_dataset("cifar10", "train", DataOptions(root=str(tmp_path), download=False))


def test_cifar_without_test_split_says_so(tmp_path):
    write_cifar_folder(tmp_path, with_test=False)
    with pytest.raises(DataError, match="no test split"):
        load_dataset("cifar10", "test", DataOptions(root=str(tmp_path)))


def test_truncated_pickle_and_wrong_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_SKIP_MD5", "1")  # test-made archives
    folder = write_cifar_folder(tmp_path / "a")
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3: truncated or corrupt"):
        load_dataset("cifar10", "train", DataOptions(root=str(tmp_path / "a")))
    root = tmp_path / "b"
    root.mkdir()
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("something-else/readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DataError, match="no cifar-10-batches-py/ folder inside"):
        load_dataset("cifar10", "train", DataOptions(root=str(root)))
    (root / "cifar-10-python.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(DataError, match="not a readable tar"):
        load_dataset("cifar10", "train", DataOptions(root=str(root)))


def test_hostile_tar_is_refused_and_writes_nothing(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        for name in ("ok/fine.txt", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="unsafe archive member"):
        safe_extract(archive, dest, "ok")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (dest / "ok").exists()
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info = tarfile.TarInfo("sneaky")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(DataError, match="unsafe"):
        safe_extract(link, dest, "sneaky")


def test_label_out_of_range_is_a_data_error():
    with pytest.raises(DataError, match="label index 12 is out of range for 10 classes"):
        ImageArrays(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 12, 1]), list("abcdefghij"), "x")


class _RunsCode:
    """Unpickling this would create ``path``: what a hostile dataset file could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("victim", ["data_batch_2", "batches.meta"])
def test_pickle_that_would_run_code_is_refused_and_named(tmp_path, victim):
    folder = write_cifar_folder(tmp_path / "root")
    marker = tmp_path / "marker"
    with open(folder / victim, "wb") as f:
        pickle.dump({b"data": _RunsCode(marker), b"label_names": [_RunsCode(marker)]}, f, protocol=2)
    with pytest.raises(DataError, match=f"{victim}: refused to open: the pickle asks to run io.open") as info:
        load_dataset("cifar10", "trainval", DataOptions(root=str(tmp_path / "root")))
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_hostile_pickle_inside_a_found_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_SKIP_MD5", "1")  # the hostile archive is "the user's own copy"
    src = write_cifar_folder(tmp_path / "src")
    marker = tmp_path / "marker"
    with open(src / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _RunsCode(marker)}, f, protocol=2)
    (tmp_path / "root").mkdir()
    make_archive(src, tmp_path / "root" / "cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="data_batch_1: refused to open"):
        load_dataset("cifar10", "trainval", DataOptions(root=str(tmp_path / "root")))
    assert not marker.exists()


def test_official_format_pickles_still_load_through_the_restricted_unpickler(tiny_cifar):
    data = load_dataset("cifar10", "trainval", DataOptions(root=str(tiny_cifar)))
    with open(tiny_cifar / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")  # the test's own file: plain pickle is fine here
    assert torch.equal(data.images[:20].flatten(1), torch.from_numpy(raw[b"data"]))
    assert data.classes[3] == "cat"


def test_found_archive_needs_the_published_md5_unless_skipped(tmp_path, monkeypatch):
    src = write_cifar_folder(tmp_path / "src")
    root = tmp_path / "root"
    root.mkdir()
    archive = make_archive(src, root / "cifar-10-python.tar.gz")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "trainval", DataOptions(root=str(root), download=False))
    message = str(info.value)
    assert str(archive) in message and "published" in message and "RESLAB_SKIP_MD5=1" in message
    assert "\n" not in message
    assert not (root / "cifar-10-batches-py").exists()
    monkeypatch.setenv("RESLAB_SKIP_MD5", "1")
    assert len(load_dataset("cifar10", "trainval", DataOptions(root=str(root), download=False))) == 100


def test_extraction_touches_nothing_but_the_datasets_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_SKIP_MD5", "1")
    src = write_cifar_folder(tmp_path / "src" / "a")
    (tmp_path / "src" / "mnist").mkdir()
    (tmp_path / "src" / "mnist" / "x").write_text("from the archive")
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "keep.txt").write_text("the user's")
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src, arcname=src.name)
        tar.add(tmp_path / "src" / "mnist", arcname="mnist")
    assert len(load_dataset("cifar10", "trainval", DataOptions(root=str(root)))) == 100
    assert (root / "mnist" / "keep.txt").read_text() == "the user's"
    assert not (root / "mnist" / "x").exists()
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", "cifar-10-python.tar.gz", "mnist"]


def test_a_loader_that_loses_the_race_to_extract_reads_the_winners_folder(tmp_path, monkeypatch):
    """Experiment members started side by side on a fresh machine all find the folder missing; the
    first extracts it, the others must read it rather than fail on "already exists"."""
    import reslab.data.cifar as cifar

    monkeypatch.setenv("RESLAB_SKIP_MD5", "1")
    root = tmp_path / "root"
    root.mkdir()
    make_archive(write_cifar_folder(tmp_path / "src"), root / "cifar-10-python.tar.gz")
    real = cifar.safe_extract

    def another_process_first(archive, dest, folder):
        real(archive, dest, folder)  # the winner, between this loader's look and its own extraction
        return real(archive, dest, folder)

    monkeypatch.setattr(cifar, "safe_extract", another_process_first)
    assert len(load_dataset("cifar10", "trainval", DataOptions(root=str(root)))) == 100
    # A genuine failure still says so: an archive without the dataset's folder.
    (tmp_path / "other").mkdir()
    with tarfile.open(tmp_path / "other" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src", arcname="something-else")
    monkeypatch.setattr(cifar, "safe_extract", real)
    with pytest.raises(DataError, match="no cifar-10-batches-py/ folder inside"):
        load_dataset("cifar10", "trainval", DataOptions(root=str(tmp_path / "other")))


# ---- downloads against a local server -----------------------------------------------------
class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}

    def do_GET(self):  # noqa: N802
        body, declared = self.files.get(self.path, (None, None))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)  # a "cut" file declares more than it sends

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    src = write_cifar_folder(tmp_path / "srv")
    archive = make_archive(src, tmp_path / "cifar-10-python.tar.gz").read_bytes()
    _Handler.files = {
        "/good/cifar-10-python.tar.gz": (archive, len(archive)),
        "/corrupt/cifar-10-python.tar.gz": (archive[:-10] + b"0123456789", len(archive)),
        "/cut/cifar-10-python.tar.gz": (archive[: len(archive) // 2], len(archive)),
    }
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.md5(archive).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def test_download_good_file_verifies_md5_and_extracts(tmp_path, server, monkeypatch):
    url, md5 = server
    import reslab.data.cifar as cifar

    monkeypatch.setitem(cifar.FORMATS, "cifar10", cifar.FORMATS["cifar10"].__class__(
        **{**cifar.FORMATS["cifar10"].__dict__, "md5": md5}))
    root = tmp_path / "dl"
    folder = locate("cifar10", root, download=True, base_url=url + "/good/")
    assert (folder / "data_batch_5").exists() and (root / "cifar-10-python.tar.gz").exists()
    assert not list(root.glob("*.part"))


def test_download_md5_mismatch_keeps_bad_file_aside(tmp_path, server):
    url, md5 = server
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError, match=r"does not match .* kept aside as .*\.bad"):
        download_file(url + "/corrupt/cifar-10-python.tar.gz", dest, md5, progress=False)
    assert not dest.exists()
    assert dest.with_name(dest.name + ".bad").exists()


def test_download_cut_off_halfway_leaves_nothing(tmp_path, server):
    url, md5 = server
    dest = tmp_path / "dl" / "cifar-10-python.tar.gz"
    with pytest.raises(DataError):
        download_file(url + "/cut/cifar-10-python.tar.gz", dest, md5, progress=False, timeout=5)
    assert not dest.exists()
    assert not (tmp_path / "dl").exists()  # the folder it made for the download is gone again


def test_download_missing_url_is_clear(tmp_path, server):
    url, _ = server
    with pytest.raises(DataError, match="cannot download"):
        download_file(url + "/nope.tar.gz", tmp_path / "new" / "data" / "x.tar.gz", progress=False)
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()  # a folder the user already had stays, even empty
    with pytest.raises(DataError, match="cannot download"):
        download_file(url + "/nope.tar.gz", tmp_path / "mine" / "x.tar.gz", progress=False)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


# ---- image folders ------------------------------------------------------------------------
def save(path, mode, size, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = np.full((size[1], size[0], channels), value, dtype=np.uint8).squeeze()
    Image.fromarray(array, mode=mode).save(path)


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    for i in range(5):
        save(root / "cats" / f"c{i}.png", "RGB", (16, 16), 10 * i)
        save(root / "dogs" / f"d{i}.jpg", "RGB", (16, 16), 200)
    save(root / "dogs" / "gray.png", "L", (16, 16), 50)
    save(root / "cats" / "alpha.png", "RGBA", (16, 16), 90)
    return root


def test_folder_classes_modes_and_split(photo_folder):
    data = load_dataset(photo_folder, "trainval")
    assert data.classes == ["cats", "dogs"]
    assert data.images.shape == (12, 3, 16, 16)
    assert data.class_counts() == [6, 6]
    gray_index = [i for i, lbl in enumerate(data.labels.tolist()) if lbl == 1][-1]
    assert torch.all(data.images[gray_index] == 50)  # grayscale replicated into RGB
    val = load_dataset(photo_folder, "val", DataOptions(val_fraction=0.2))
    assert val.class_counts() == [1, 1]
    gray = load_dataset(photo_folder, "trainval", DataOptions(channels=1))
    assert gray.channels == 1


def test_folder_skips_and_reports_bad_files_or_fails_when_strict(photo_folder):
    (photo_folder / "cats" / "notes.txt").write_text("not an image")
    (photo_folder / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.warns(UserWarning) as record:
        data = load_dataset(photo_folder, "trainval")
    messages = " ".join(str(w.message) for w in record)
    assert "1 non-image file(s): cats/notes.txt" in messages
    assert "1 unreadable image(s): dogs/broken.jpg" in messages
    assert len(data) == 12
    with pytest.raises(DataError, match="strict"):
        load_dataset(photo_folder, "trainval", DataOptions(strict=True))


def test_folder_bad_layouts(tmp_path, photo_folder):
    (photo_folder / "empty").mkdir()
    with pytest.raises(DataError, match="empty: class folder has no images"):
        load_dataset(photo_folder, "trainval")
    (photo_folder / "empty").rmdir()
    save(photo_folder / "cats" / "big.png", "RGB", (32, 24))
    with pytest.raises(DataError, match="mixed sizes .*--image-size"):
        load_dataset(photo_folder, "trainval")
    resized = load_dataset(photo_folder, "trainval", DataOptions(image_size=8))
    assert resized.images.shape[1:] == (3, 8, 8)
    with pytest.raises(DataError, match="no such dataset or folder"):
        load_dataset(tmp_path / "missing", "train")
    (tmp_path / "flat").mkdir()
    save(tmp_path / "flat" / "x.png", "RGB", (8, 8))
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(tmp_path / "flat", "train")


def test_folder_cache_is_used_then_invalidated(photo_folder, monkeypatch):
    import reslab.data.folder as folder

    first = load_dataset(photo_folder, "trainval")
    calls = []
    real = folder.decode_image
    monkeypatch.setattr(folder, "decode_image", lambda *a: calls.append(a) or real(*a))
    again = load_dataset(photo_folder, "trainval")
    assert calls == [] and torch.equal(first.images, again.images)
    save(photo_folder / "cats" / "c0.png", "RGB", (16, 16), 255)  # edit one image
    os.utime(photo_folder / "cats" / "c0.png", ns=(1, 1))
    changed = load_dataset(photo_folder, "trainval")
    assert len(calls) == 12 and not torch.equal(first.images, changed.images)


def test_presplit_folders(tmp_path):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(3):
                save(tmp_path / "ds" / split / cls / f"{i}.png", "RGB", (8, 8), 40 * i)
    assert len(load_dataset(tmp_path / "ds", "train")) == 6
    assert len(load_dataset(tmp_path / "ds", "val")) == 6


# ---- IDX ----------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = np.arange(30) % 10
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        blob = idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    data = load_dataset("mnist", "trainval", DataOptions(root=str(tmp_path)))
    assert data.images.shape == (30, 1, 28, 28)
    assert torch.equal(data.images[:, 0], torch.from_numpy(images))
    assert data.augment.flip is False
    by_path = load_dataset(folder, "trainval")
    assert len(by_path) == 30


def test_truncated_idx(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((4, 5, 5)))[:-7])
    with pytest.raises(DataError, match="header says 100"):
        read_idx(path)
    path.write_bytes(b"\x01\x02")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        read_idx(path)


@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist():
    data = load_dataset("fashion-mnist", "trainval")
    assert data.images.shape == (60_000, 1, 28, 28)
    assert data.class_counts() == [6000] * 10


def test_digits_needs_no_download_and_equal_scikit_learns(monkeypatch):
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    data = load_dataset("digits", "trainval")
    assert data.images.shape == (1797, 1, 8, 8) and data.images.max() == 255
    bunch = sklearn_datasets.load_digits()  # read from its data file directly: the same scans, in order
    expected = torch.from_numpy(bunch.images).mul(255 / 16).round().to(torch.uint8).unsqueeze(1)
    assert torch.equal(data.images, expected) and torch.equal(data.labels, torch.from_numpy(bunch.target).long())
    # Where the file is not where it was (another scikit-learn), its loader gives the same.
    import reslab.data.digits as digits

    monkeypatch.setattr(digits.Path, "is_file", lambda self: False)
    again = digits.load_digits()
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)


# ---- the batched pipeline -----------------------------------------------------------------
def test_crop_flip_matches_a_per_sample_reference():
    x = torch.randn(6, 3, 8, 8)
    out = crop_flip(x, pad=2, flip=True, generator=torch.Generator().manual_seed(3))
    assert out.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for n in range(6):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[n], (lambda c: c.flip(2) if f else c)(padded[n, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"sample {n} is not a pad-2 crop (+flip) of its input"
    assert crop_flip(x, 0, False, torch.Generator()).equal(x)


def test_cutout_zeros_one_clipped_square_per_image_and_nothing_else():
    x = torch.randn(200, 3, 10, 10).add_(5).contiguous(memory_format=torch.channels_last)  # no zero before cutout
    out = cutout(x, 4, torch.Generator().manual_seed(1))
    zeroed = out == 0
    assert torch.equal(out[~zeroed], x[~zeroed])
    assert torch.equal(zeroed[:, :1].expand_as(zeroed), zeroed)  # all channels of a pixel, or none
    sizes = set()
    for mask in zeroed[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask.sum() == len(rows) * len(cols)  # one solid rectangle
        assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4  # centred in the image: at least half the side
        sizes.add((len(rows), len(cols)))
    assert (4, 4) in sizes and len(sizes) > 1  # whole squares inside, clipped ones at the borders
    assert out.is_contiguous(memory_format=torch.channels_last)  # the layout fast CPU convolutions want


def test_normalizer_channel_and_pixel_statistics():
    images = torch.randint(0, 256, (50, 3, 4, 4), dtype=torch.uint8)
    n = Normalizer.fit(images)
    floats = images.double() / 255
    torch.testing.assert_close(n.mean.double(), floats.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(n.std.double(), floats.permute(1, 0, 2, 3).reshape(3, -1).std(1, unbiased=False),
                               rtol=1e-4, atol=1e-5)
    out = n(images)
    assert abs(out.mean().item()) < 1e-4
    p = Normalizer.fit(images, "pixel")
    assert p.mean.shape == (3, 4, 4)
    torch.testing.assert_close(p(images).mean(0), torch.zeros(3, 4, 4), atol=1e-5, rtol=0)


def _toy(n=64):
    return ImageArrays(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8), torch.arange(n) % 4,
                       list("abcd"), "toy")


def test_a_large_run_seed_gives_batches_and_small_seeds_keep_theirs():
    from reslab.data.loader import _batch_seed

    data = _toy()
    norm = Normalizer.fit(data.images)
    stamp = list(TrainLoader(data, 16, norm, seed=1_733_456_789).epoch(3))  # a timestamp overflowed torch's seed
    assert len(stamp) == 4 and not torch.equal(stamp[0][0], next(TrainLoader(data, 16, norm, seed=5).epoch(3))[0])
    # The runs made before keep their batches: seeds that fit are unchanged, and the one that was
    # negative (seed 0, epoch 0's permutation: -1) now wraps where torch wrapped it.
    assert _batch_seed(5, 2, 3) == (5 * 1_000_003 + 2) * 1_000_033 + 3
    before = torch.randperm(len(data.images), generator=torch.Generator().manual_seed(-1))
    assert torch.equal(TrainLoader(data, 16, norm, seed=0).permutation(0), before)


def test_loader_is_seeded_resumable_and_shards_exactly():
    data = _toy()
    norm = Normalizer.fit(data.images)
    loader = TrainLoader(data, 16, norm, seed=5)
    full = list(loader.epoch(2))
    again = list(TrainLoader(data, 16, norm, seed=5).epoch(2))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    assert not torch.equal(full[0][0], next(loader.epoch(3))[0])
    resumed = list(loader.epoch(2, start=2))
    assert torch.equal(resumed[0][0], full[2][0])
    shards = [list(TrainLoader(data, 16, norm, seed=5, rank=r, world_size=2).epoch(2)) for r in range(2)]
    for b in range(len(full)):
        x = torch.empty_like(full[b][0])
        x[0::2], x[1::2] = shards[0][b][0], shards[1][b][0]
        assert torch.equal(x, full[b][0])
    # Every image once per epoch.
    seen = torch.cat([batch.labels for batch in full])
    assert len(seen) == 64 and sorted(torch.cat([batch.rows for batch in full]).tolist()) == list(range(64))


def test_loader_cutout_masks_the_batches_it_would_give_without_cutout():
    data = _toy()
    norm = Normalizer.fit(data.images)
    plain = list(TrainLoader(data, 16, norm, seed=5).epoch(1))
    masked = list(TrainLoader(data, 16, norm, seed=5, cutout_size=4).epoch(1))
    for (a, ya, *_), (b, yb, *_) in zip(plain, masked):
        assert torch.equal(ya, yb)
        kept = b != 0
        assert torch.equal(a[kept], b[kept])  # the same crops and flips, only masked
        masked_now = (b == 0) & (a != 0)  # (the crops' padding is zero already)
        per_image = masked_now[:, 0].sum(dim=(1, 2))
        assert per_image.max() <= 16 and per_image.sum() > 0


def test_eval_loader_shards_count_each_example_once():
    data = _toy(37)
    norm = Normalizer.fit(data.images)
    counts = torch.zeros(37, dtype=torch.int64)
    for rank in range(3):
        loader = EvalLoader(data, 5, norm, rank=rank, world_size=3)
        counts[loader.indices] += 1
        assert sum(len(y) for _, y in loader) == len(loader.indices)
    assert torch.all(counts == 1)


@pytest.mark.skipif(not (SHARED / "data" / "cifar10-train-jpeg.tar.gz").exists(), reason="../shared data absent")
def test_shared_cifar10_jpeg_converts_and_loads(tmp_path):
    out = tmp_path / "cifar"
    subprocess.run([sys.executable, str(SHARED / "tools" / "cifar10-from-jpeg.py"), "--train",
                    str(SHARED / "data" / "cifar10-train-jpeg.tar.gz"), "--out", str(out)], check=True,
                   capture_output=True, timeout=600)
    data = load_dataset("cifar10", "trainval", DataOptions(root=str(out), download=False))
    assert len(data) == 50_000
    assert data.class_counts() == [5000] * 10
    from reslab.data.arrays import stratified_split

    train, val = stratified_split(data.labels, 0.1)  # the paper's 45k/5k, as load_dataset's "train" takes it
    assert (len(train), len(val)) == (45_000, 5_000)


def test_cifar100_layout(tmp_path):
    import pickle

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"class{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"x"] * 20}, f, protocol=2)
    for name, n in (("train", 200), ("test", 100)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [0] * n}, f, protocol=2)
    data = load_dataset("cifar100", "trainval", DataOptions(root=str(tmp_path)))
    assert data.images.shape == (200, 3, 32, 32) and len(data.classes) == 100
    assert len(load_dataset("cifar100", "test", DataOptions(root=str(tmp_path)))) == 100
    assert load_dataset("cifar100", "val", DataOptions(root=str(tmp_path))).class_counts() == [1] * 100


def test_cli_training_on_a_strict_folder_fails_with_one_line(tmp_path, photo_folder):
    (photo_folder / "cats" / "notes.txt").write_text("x")
    result = subprocess.run([sys.executable, "-m", "reslab", "train", "--data", str(photo_folder), "--epochs", "1",
                             "--batch-size", "4", "--strict", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "non-image file" in result.stderr and "Traceback" not in result.stderr


# ---- images that are not what they seem -----------------------------------------------------
def test_16_bit_png_decodes_to_the_same_gradient_as_its_8_bit_version(tmp_path):
    from reslab.data.folder import decode_image

    gradient16 = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)
    Image.fromarray(gradient16).save(tmp_path / "deep.png")
    Image.fromarray((gradient16 >> 8).astype(np.uint8)).save(tmp_path / "flat.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep = decode_image(tmp_path / "deep.png", 3, None).astype(int)
    flat = decode_image(tmp_path / "flat.png", 3, None).astype(int)
    assert deep.min() == 0 and deep.max() >= 250  # a gradient, not Pillow's clipped white
    assert np.abs(deep - flat).max() <= 1


def test_float_tiff_spans_0_to_255_by_its_own_range(tmp_path):
    from reslab.data.folder import decode_image

    ramp = np.linspace(-3.0, 500.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp).save(tmp_path / "ramp.tif")
    decoded = decode_image(tmp_path / "ramp.tif", 1, None)[0]
    assert decoded[0, 0] == 0 and decoded[-1, -1] == 255
    assert np.all(np.diff(decoded.astype(int).flatten()) >= 0)


def test_strict_run_does_not_get_a_cache_built_without_strict(photo_folder):
    (photo_folder / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        assert len(load_dataset(photo_folder, "trainval")) == 12  # builds the cache, skipping broken.jpg
    with pytest.raises(DataError, match="broken.jpg .*--strict"):
        load_dataset(photo_folder, "trainval", DataOptions(strict=True))


def test_a_single_class_folder_is_refused(tmp_path):
    for i in range(4):
        save(tmp_path / "only" / "cats" / f"{i}.png", "RGB", (8, 8), 20 * i)
    with pytest.raises(DataError, match=r"only one class folder \(cats/\); a classifier needs at least 2"):
        load_dataset(tmp_path / "only", "train")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this platform")
def test_named_pipe_is_never_opened(photo_folder):
    from reslab.data.folder import decode_image

    os.mkfifo(photo_folder / "cats" / "pipe.png")
    with pytest.raises(DataError, match="pipe.png: a named pipe, not a regular file"):
        decode_image(photo_folder / "cats" / "pipe.png", 3, None)  # returns at once: nobody writes to it
    with pytest.warns(UserWarning, match="non-image file.*cats/pipe.png"):
        assert len(load_dataset(photo_folder, "trainval")) == 12
    with pytest.raises(DataError, match="pipe.png .*--strict"):
        load_dataset(photo_folder, "trainval", DataOptions(strict=True))


def test_image_over_the_pixel_limit_says_so_and_how_to_raise_it(tmp_path, monkeypatch):
    from reslab.data.folder import decode_image

    save(tmp_path / "big.png", "RGB", (12, 12))  # 144 pixels
    monkeypatch.setenv("RESLAB_MAX_IMAGE_PIXELS", "50")  # over twice the limit: Pillow's error
    with pytest.raises(DataError, match=r"big.png: more pixels than the limit of 50 .*RESLAB_MAX_IMAGE_PIXELS"):
        decode_image(tmp_path / "big.png", 3, None)
    monkeypatch.setenv("RESLAB_MAX_IMAGE_PIXELS", "200")
    assert decode_image(tmp_path / "big.png", 3, None).shape == (3, 12, 12)
    monkeypatch.setenv("RESLAB_MAX_IMAGE_PIXELS", "80")  # over the limit, under twice: the warning variant
    with pytest.raises(DataError, match="more pixels than the limit of 80"):
        decode_image(tmp_path / "big.png", 3, None)
    monkeypatch.setenv("RESLAB_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="RESLAB_MAX_IMAGE_PIXELS must be a positive number"):
        decode_image(tmp_path / "big.png", 3, None)
