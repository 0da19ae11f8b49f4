"""Built-in datasets: shapes, determinism, rebuild from resolved kwargs, file loaders, noise, errors."""
from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.checkpoint import plain
from landscape.cli import main
from landscape.data import DATASETS, DataBundle, get_dataset
from landscape.data.cache import cache_dir
from tests.data_files import write_cifar10, write_cifar100, write_imdb, write_mnist, write_tsv

ROOT = Path(__file__).resolve().parents[1]


def equal_bundles(a: DataBundle, b: DataBundle) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("x_train", "y_train", "x_test", "y_test")) \
        and a.kwargs == b.kwargs and (a.num_classes, a.vocab_size, a.task) == (b.num_classes, b.vocab_size, b.task)


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return {"cifar10": write_cifar10(tmp_path / "c10"), "cifar100": write_cifar100(tmp_path / "c100"),
            "mnist": write_mnist(tmp_path / "mnist"), "tsv": write_tsv(tmp_path / "reviews.tsv"),
            "imdb": write_imdb(tmp_path / "aclImdb"), "text": _write_text(tmp_path / "corpus.txt")}


def _write_text(path: Path) -> Path:
    path.write_text("the cat sat on the mat\nthe dog sat on the log\n" * 20 + "a bird flew over the cat\n" * 5)
    return path


# name, kwargs (a callable of the files fixture for file-based ones), task, x shape per sample, x dtype
CASES = [
    ("mnist1d", {}, "classification", (40,), torch.float32),
    ("mnist1d", {"num_samples": 1000, "seed": 3, "label_noise": 0.1}, "classification", (40,), torch.float32),
    ("digits", {}, "classification", (1, 8, 8), torch.float32),
    ("digits", {"flat": True}, "classification", (64,), torch.float32),
    ("synthetic", {"n_train": 64, "n_test": 32}, "classification", (20,), torch.float32),
    ("synthetic", {"task": "regression", "n_train": 64, "n_test": 32, "dim": 7, "noise": 0.1}, "regression", (7,),
     torch.float32),
    ("cifar10", lambda f: {"root": str(f["cifar10"])}, "classification", (3, 32, 32), torch.float32),
    ("cifar100", lambda f: {"root": str(f["cifar100"]), "labels": "coarse"}, "classification", (3, 32, 32),
     torch.float32),
    ("mnist", lambda f: {"root": str(f["mnist"])}, "classification", (1, 28, 28), torch.float32),
    ("text_lm", {"seq_len": 12, "n_sentences": 300}, "language_model", (12,), torch.int64),
    ("text_lm", lambda f: {"path": str(f["text"]), "level": "char", "seq_len": 16}, "language_model", (16,),
     torch.int64),
    ("text_classification", lambda f: {"path": str(f["tsv"]), "seq_len": 10}, "classification", (10,), torch.int64),
    ("text_classification", lambda f: {"path": str(f["imdb"]), "seq_len": 8}, "classification", (8,), torch.int64),
    ("synthetic_text", {"n_train": 40, "n_test": 20, "seq_len": 9}, "classification", (9,), torch.int64),
]


def _kwargs(case, files) -> dict:
    kw = case[1]
    return dict(kw(files) if callable(kw) else kw)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{len(c[1]) if isinstance(c[1], dict) else 'files'}")
def test_dataset_builds_and_rebuilds_from_its_kwargs(case, files):
    name, _, task, shape, dtype = case
    b = get_dataset(name, **_kwargs(case, files))
    assert b.name == name and b.task == task
    assert b.input_shape == shape and b.x_train.dtype == dtype and b.x_test.shape[1:] == shape
    assert len(b.x_train) > 0 and len(b.x_test) > 0
    if task == "classification":
        assert b.y_train.dtype == torch.int64 and b.y_train.dim() == 1
        assert 0 <= int(b.y_train.min()) and int(max(b.y_train.max(), b.y_test.max())) < b.num_classes
    elif task == "language_model":
        assert b.y_train.shape == b.x_train.shape and b.y_train.dtype == torch.int64
        assert int(b.x_train.max()) < b.vocab_size and b.num_outputs == b.vocab_size
        # y is x shifted by one token: the stream continues across windows.
        assert torch.equal(b.x_train[:, 1:], b.y_train[:, :-1])
        assert torch.equal(b.x_train[1:, 0], b.y_train[:-1, -1])
    else:
        assert b.y_train.dtype == torch.float32
    if dtype == torch.int64 and b.vocab_size is not None:
        assert int(max(b.x_train.max(), b.x_test.max())) < b.vocab_size
    # The resolved kwargs are plain JSON and rebuild bit-identical data, twice over.
    assert json.loads(json.dumps(b.kwargs)) == b.kwargs and plain(b.kwargs) == b.kwargs
    again = get_dataset(name, **b.kwargs)
    assert equal_bundles(b, again)
    assert equal_bundles(again, get_dataset(name, **again.kwargs))


