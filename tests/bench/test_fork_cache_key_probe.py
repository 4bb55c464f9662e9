"""bench/fork_cache_key_probe.py on CPU, where a child forked from a server started as the fork server starts one
computes the same FX graph keys as a fresh process (the GPU is where they once differed): every run after the first
hits its entries, the candidate fix's run included, and the probe says which caches that run emptied."""

import functools
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import fork_cache_key_probe as probe  # noqa: E402


def test_clear_library_caches_empties_filled_caches_of_the_named_libraries(monkeypatch):
    lib = types.ModuleType("fakelib.codecache")

    @functools.cache
    def key():
        return 1

    class CacheBase:
        @staticmethod
        @functools.cache
        def get_system():
            return {}

    @functools.cache
    def unused():
        return 2

    key.__module__ = CacheBase.__module__ = lib.__name__
    lib.key, lib.CacheBase, lib.unused = key, CacheBase, unused
    monkeypatch.setitem(sys.modules, lib.__name__, lib)
    key(), CacheBase.get_system()
    assert probe.clear_library_caches(("fakelib",)) == ["fakelib.codecache.CacheBase.get_system",
                                                         "fakelib.codecache.key"]  # filled ones only
    assert key.cache_info().currsize == 0 and CacheBase.get_system.cache_info().currsize == 0


@pytest.mark.slow
def test_on_cpu_forked_and_fresh_processes_share_their_compiled_graphs(tmp_path):
    """With CXX set to the compiler's full path, as the H100 image sets it: Inductor reads CXX into its config at
    import, so a fork server started without it forked trainers whose keys missed every fresh trainer's entries."""
    cxx = shutil.which("g++") or shutil.which("c++")
    assert cxx, "Inductor's CPU backend needs a C++ compiler"
    env = {**os.environ, "CXX": os.path.realpath(cxx)}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "fork_cache_key_probe.py"), "--work", str(tmp_path / "w"),
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "fork_cache_key_probe.json").read_text())
    runs = {r["tag"]: r["counters"] for r in result["runs"]}
    assert list(runs) == ["fresh", "forked", "fresh-again", "forked-cleared"]
    assert runs["fresh"].get("inductor.fxgraph_cache_miss", 0) > 0
    for tag in ("forked", "fresh-again", "forked-cleared"):
        assert runs[tag].get("inductor.fxgraph_cache_hit", 0) > 0 and "inductor.fxgraph_cache_miss" not in runs[tag]
    assert all(v == "hit: none" for v in result["differ"].values())
    assert result["runs"][-1]["cleared"]  # the server's preload filled some (triton's key among them)
