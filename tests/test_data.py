"""DataBundle and the bundled/on-disk loaders, with real files."""

import gzip
import io
import lzma
import struct
import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import edgecompress as ec


def test_digits_is_split_seeded_and_normalised():
    a = ec.data.digits(image_size=16, seed=0)
    b = ec.data.digits(image_size=16, seed=0)
    assert a.input_shape == (1, 16, 16)
    assert a.num_classes == 10
    xa, _ = next(iter(a.val))
    xb, _ = next(iter(b.val))
    assert torch.equal(xa, xb)
    n_train = len(a.train.dataset)
    n_val = len(a.val.dataset)
    assert (n_train, n_val) == (1438, 359)
    x_all = a.train.dataset.tensors[0]
    assert abs(float(x_all.mean())) < 0.05 and abs(float(x_all.std()) - 1) < 0.05


def test_digits_three_channels():
    d = ec.data.digits(image_size=24, channels=3)
    assert d.input_shape == (3, 24, 24)


def _loader(x, y=None, batch=8):
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def test_empty_bundle_and_empty_loader_are_rejected():
    with pytest.raises(ec.DataError, match="empty"):
        ec.DataBundle()
    with pytest.raises(ec.DataError, match="train is empty"):
        ec.DataBundle(train=_loader(torch.zeros(0, 1, 4, 4)))


def test_nan_and_integer_inputs_are_rejected():
    x = torch.randn(16, 1, 4, 4)
    x[3, 0, 1, 1] = float("nan")
    with pytest.raises(ec.DataError, match="NaN/Inf"):
        ec.DataBundle(val=_loader(x))
    with pytest.raises(ec.DataError, match="dtype torch.uint8"):
        ec.DataBundle(val=_loader(torch.zeros(4, 1, 4, 4, dtype=torch.uint8)))


def test_calibration_inputs_counts_and_checks():
    d = ec.data.digits(image_size=8)
    assert d.calibration_inputs(100).shape == (100, 1, 8, 8)
    assert d.calibration_inputs(10_000).shape[0] == 256  # the calib split holds 256


def _idx_bytes(arr: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


@pytest.mark.parametrize("compress", ["", ".gz", ".xz"])
def test_idx_loader_reads_plain_gz_and_xz(tmp_path, compress):
    rng = np.random.default_rng(0)
    writers = {"": lambda b: b, ".gz": gzip.compress, ".xz": lzma.compress}
    for split, n in (("train", 40), ("t10k", 20)):
        imgs = rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (tmp_path / f"{split}-images-idx3-ubyte{compress}").write_bytes(writers[compress](_idx_bytes(imgs, 2051)))
        (tmp_path / f"{split}-labels-idx1-ubyte{compress}").write_bytes(writers[compress](_idx_bytes(labels, 2049)))
    d = ec.data.idx(tmp_path, batch_size=16)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert len(d.train.dataset) == 40 and len(d.val.dataset) == 20


def test_idx_truncated_file_is_a_clear_error(tmp_path):
    arr = np.zeros((10, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_bytes(arr, 2051)[:-100])
    with pytest.raises(ec.DataError, match="truncated"):
        ec.data.read_idx(tmp_path / "train-images-idx3-ubyte")
    ok = tmp_path / "only_train"
    ok.mkdir()
    (ok / "train-images-idx3-ubyte").write_bytes(_idx_bytes(arr, 2051))
    (ok / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(10, np.uint8), 2049))
    with pytest.raises(ec.DataError, match="no 't10k-images"):
        ec.data.idx(ok)


def _png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (12, 12), color).save(buf, format="PNG")
    return buf.getvalue()


def test_image_folder_and_tar_agree(tmp_path):
    root = tmp_path / "imgs"
    tar_path = tmp_path / "imgs.tar"
    with tarfile.open(tar_path, "w") as tar:
        for cls, color in (("cat", (200, 10, 10)), ("dog", (10, 10, 200))):
            (root / cls).mkdir(parents=True)
            for i in range(6):
                data = _png(color)
                (root / cls / f"{i}.png").write_bytes(data)
                info = tarfile.TarInfo(f"test/{cls}/{i}.png")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    a = ec.data.image_folder(root, image_size=8, val_fraction=0.5)
    b = ec.data.image_folder(tar_path, image_size=8, val_fraction=0.5)
    assert a.class_names == b.class_names == ["cat", "dog"]
    assert a.input_shape == (3, 8, 8)
    assert torch.equal(a.val.dataset.tensors[0], b.val.dataset.tensors[0])


def test_image_folder_without_images_is_a_clear_error(tmp_path):
    with pytest.raises(ec.DataError, match="no images"):
        ec.data.image_folder(tmp_path)


def test_random_shift_flip_crops_from_the_padded_image_and_is_seeded():
    x = torch.arange(8 * 2 * 5 * 5, dtype=torch.float32).reshape(8, 2, 5, 5)
    y = torch.arange(8)
    loader = [(x, y), (x, y)]
    aug = ec.data.RandomShiftFlip(loader, pad=2, flip=True, seed=3)
    batches = list(aug)
    assert len(aug) == 2 and len(batches) == 2
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for out, labels in batches:
        assert out.shape == x.shape and torch.equal(labels, y)
        for i in range(8):  # each image is a 5×5 window of its padded (maybe flipped) copy
            windows = [src[i, :, r:r + 5, c:c + 5] for src in (padded, padded.flip(3))
                       for r in range(5) for c in range(5)]
            assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(batches[0][0], batches[1][0])  # a fresh draw per pass
    again = list(ec.data.RandomShiftFlip(loader, pad=2, flip=True, seed=3))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


def test_random_shift_flip_rejects_bad_input():
    with pytest.raises(ec.DataError, match="pad"):
        ec.data.RandomShiftFlip([], pad=-1)
    with pytest.raises(ec.DataError, match="NCHW"):
        next(iter(ec.data.RandomShiftFlip([(torch.zeros(4, 10), torch.zeros(4))])))