def test_every_registered_dataset_is_covered():
    get_dataset("digits")  # loads the registry
    assert set(DATASETS) == {c[0] for c in CASES}


@pytest.mark.parametrize("name, kwargs", [
    ("mnist1d", {"num_samples": 500}), ("digits", {}), ("synthetic", {"n_train": 50, "n_test": 20}),
    ("synthetic_text", {"n_train": 50, "n_test": 20}), ("text_lm", {"n_sentences": 200, "seq_len": 8}),
])
def test_seed_changes_the_data(name, kwargs):
    a, b = get_dataset(name, **kwargs, seed=1), get_dataset(name, **kwargs, seed=2)
    assert a.x_train.shape[1:] == b.x_train.shape[1:] and not torch.equal(a.x_train, b.x_train)


def test_kwarg_errors_are_one_line_value_errors(tmp_path):
    for name, kwargs, match in [
        ("digits", {"bogus": 1}, "has no argument bogus"),
        ("mnist1d", {"bogus": 1}, "unknown argument"),
        ("cifar10", {}, "needs root"),
        ("synthetic", {"task": "ranking"}, "task must be one of"),
        ("synthetic", {"n_train": 0}, "n_train must be an integer >= 1"),
        ("digits", {"label_noise": 1.0}, r"label_noise must be in \[0, 1\)"),
        ("text_lm", {"level": "byte"}, "level must be one of"),
        ("text_lm", {"seq_len": 10_000, "n_sentences": 10}, "too few for seq_len"),
    ]:
        with pytest.raises(ValueError, match=match) as e:
            get_dataset(name, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_dataset("cifar10", root=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        get_dataset("cifar10", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        get_dataset("mnist", root=str(tmp_path))


# -- MNIST-1D generation and cache -------------------------------------------------------------------


def test_mnist1d_matches_the_package_and_leaves_global_rng_alone():
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    b = get_dataset("mnist1d", num_samples=1000)
    assert (np.random.rand(), random.random()) == (expect_np, expect_py)
    args = get_dataset_args()
    args.num_samples = 1000
    ref = make_dataset(args)
    assert torch.equal(b.x_train, torch.from_numpy(ref["x"]).float())
    assert torch.equal(b.y_test, torch.from_numpy(ref["y_test"]))
    assert b.x_train.shape == (800, 40) and b.kwargs["seed"] == 42


def test_mnist1d_cache_is_reused_and_a_corrupt_file_regenerated(tmp_path, monkeypatch):
    import landscape.data.mnist1d as m

    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    first = get_dataset("mnist1d", num_samples=600, seed=5)
    (entry,) = (tmp_path / "cache" / "mnist1d").glob("*.pt")
    assert not [p for p in entry.parent.iterdir() if p.name.endswith(".tmp")]

    def boom(args):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(m, "_generate", boom)
    assert equal_bundles(first, get_dataset("mnist1d", num_samples=600, seed=5))
    monkeypatch.undo()
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "cache"))
    for junk in (b"", b"not a torch file", entry.read_bytes()[:100]):
        entry.write_bytes(junk)
        assert equal_bundles(first, get_dataset("mnist1d", num_samples=600, seed=5))
        assert torch.load(entry, weights_only=True)["key"]["args"]["seed"] == 5
    # Different arguments are a different entry.
    get_dataset("mnist1d", num_samples=600, seed=6)
    assert len(list(entry.parent.glob("*.pt"))) == 2


# -- digits, synthetic ---------------------------------------------------------------------------------


def test_digits_split_is_stratified_and_scaled():
    b = get_dataset("digits")
    assert (len(b.x_train), len(b.x_test)) == (1437, 360)
    assert float(b.x_train.min()) == 0.0 and float(b.x_train.max()) == 1.0
    counts = torch.bincount(b.y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    flat = get_dataset("digits", flat=True)
    assert torch.equal(flat.x_train, b.x_train.flatten(1))


def test_synthetic_teacher_labels_are_learnable_and_regression_noise_only_on_train():
    c = get_dataset("synthetic", n_train=400, n_test=400, num_classes=4)
    assert set(c.y_train.tolist()) == {0, 1, 2, 3}
    clean = get_dataset("synthetic", task="regression", n_train=50, n_test=50)
    noisy = get_dataset("synthetic", task="regression", n_train=50, n_test=50, noise=0.5)
    assert torch.equal(clean.x_train, noisy.x_train) and torch.equal(clean.y_test, noisy.y_test)
    assert 0.3 < float((noisy.y_train - clean.y_train).std()) < 0.7
    multi = get_dataset("synthetic", task="regression", n_train=8, n_test=8, num_outputs=3)
    assert multi.y_train.shape == (8, 3) and multi.num_outputs == 3
    with pytest.raises(ValueError, match="noise"):
        get_dataset("synthetic", task="regression", label_noise=0.1)


# -- label noise --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [("digits", {}), ("synthetic", {"n_train": 333, "n_test": 50}),
                                          ("synthetic_text", {"n_train": 200, "n_test": 20, "num_classes": 3})])
