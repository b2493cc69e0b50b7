"""Process settings the CLI applies: malloc keeps freed temporaries for reuse."""

from __future__ import annotations

import ctypes
import sys

import pytest

from optimizer import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_keep_freed_memory_applies_on_glibc_and_respects_user_tuning(monkeypatch):
    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    for key in [k for k in runtime.os.environ if k.startswith("MALLOC_")] + ["GLIBC_TUNABLES"]:
        monkeypatch.delenv(key, raising=False)
    assert runtime.keep_freed_memory()
    assert calls == [(-3, runtime.MMAP_THRESHOLD), (-1, runtime.TRIM_THRESHOLD)]
    calls.clear()
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    assert not runtime.keep_freed_memory() and not calls
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not runtime.keep_freed_memory() and not calls


def test_the_cli_applies_it_before_running_a_command(monkeypatch):
    from optimizer import cli

    applied = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: applied.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert applied == [1]
