"""The data pipeline: 8-bit images kept as uint8 and fed through a DataLoader in a seeded, resumable order with
optional flips; memory-mapped .npy files; CIFAR-10/100 in their pickled layout; class subfolders as labels."""
import collections
import pickle

import numpy as np
import pytest
import torch

from scoresde.data import ArrayFile, Checkerboard, Cifar10, Cifar100, ImageData, ImageFolder
from scoresde.data.files import eight_bit_to_unit
from sde.errors import ConfigError


def tagged_images(n, channels=3, size=4, seed=0):
    """n random uint8 images whose pixel (0, 0, 0) is their own index, so a batch says which rows it holds."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n)
    return x


def rows_of(x):
    """The indices a decoded batch holds (read back from pixel (0, 0, 0))."""
    return torch.round((x[:, 0, 0, 0] + 1) * 128 - 0.5).to(torch.int64)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_loader_batches_are_float_bin_centres_with_their_labels():
    pixels = tagged_images(50)
    data = ImageData(pixels, labels=np.arange(50) % 3, test_fraction=0.2)
    it = data.batches(8, None, labels=True, seed=0)
    batches = take(it, 5)
    it.close()
    for x, y in batches:
        assert x.shape == (8, 3, 4, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
        k = (x + 1) * 128 - 0.5
        assert torch.equal(k, torch.round(k)) and k.min() >= 0 and k.max() <= 255
        rows = rows_of(x)
        assert torch.equal(y, rows % 3)
        assert torch.equal(x, eight_bit_to_unit(pixels[rows.numpy()], torch.float32))
    seen = torch.cat([rows_of(x) for x, _ in batches]).sort().values
    assert torch.equal(seen, torch.from_numpy(np.sort(data.train_index)))  # 40 rows, 5 batches: one epoch, each once
    x, y = next(data.batches(8, None, seed=0))
    assert y is None and torch.equal(x, batches[0][0])


def test_loader_order_is_seeded_and_resumes_at_any_batch():
    data = ImageData(tagged_images(30), test_fraction=0.1)
    straight = [rows_of(x) for x, _ in take(data.batches(7, None, seed=4), 9)]  # crosses two epoch ends
    resumed = [rows_of(x) for x, _ in take(data.batches(7, None, seed=4, start=5), 4)]
    assert all(torch.equal(a, b) for a, b in zip(straight[5:], resumed))
    other = [rows_of(x) for x, _ in take(data.batches(7, None, seed=5), 2)]
    assert not torch.equal(torch.cat(other), torch.cat(straight[:2]))
    stream = torch.cat(straight)
    assert sorted(stream[:27].tolist()) == sorted(data.train_index.tolist())  # epoch 0
    assert sorted(stream[27:54].tolist()) == sorted(data.train_index.tolist())  # epoch 1, in another order
    assert not torch.equal(stream[:27], stream[27:54])


def test_flips_mirror_some_images_and_follow_the_seed():
    pixels = tagged_images(40, size=6)
    data = ImageData(pixels, test_fraction=0.1, flip=True)
    x, _ = next(data.batches(36, None, seed=1))
    stored = eight_bit_to_unit(pixels, torch.float32)
    flipped = []
    for image in x:
        rows = [r for r in range(40) if torch.equal(stored[r], image) or torch.equal(stored[r].flip(-1), image)]
        assert len(rows) == 1
        flipped.append(not torch.equal(stored[rows[0]], image))
    assert 0 < sum(flipped) < len(flipped)
    assert torch.equal(x, next(data.batches(36, None, seed=1))[0])
    plain = ImageData(pixels, test_fraction=0.1)
    x, _ = next(plain.batches(36, None, seed=1))
    assert all(any(torch.equal(stored[r], image) for r in range(40)) for image in x)


def test_generated_sets_keep_their_generator_path():
    a = next(Checkerboard().batches(100, torch.Generator().manual_seed(3)))
    assert a[1] is None and torch.equal(a[0], Checkerboard().sample(100, torch.Generator().manual_seed(3)))


def test_uint8_arrays_sample_as_before(tmp_path):
    """sample() draws what the former float64 copy drew: rows of a seeded split, decoded to bin centres."""
    pixels = tagged_images(40)
    np.save(tmp_path / "imgs.npy", pixels)
    data = ArrayFile(tmp_path / "imgs.npy", test_fraction=0.25, seed=2)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    train, test = perm[10:], perm[:10]
    gen = torch.Generator().manual_seed(7)
    expected = eight_bit_to_unit(pixels)[train[torch.randint(0, 30, (16,), generator=gen)]].float()
    assert torch.equal(data.sample(16, torch.Generator().manual_seed(7)), expected)
    assert torch.equal(data.test(10, dtype=torch.float64), eight_bit_to_unit(pixels)[test])


def test_a_npy_of_images_is_memory_mapped_and_read_channels_last(tmp_path):
    pixels = tagged_images(20)
    np.save(tmp_path / "chw.npy", pixels)
    np.save(tmp_path / "hwc.npy", np.ascontiguousarray(pixels.transpose(0, 2, 3, 1)))
    chw = ArrayFile(tmp_path / "chw.npy", flip=True)
    assert isinstance(chw.store, np.memmap) and chw.shape == (3, 4, 4) and chw.levels == 256
    with pytest.warns(UserWarning, match="channels-last"):
        hwc = ArrayFile(tmp_path / "hwc.npy")
    assert isinstance(hwc.store, np.memmap) and hwc.shape == (3, 4, 4)
    assert torch.equal(hwc.train_x, chw.train_x)
    assert torch.equal(next(hwc.batches(5, None, seed=0))[0], next(ArrayFile(tmp_path / "chw.npy").batches(
        5, None, seed=0))[0])
    np.save(tmp_path / "floats.npy", np.zeros((10, 2)))
    with pytest.raises(ConfigError, match="flip=true needs 8-bit images"):
        ArrayFile(tmp_path / "floats.npy", flip=True)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(tmp_path):
    np.save(tmp_path / "imgs.npy", tagged_images(60))
    one = ArrayFile(tmp_path / "imgs.npy", flip=True)
    two = ArrayFile(tmp_path / "imgs.npy", flip=True, workers=2)
    a, b = take(one.batches(16, None, seed=3, start=2), 6), take(two.batches(16, None, seed=3, start=2), 6)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))


def test_workers_option_is_checked():
    with pytest.raises(ConfigError, match="workers=-1 is invalid"):
        ImageData(tagged_images(4), workers=-1)
    with pytest.raises(ConfigError, match="flip='yes' is invalid"):
        ImageData(tagged_images(4), flip="yes")


# -- CIFAR ----------------------------------------------------------------------------------------------------

def cifar_file(path, n, label_key="labels", offset=0, byte_keys=True):
    """A pickled CIFAR batch: n images whose red plane starts with their number, labels (offset + i) % 10."""
    data = np.random.default_rng(n + offset).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    data[:, 0] = np.arange(offset, offset + n)
    batch = {"data": data, label_key: [(offset + i) % 10 for i in range(n)], "batch_label": "fake"}
    if byte_keys:
        batch = {k.encode(): v for k, v in batch.items()}
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data


def fake_cifar10(root, per_batch=4, test=3):
    root.mkdir(parents=True, exist_ok=True)
    data = [cifar_file(root / f"data_batch_{i}", per_batch, offset=(i - 1) * per_batch) for i in range(1, 6)]
    data.append(cifar_file(root / "test_batch", test, offset=100))
    return np.concatenate(data)


def test_cifar10_reads_the_python_layout(tmp_path):
    raw = fake_cifar10(tmp_path / "cifar-10-batches-py")
    data = Cifar10(tmp_path)  # the parent of the unpacked folder works too
    assert data.shape == (3, 32, 32) and data.levels == 256 and data.num_classes == 10
    assert len(data.train_index) == 20 and data.test_size == 3
    x, y = data.test(3, dtype=torch.float64, labels=True)
    assert torch.equal(y, torch.tensor([100 % 10, 101 % 10, 102 % 10]))
    planes = raw[20:].reshape(3, 3, 32, 32)  # red, green, blue planes of 32 rows of 32
    assert torch.equal(x, eight_bit_to_unit(planes))
    xb, yb = next(data.batches(20, None, labels=True, seed=0))
    numbers = torch.round((xb[:, 0, 0, 0] + 1) * 128 - 0.5).long()
    assert sorted(numbers.tolist()) == list(range(20)) and torch.equal(yb, numbers % 10)


def test_cifar100_reads_fine_labels(tmp_path):
    cifar_file(tmp_path / "train", 6, "fine_labels", byte_keys=False)
    cifar_file(tmp_path / "test", 2, "fine_labels", offset=6, byte_keys=False)
    data = Cifar100(tmp_path, flip=False)
    assert len(data.train_index) == 6 and data.test_size == 2 and data.num_classes == 8


def replaced(name, content):
    """A fake CIFAR-10 folder with the file ``name`` replaced by ``content`` (None: removed)."""
    def damage(root):
        fake_cifar10(root)
        if content is None:
            (root / name).unlink()
        else:
            (root / name).write_bytes(content)
    return damage


@pytest.mark.parametrize("damage, message", [
    (lambda root: None, "is not a folder: expected one holding data_batch_1, .*test_batch"),
    (replaced("test_batch", None), "is not a CIFAR-10 folder: it lacks test_batch"),
    (replaced("data_batch_3", b"junk"), "data_batch_3 cannot be read as a pickled CIFAR-10 file"),
    (replaced("data_batch_2", pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1],
                                            "x": collections.OrderedDict()})),
     "data_batch_2 cannot be read .*collections.OrderedDict, which is not a NumPy array"),
    (replaced("data_batch_1", pickle.dumps({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]})),
     "expected \\(N, 3072\\) uint8 and N labels"),
    (replaced("data_batch_1", pickle.dumps({"data": np.zeros((2, 3072))})), "data_batch_1 lacks data or labels"),
])
def test_a_path_that_is_not_cifar_is_one_line(tmp_path, damage, message):
    root = tmp_path / "cifar"
    damage(root)
    with pytest.raises(ConfigError, match=message) as info:
        Cifar10(root)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"path='{root}")


# -- image folders ----------------------------------------------------------------------------------------

def test_class_subfolders_give_labels(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in (("dog", 3), ("cat", 2)):
        (tmp_path / name / "deeper").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / name / "deeper" / f"{i}.png")
    data = ImageFolder(tmp_path, size=4, test_fraction=0.2)
    assert data.classes == ["cat", "dog"] and data.num_classes == 2
    assert sorted(data.labels.tolist()) == [0, 0, 1, 1, 1]
    assert ImageFolder(tmp_path, size=4, labels=False).num_classes is None
    Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "stray.png")
    assert ImageFolder(tmp_path, size=4).num_classes is None
    with pytest.raises(ConfigError, match="cannot give labels=true: 1 image\\(s\\) lie directly in it"):
        ImageFolder(tmp_path, size=4, labels=True)


def test_data_configs_name_their_options():
    """Every option of the new data configs is a parameter of its class (Hydra builds them)."""
    import inspect

    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from test_run import ROOT

    for name in ("cifar10", "cifar100", "array", "folder", "digits"):
        cfg = OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml")
        cls = get_class(cfg._target_)
        params = inspect.signature(cls).parameters
        assert {k for k in cfg if k != "_target_"} <= set(params), name
        assert "flip" in cfg and "workers" in cfg, name


@pytest.mark.slow
def test_run_py_names_a_bad_cifar_path_in_one_line(tmp_path):
    from test_run import SMALL_MLP, run_main as run

    proc = run(tmp_path / "out", "data=cifar10", f"data.path={tmp_path}", "train.steps=1", *SMALL_MLP)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"data.path='{tmp_path}' is not a CIFAR-10 folder: it lacks data_batch_1" in lines[0]