@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.5])
def test_symmetric_label_noise(name, kwargs, fraction):
    clean = get_dataset(name, **kwargs)
    noisy = get_dataset(name, **kwargs, label_noise=fraction)
    assert noisy.kwargs["label_noise"] == fraction
    assert torch.equal(clean.x_train, noisy.x_train) and torch.equal(clean.y_test, noisy.y_test)
    changed = (clean.y_train != noisy.y_train).nonzero().flatten()
    assert len(changed) == round(fraction * len(clean.y_train))  # exact, and every flip is to another class
    if fraction:
        info = noisy.info["label_noise"]
        assert torch.equal(info["flipped"], changed) and torch.equal(info["clean_y_train"], clean.y_train)
        assert info["fraction"] == fraction
        assert equal_bundles(noisy, get_dataset(name, **noisy.kwargs))
    else:
        assert "label_noise" not in noisy.info


def test_label_noise_targets_are_uniform_over_other_classes():
    from landscape.data.noise import symmetric_label_noise

    y = torch.zeros(30000, dtype=torch.int64)
    noisy, flipped = symmetric_label_noise(y, 0.5, 4, torch.Generator().manual_seed(0))
    assert len(flipped) == 15000 and int((noisy[flipped] == 0).sum()) == 0
    counts = torch.bincount(noisy[flipped], minlength=4)[1:].float()
    assert float((counts / 5000 - 1).abs().max()) < 0.05


# -- CIFAR, MNIST idx -------------------------------------------------------------------------------


def test_cifar10_reads_batches_and_standardizes(tmp_path):
    root = write_cifar10(tmp_path / "py3", per_batch=3, n_test=4)
    b = get_dataset("cifar10", root=str(root))
    raw = [pickle.loads((root / f"data_batch_{i}").read_bytes()) for i in range(1, 6)]
    x = np.concatenate([r["data"] for r in raw]).reshape(-1, 3, 32, 32) / 255.0
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    assert np.allclose(b.kwargs["mean"], mean) and np.allclose(b.kwargs["std"], std)
    torch.testing.assert_close(b.x_train, torch.from_numpy((x - mean[:, None, None]) / std[:, None, None]).float())
    assert b.y_train.tolist() == sum((r["labels"] for r in raw), [])
    assert (b.kwargs["n_train"], b.kwargs["n_test"], b.num_classes) == (15, 4, 10)
    assert b.augment is not None
    # Python 2 style (bytes keys), in the cifar-10-batches-py subfolder, any pickle protocol.
    for protocol in (2, 4, 5):
        sub = write_cifar10(tmp_path / f"p{protocol}" / "cifar-10-batches-py", per_batch=3, n_test=4,
                            bytes_keys=True, protocol=protocol)
        c = get_dataset("cifar10", root=str(sub.parent))
        assert torch.equal(c.x_train, b.x_train) and torch.equal(c.y_test, b.y_test)
    sub_b = get_dataset("cifar10", root=str(root), n_train=5, n_test=2, seed=1, augment=False)
    assert len(sub_b.x_train) == 5 and sub_b.augment is None and sub_b.kwargs["mean"] == b.kwargs["mean"]
    rows = [int((b.x_train == r).all(dim=(1, 2, 3)).nonzero()) for r in sub_b.x_train]
    assert rows == sorted(rows) and torch.equal(sub_b.y_train, b.y_train[rows])
    fixed = get_dataset("cifar10", root=str(root), mean=[0.5, 0.5, 0.5], std=0.25)
    assert fixed.kwargs["std"] == [0.25] * 3 and float(fixed.x_train.max()) <= 2.0


