"""Shared helpers for recipetune's own tests (fixtures for plugin authors live in recipetune.testing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``recipe ARGS`` in a subprocess (the installed console script's module)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "recipetune", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A saved tiny tokenizer (``recipetune.testing.make_tokenizer``), one per test module."""
    from recipetune.testing import make_tokenizer

    path = tmp_path_factory.mktemp("tok") / "tokenizer"
    make_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tok(tokenizer_dir):
    """The tiny tokenizer loaded fresh from ``tokenizer_dir`` for each test."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A formatted-data cache of the test's own (``pytestmark = pytest.mark.usefixtures("private_cache")``)."""
    monkeypatch.setenv("RECIPETUNE_CACHE", str(tmp_path / "cache"))
