"""The modded-nanogpt GPU study's data builder (bench/public/mng_data.py) on small
shards written by trainer.shards: short documents joined, long ones cut, every train file starting at a document, the
manifest."""
import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

from trainer.shards import load_shard, write_shard

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench/public/mng_data.py"
BOS = 50256


def _module():
    spec = importlib.util.spec_from_file_location("mng_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs(lengths, start=1):
    out = []
    for i, n in enumerate(lengths):
        out += [BOS] + [start + (i * 7 + j) % 1000 for j in range(n - 1)]
    return np.array(out, dtype=np.int64)


def test_short_documents_are_joined_and_long_ones_kept():
    join = _module().join_short_documents
    tokens = _docs([600, 10, 20, 700, 5, 5, 5, 900])
    joined = join(tokens, 512)
    starts = np.flatnonzero(joined == BOS)
    lengths = np.diff(np.append(starts, joined.size))
    # 600 stays; 10 + 20 + 700 join the run that began at 10 (it reached 512 only with the 700); 5+5+5+900 likewise
    assert lengths.tolist() == [600, 10 + 19 + 699, 5 + 4 + 4 + 899]
    assert joined.size == tokens.size - 5  # only the five dropped BOS tokens are gone
    assert (joined[joined != BOS] == tokens[tokens != BOS]).all()  # the text itself, in order


def test_long_documents_are_cut_so_every_token_is_reachable():
    """The script starts each sequence at a BOS and cuts it at the stage's max length, skipping the rest of the
    document: pieces of at most --max-doc-tokens tokens leave nothing unreachable, and keep the text in order."""
    module = _module()
    tokens = _docs([600, 3000, 896, 897, 2])
    assert module.reachable_tokens(tokens, 896) == 600 + 896 + 896 + 896 + 2  # before: most of the 3000 is lost
    cut = module.split_long_documents(tokens, 896)
    starts = np.flatnonzero(cut == BOS)
    lengths = np.diff(np.append(starts, cut.size)).tolist()
    assert lengths == [600, 896, 896, 896, 315, 896, 896, 2, 2]  # 3000 = 1 + 3 x 895 + 314 text tokens, ...
    assert max(lengths) <= 896 and module.reachable_tokens(cut, 896) == cut.size
    assert (cut[cut != BOS] == tokens[tokens != BOS]).all()


def test_layout_shards_and_manifest(tmp_path):
    src, out = tmp_path / "gpt2", tmp_path / "fineweb10B"
    rng = np.random.default_rng(0)
    write_shard(str(src / "corpus_train_000001.bin"), _docs(rng.integers(20, 900, size=300).tolist()))
    write_shard(str(src / "corpus_val_000000.bin"), _docs(rng.integers(20, 900, size=40).tolist()))
    p = subprocess.run([sys.executable, str(SCRIPT), "--src", str(src), "--out", str(out), "--train-shards", "3"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    names = sorted(f.name for f in out.glob("*.bin"))
    assert names == ["fineweb_train_000001.bin", "fineweb_train_000002.bin", "fineweb_train_000003.bin",
                     "fineweb_val_000000.bin"]
    for name in names:
        tokens = load_shard(str(out / name))
        assert tokens[0] == BOS  # each file starts at a document (the script's loader aligns to them)
    manifest = dict(reversed(line.split("  ")) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sorted(manifest) == names
    assert all(manifest[n] == hashlib.sha256((out / n).read_bytes()).hexdigest() for n in names)