def test_cifar100_fine_and_coarse(tmp_path):
    root = write_cifar100(tmp_path)
    fine, coarse = get_dataset("cifar100", root=str(root)), get_dataset("cifar100", root=str(root), labels="coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    assert torch.equal(coarse.y_train, fine.y_train // 5) and torch.equal(fine.x_train, coarse.x_train)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path, capsys):
    root = write_cifar10(tmp_path / "c")
    (root / "data_batch_3").write_bytes(pickle.dumps({"data": Evil(), "labels": [0]}))
    with pytest.raises(ValueError, match="refused to unpickle.*builtins.print is not allowed") as e:
        get_dataset("cifar10", root=str(root))
    assert "\n" not in str(e.value)
    assert "pwned" not in capsys.readouterr().out
    (root / "data_batch_3").write_bytes(pickle.dumps(np.array([Evil()], dtype=object)))
    with pytest.raises(ValueError, match="refused"):
        get_dataset("cifar10", root=str(root))
    (root / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match="not a CIFAR python batch"):
        get_dataset("cifar10", root=str(root))
    (root / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(ValueError, match="not a readable pickle"):
        get_dataset("cifar10", root=str(root))
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_raw_and_gzip(tmp_path, gz):
    root = write_mnist(tmp_path / "m", gz=gz)
    b = get_dataset("mnist", root=str(root), augment=True)
    import gzip

    read = (lambda p: gzip.decompress(p.read_bytes())) if gz else (lambda p: p.read_bytes())
    suffix = ".gz" if gz else ""
    images = np.frombuffer(read(root / f"train-images-idx3-ubyte{suffix}"), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(read(root / f"train-labels-idx1-ubyte{suffix}"), np.uint8, offset=8)
    assert b.x_train.shape == (20, 1, 28, 28) and b.y_train.tolist() == labels.tolist()
    (m,), (s,) = b.kwargs["mean"], b.kwargs["std"]
    torch.testing.assert_close(b.x_train[:, 0], torch.from_numpy((images / 255.0 - m) / s).float())
    assert b.augment is not None and b.augment.flip is False


def test_mnist_bad_idx_is_one_line(tmp_path):
    root = write_mnist(tmp_path / "m")
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09" + b"\x01" * 3)
    with pytest.raises(ValueError, match="header says 9"):
        get_dataset("mnist", root=str(root))
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ValueError, match="not an idx file"):
        get_dataset("mnist", root=str(root))
    gz = write_mnist(tmp_path / "g", gz=True) / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gz.read_bytes())
    raw[10] ^= 0xFF  # a broken deflate stream (zlib.error, neither OSError nor EOFError)
    gz.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt gzip"):
        get_dataset("mnist", root=str(tmp_path / "g"))


def test_cifar_label_beyond_int64_is_one_line(tmp_path):
    root = write_cifar10(tmp_path / "c")
    (root / "data_batch_3").write_bytes(pickle.dumps({"data": np.zeros((2, 3 * 32 * 32), np.uint8),
                                                      "labels": [0, 2**70]}))
    with pytest.raises(ValueError, match="not a CIFAR python batch"):
        get_dataset("cifar10", root=str(root))


# -- text -----------------------------------------------------------------------------------------------


def test_text_lm_word_level_vocab_from_train_only(tmp_path):
    tr, te = tmp_path / "train.txt", tmp_path / "test.txt"
    tr.write_text("a b c a b\nc a b\n" * 4)
    te.write_text("a zebra c\n" * 3)
    b = get_dataset("text_lm", train_path=str(tr), test_path=str(te), seq_len=4)
    vocab = b.info["vocab"]
    assert vocab[0] == "<unk>" and set(vocab) == {"<unk>", "a", "b", "c", "<eos>"} and b.vocab_size == 5
    decoded = [vocab[i] for i in torch.cat([b.x_test[0], b.y_test[0, -1:]]).tolist()]
    assert decoded == ["a", "<unk>", "c", "<eos>", "a"]
    first = [vocab[i] for i in b.x_train[0].tolist()]
    assert first == ["a", "b", "c", "a"]
    same = get_dataset("text_lm", path=str(tmp_path), seq_len=4)  # a directory with train.txt/test.txt
    assert torch.equal(same.x_train, b.x_train) and torch.equal(same.y_test, b.y_test)
    capped = get_dataset("text_lm", train_path=str(tr), test_path=str(te), seq_len=4, max_vocab=3)
    assert capped.vocab_size == 3 and capped.info["vocab"] == ["<unk>", "a", "b"]


def test_text_lm_char_level_single_file_split(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("abcdefghij" * 10)
    b = get_dataset("text_lm", path=str(f), level="char", seq_len=5, test_fraction=0.2)
    assert b.info["train_tokens"] == 80 and b.info["test_tokens"] == 20
    assert b.x_train.shape == (15, 5) and b.x_test.shape == (3, 5)
    vocab = b.info["vocab"]
    assert "".join(vocab[i] for i in b.x_train[0].tolist()) == "abcde"


def test_text_classification_tsv_and_imdb(tmp_path):
    tsv = write_tsv(tmp_path / "r.tsv", n=50)
    b = get_dataset("text_classification", path=str(tsv), seq_len=12)
    assert b.info["classes"] == ["neg", "pos"] and b.num_classes == 2 and b.vocab_size == len(b.info["vocab"])
    assert (len(b.x_train), len(b.x_test)) == (40, 10)
    vocab = b.info["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and (b.x_train[:, -1] == 0).all()  # short texts are right-padded
    great = vocab.index("great")
    assert all((x == great).any() == (y == 1) for x, y in zip(b.x_train, b.y_train))
    (tmp_path / "train.tsv").write_text("1\tgood stuff\n0\tbad stuff\n2\tmeh\n")
    (tmp_path / "test.tsv").write_text("1\tgood new\n2\tmeh\n")
    t = get_dataset("text_classification", train_path=str(tmp_path / "train.tsv"),
                    test_path=str(tmp_path / "test.tsv"), seq_len=3)
    assert t.info["classes"] == ["0", "1", "2"] and t.y_test.tolist() == [1, 2]
    assert t.x_test[0].tolist() == [vocab_id(t, "good"), 1, 0]  # "new" is unknown
    imdb = get_dataset("text_classification", path=str(write_imdb(tmp_path / "aclImdb", per_class=3)), seq_len=20)
    assert imdb.y_train.tolist() == [0, 0, 0, 1, 1, 1] and imdb.info["classes"] == ["neg", "pos"]
    assert "br" not in imdb.info["vocab"] and "good" in imdb.info["vocab"]
    (tmp_path / "bad.tsv").write_text("pos\tfine\nno tab here\n")
    with pytest.raises(ValueError, match=r"bad.tsv:2: expected 'label<TAB>text'"):
        get_dataset("text_classification", path=str(tmp_path / "bad.tsv"))
    (tmp_path / "test.tsv").write_text("7\tgood\n")
    with pytest.raises(ValueError, match="do not occur in the training split"):
        get_dataset("text_classification", train_path=str(tmp_path / "train.tsv"),
                    test_path=str(tmp_path / "test.tsv"))


def vocab_id(b: DataBundle, token: str) -> int:
    return b.info["vocab"].index(token)


def test_synthetic_text_keywords_carry_the_class():
    b = get_dataset("synthetic_text", n_train=100, n_test=10, num_classes=3, keywords_per_class=2,
                    keywords_per_text=2, vocab_size=30)
    kw = b.x_train[(b.x_train >= 1) & (b.x_train <= 6)]
    assert len(kw) >= 100  # keywords may repeat a position's draw but at least one per text
    for x, y in zip(b.x_train, b.y_train):
        keys = x[(x >= 1) & (x <= 6)]
        assert len(keys) >= 1 and ((keys - 1) // 2 == y).all()


# -- the CLI -------------------------------------------------------------------------------------------


def test_cli_missing_data_path_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "landscape", "train", "--data", "cifar10", "--data-arg",
                        "root=/nonexistent", "--model", "mlp", "--epochs", "1", "--quiet", "--out",
                        str(tmp_path / "x.pt")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("landscape: error: cifar10: root /nonexistent does not exist")


@pytest.mark.parametrize("args, match", [
    (["--data", "digits", "--data-arg", "bogus=1"], "has no argument bogus"),
    (["--data", "nope"], "unknown dataset 'nope'"),
    (["--data", "mnist", "--data-arg", "root=."], "no train-images-idx3-ubyte"),
    (["--data", "text_lm", "--data-arg", "path=/nonexistent.txt"], "does not exist"),
    (["--data", "digits", "--model", "mlp", "--model-arg", "bogus=1"], "model 'mlp' has no argument bogus"),
])
def test_cli_data_errors(tmp_path, capsys, args, match):
    assert main(["train", *args, "--epochs", "1", "--quiet", "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("landscape: error: ") and err.count("\n") == 1 and match in err, err
