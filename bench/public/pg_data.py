"""parameter-golf-format data from the project's own GPT-2 token shards (no FineWeb, no network).

Owns: turning the shards of `python -m trainer.data prepare` (GPT-2 tokens, BOS 50256 before every document)
into the layout parameter-golf's public train_gpt.py reads by default:

  OUT/tokenizers/fineweb_1024_bpe.model               a SentencePiece BPE model, vocab 1024, byte fallback
  OUT/datasets/fineweb10B_sp1024/fineweb_val_000000.bin     every validation document
  OUT/datasets/fineweb10B_sp1024/fineweb_train_000000.bin   train documents, up to --max-train-tokens
  OUT/meta.json                                        counts, tokenizer options, sha256 of every file
  OUT/SHA256SUMS                                       the same digests as a manifest for orch's data staging

Steps: documents are cut at BOS and decoded to text with the GPT-2 BPE (trainer.corpus.gpt2_encoding, the
gpt2.tiktoken of the openai-whisper sdist that `prepare` fetched); a SentencePiece BPE model (vocab 1024,
byte_fallback, split_digits, nmt_nfkc, no dummy prefix, pad/bos/eos/unk = 0/1/2/3, the options of the
challenge's sp1024 tokenizer) is trained on a seeded sample of --sample-mb of train text; every document is
encoded as [bos] + tokens into shards of the shared format (trainer.shards.write_shard: 256-int32 header, magic
20240520, version 1, uint16 tokens). The names stay "fineweb_*" only because the script globs them.

  python -m trainer.data prepare --out data/gpt2 --val-frac 0.05
  python bench/public/pg_data.py --gpt2-dir data/gpt2 --out data/sp1024    # docs/studies/2026-12-06-parameter-golf-h200
  tar -C data -cf - sp1024 | xz -T2 > .devcarry/pg-sp1024.tar.xz            # to carry to a GPU machine

Needs `sentencepiece` (pip install sentencepiece) and tiktoken.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trainer.corpus import EOT, gpt2_encoding  # noqa: E402
from trainer.shards import load_shard, write_shard  # noqa: E402
from orchestrator.warm.plan import sha256_file  # noqa: E402

VOCAB = 1024
SHARD_TOKENS = 100_000_000  # tokens per train shard, as the challenge's export writes them
SPM_OPTIONS = dict(model_type="bpe", vocab_size=VOCAB, character_coverage=0.999, byte_fallback=True,
                   split_digits=True, normalization_rule_name="nmt_nfkc", add_dummy_prefix=False,
                   pad_id=0, bos_id=1, eos_id=2, unk_id=3, hard_vocab_limit=False)


def _documents(files: list[str], enc) -> list[str]:
    """The documents of GPT-2 shards (each starts at BOS 50256), decoded to text, in file order."""
    docs = []
    for path in files:
        tok = np.asarray(load_shard(path))
        starts = np.flatnonzero(tok == EOT)
        if starts.size == 0 or starts[0] != 0:
            starts = np.concatenate([[0], starts])
        ends = np.append(starts[1:], tok.size)
        for s, e in zip(starts, ends):
            body = tok[s + 1 if tok[s] == EOT else s:e]
            if body.size:
                docs.append(enc.decode(body.tolist()))
    return docs


def _train_tokenizer(docs: list[str], sample_mb: float, seed: int) -> bytes:
    """The serialized model (written to memory, so no temp path ends up in its stored options)."""
    import io

    import sentencepiece as spm

    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    budget, lines = int(sample_mb * 1e6), []
    for i in order:
        for line in docs[i].split("\n"):
            line = line.strip()
            if line:
                lines.append(line)
                budget -= len(line.encode())
        if budget <= 0:
            break
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, num_threads=os.cpu_count() or 2,
                                   max_sentence_length=16384, minloglevel=2, **SPM_OPTIONS)
    return buf.getvalue()


def _encode(sp, docs: list[str], cap: int | None = None) -> np.ndarray:
    """[bos] + tokens of each document, concatenated; with `cap`, stop at that many tokens."""
    bos, parts, total = sp.bos_id(), [], 0
    for i in range(0, len(docs), 512):
        for ids in sp.encode(docs[i:i + 512], out_type=int, num_threads=os.cpu_count() or 2):
            parts.append(np.asarray([bos] + ids, dtype=np.uint16))
            total += len(ids) + 1
        if cap and total >= cap:
            break
    out = np.concatenate(parts)
    return out[:cap] if cap else out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpt2-dir", required=True, help="folder of `python -m trainer.data prepare` (*train*.bin, *val*.bin)")
    p.add_argument("--out", required=True, help="output folder (gets tokenizers/, datasets/, meta.json)")
    p.add_argument("--tiktoken", default=None,
                   help="gpt2.tiktoken (default: the openai-whisper sdist under GPT2_DIR/.work/src)")
    p.add_argument("--max-train-tokens", type=int, default=60_000_000,
                   help="cap on sp1024 train tokens (0: all); the default corpus has about 33M, all of them "
                        "(xz packs them at about 0.6 bytes a token)")
    p.add_argument("--sample-mb", type=float, default=8.0, help="MB of train text the tokenizer is trained on")
    p.add_argument("--seed", type=int, default=1337, help="seed of the tokenizer's text sample")
    a = p.parse_args(argv)

    t0 = time.time()
    train_files = sorted(glob.glob(os.path.join(a.gpt2_dir, "*train*.bin")))
    val_files = sorted(glob.glob(os.path.join(a.gpt2_dir, "*val*.bin")))
    if not train_files or not val_files:
        print(f"pg_data: no *train*.bin / *val*.bin in {a.gpt2_dir}; build them with "
              "`python -m trainer.data prepare --out DIR`", file=sys.stderr)
        return 2
    tk = a.tiktoken or next(iter(sorted(glob.glob(os.path.join(
        a.gpt2_dir, ".work", "src", "pypi", "openai_whisper-*", "whisper", "assets", "gpt2.tiktoken")))), None)
    if not tk:
        print("pg_data: gpt2.tiktoken not found; pass --tiktoken FILE", file=sys.stderr)
        return 2
    enc = gpt2_encoding(tk)
    train_docs, val_docs = _documents(train_files, enc), _documents(val_files, enc)
    print(f"pg_data: {len(train_docs):,} train / {len(val_docs):,} val documents decoded "
          f"({sum(map(len, train_docs)) / 1e6:.1f}M / {sum(map(len, val_docs)) / 1e6:.1f}M chars, "
          f"{time.time() - t0:.0f} s)", flush=True)

    import sentencepiece as spm

    tok_dir = os.path.join(a.out, "tokenizers")
    data_dir = os.path.join(a.out, "datasets", "fineweb10B_sp1024")
    os.makedirs(tok_dir, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    model = os.path.join(tok_dir, "fineweb_1024_bpe.model")
    tmp = model + ".tmp"
    with open(tmp, "wb") as f:
        f.write(_train_tokenizer(train_docs, a.sample_mb, a.seed))
    os.replace(tmp, model)
    sp = spm.SentencePieceProcessor(model_file=model)
    if sp.vocab_size() != VOCAB:
        print(f"pg_data: the tokenizer has {sp.vocab_size()} pieces, not {VOCAB}; raise --sample-mb", file=sys.stderr)
        return 1
    print(f"pg_data: tokenizer trained ({time.time() - t0:.0f} s)", flush=True)

    for f in glob.glob(os.path.join(data_dir, "fineweb_*.bin")):
        os.unlink(f)
    val = _encode(sp, val_docs)
    train = _encode(sp, train_docs, a.max_train_tokens or None)
    files = {os.path.join(data_dir, "fineweb_val_000000.bin"): val}
    for k, i in enumerate(range(0, train.size, SHARD_TOKENS)):
        files[os.path.join(data_dir, f"fineweb_train_{k:06d}.bin")] = train[i:i + SHARD_TOKENS]
    for path, arr in files.items():
        write_shard(path, arr)

    val_bytes = sum(len(d.encode()) for d in val_docs)
    meta = {"source": {"gpt2_dir": os.path.abspath(a.gpt2_dir),
                       "sha256": {os.path.basename(f): sha256_file(f) for f in train_files + val_files}},
            "tokenizer": {**SPM_OPTIONS, "sample_mb": a.sample_mb, "seed": a.seed,
                          "sentencepiece": spm.__version__},
            "train_tokens": int(train.size), "val_tokens": int(val.size),
            "train_docs_available": len(train_docs), "val_docs": len(val_docs),
            "val_utf8_bytes_before_normalization": val_bytes,
            "max_train_tokens": a.max_train_tokens, "sha256": {}}
    for path in [model, *files]:
        meta["sha256"][os.path.relpath(path, a.out)] = sha256_file(path)
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(a.out, "SHA256SUMS"), "w") as f:  # the manifest a study's `trainer.data` names
        f.writelines(f"{digest}  {name}\n" for name, digest in sorted(meta["sha256"].items()))

    print(f"pg_data: {train.size:,} train / {val.size:,} val sp1024 tokens "
          f"(val: {val_bytes / max(val.size, 1):.2f} bytes/token) in {a.out} ({time.time() - t0:.0f} s)")
    for name, digest in meta["sha256"].items():
        print(f"  {digest}  {name}  {os.path.getsize(os.path.join(a.out, name)):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
