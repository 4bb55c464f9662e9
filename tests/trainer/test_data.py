import shutil
import subprocess

import numpy as np
import pytest

from trainer.data import (MAGIC, BatchLoader, DataError, load_shard, read_header, stdlib_bytes_dir,
                          val_rows, write_shard)


def test_roundtrip(tmp_path):
    p = tmp_path / "a_train_000001.bin"
    toks = np.arange(1000) % 50257
    write_shard(str(p), toks)
    raw = np.fromfile(p, dtype="<i4", count=3)
    assert list(raw) == [MAGIC, 1, 1000]
    assert read_header(str(p)) == 1000
    assert np.array_equal(load_shard(str(p)), toks.astype(np.uint16))
    assert p.stat().st_size == 1024 + 2000
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp")]


def test_rejects_wrong_magic_and_truncation(tmp_path):
    p = tmp_path / "s.bin"
    write_shard(str(p), np.arange(100))
    b = bytearray(p.read_bytes())
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x01\x02\x03\x04" + bytes(b[4:]))
    with pytest.raises(DataError, match="magic"):
        read_header(str(bad))
    short = tmp_path / "short.bin"
    short.write_bytes(bytes(b[:-10]))
    with pytest.raises(DataError, match="truncated"):
        read_header(str(short))
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(bytes(b[:100]))
    with pytest.raises(DataError, match="truncated"):
        read_header(str(tiny))
    ver = tmp_path / "ver.bin"
    h = np.frombuffer(bytes(b[:1024]), dtype="<i4").copy()
    h[1] = 7
    ver.write_bytes(h.tobytes() + bytes(b[1024:]))
    with pytest.raises(DataError, match="version"):
        read_header(str(ver))


def test_stdlib_bytes_dataset(data_dir):
    import json
    import os

    d = stdlib_bytes_dir(data_dir)
    meta = json.load(open(os.path.join(d, "meta.json")))
    assert meta["train_tokens"] > 500_000 and meta["val_tokens"] > 20_000
    tr = load_shard(os.path.join(d, "train_000001.bin"))
    assert tr[0] == 0 and tr.max() < 256 and (np.asarray(tr) == 0).sum() == meta["train_docs"]


def test_loader_aligns_to_bos_and_shards_ranks(tmp_path):
    rng = np.random.default_rng(0)
    docs = [np.concatenate([[0], rng.integers(1, 256, rng.integers(3, 15))]) for _ in range(300)]
    toks = np.concatenate(docs)
    f = str(tmp_path / "t_train_000001.bin")
    write_shard(f, toks)
    full = BatchLoader([f], bos_id=0).next_batch(16, 16 * 8)
    assert full.shape == (8, 17) and (full[:, 0] == 0).all()  # every row starts a document
    r0 = BatchLoader([f], bos_id=0, rank=0, world_size=2).next_batch(16, 16 * 8)
    r1 = BatchLoader([f], bos_id=0, rank=1, world_size=2).next_batch(16, 16 * 8)
    assert np.array_equal(np.concatenate([r0, r1]), full)
    ld = BatchLoader([f], bos_id=0)
    for _ in range(200):  # cycles through the shard without error
        b = ld.next_batch(32, 32 * 4)
        assert b.shape == (4, 33)
    # a long document is continued rather than skipped
    long = np.concatenate([[0], np.arange(1, 200), [0], np.arange(1, 10)])
    g = str(tmp_path / "long.bin")
    write_shard(g, long)
    b = BatchLoader([g], bos_id=0).next_batch(16, 64)
    assert b[0, 0] == 0 and b[1, 0] == 16 and b[2, 0] == 32


def test_val_rows_split(tmp_path):
    f = str(tmp_path / "v.bin")
    write_shard(f, np.arange(1000))
    rows = val_rows([f], 256, 32)
    assert rows.shape == (8, 33) and rows[1, 0] == 32 and rows[0, -1] == 32
    a, b = val_rows([f], 256, 32, 0, 2), val_rows([f], 256, 32, 1, 2)
    assert np.array_equal(np.concatenate([a, b]), rows)


def test_two_processes_build_the_tiny_dataset_at_once(tmp_path):
    import subprocess
    import sys

    from _trainer_cli import ROOT

    code = "import sys; from trainer.data import ensure_stdlib_bytes; print(ensure_stdlib_bytes(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    d = outs[0][0].strip()
    assert d == outs[1][0].strip() == stdlib_bytes_dir(str(tmp_path))
    import os

    names = sorted(os.listdir(d))
    assert names == ["meta.json", "train_000001.bin", "val_000000.bin"]  # no temp files left behind
    assert read_header(os.path.join(d, "train_000001.bin")) > 500_000


def test_corpus_text_helpers():
    from trainer.corpus import _prose, html_to_text, rst_to_text

    html = ("<html><head><title>x</title><script>var a=1;</script></head><body><nav>menu</nav>"
            "<h1>Title</h1><p>The quick brown fox jumps over the lazy dog.</p><p>Second &amp; last.</p></body></html>")
    t = html_to_text(html)
    assert "quick brown fox" in t and "Second & last." in t and "var a" not in t and "menu" not in t
    rst = ("Heading\n=======\n\n.. note::\n\n   hidden body\n\nSee :func:`os.path.join` and ``code`` and "
           "`a link <https://x>`_ here.\n\n>>> print(1)\n")
    r = rst_to_text(rst)
    assert "hidden body" not in r and "=======" not in r and ">>>" not in r
    assert "See os.path.join and code and a link here." in r
    assert _prose("This is a plain English sentence.") and not _prose("x = f(1, 2) + g[3]")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian tools)")
def test_corpus_fetch_unpacks_debs_under_a_relative_folder_and_never_keeps_a_failed_unpack(tmp_path, monkeypatch):
    """`trainer.data prepare --out data/gpt2` gives a relative folder; the unpack runs with that folder as its working
    directory, so the paths it is given must not be relative to ours. A package whose unpack fails is not taken for
    unpacked by the next run. The .deb is built here (dpkg-deb), so nothing is downloaded."""
    from trainer.config import ConfigError
    from trainer.corpus import fetch

    pkg = tmp_path / "build" / "mini-doc"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "usr/share/doc/mini-doc").mkdir(parents=True)
    (pkg / "usr/share/doc/mini-doc/README").write_text("a small document\n")
    (pkg / "DEBIAN/control").write_text("Package: mini-doc\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: tests <t@example.org>\nDescription: test package\n")
    debs = tmp_path / "data/gpt2/.work/debs"
    debs.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(debs / "mini-doc_1.0_all.deb")], check=True,
                   capture_output=True)
    (debs / "zbroken-doc_1.0_all.deb").write_bytes(b"not an archive")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="zbroken-doc"):
        fetch(["deb:mini-doc", "deb:zbroken-doc"], "data/gpt2/.work")
    src = tmp_path / "data/gpt2/.work/src"
    assert (src / "mini-doc/usr/share/doc/mini-doc/README").read_text() == "a small document\n"
    assert not (src / "zbroken-doc").exists()
    with pytest.raises(ConfigError, match="zbroken-doc"):  # again: still an error, not skipped as done
        fetch(["deb:mini-doc", "deb:zbroken-doc"], "data/gpt2/.work")
