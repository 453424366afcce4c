"""Atomic writes leave finished files and folders with the permissions the umask gives (issue 15, item 8)."""

from __future__ import annotations

import os
import stat

import pytest

from recipetune import atomic


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_folder_written_atomically_follows_the_umask(tmp_path, umask_022):
    target = tmp_path / "artifacts" / "lora"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "sub").mkdir(mode=0o700)
        fd = os.open(tmp / "sub" / "adapter_model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)  # as a private writer does
        os.write(fd, b"weights")
        os.close(fd)
        (tmp / "README.md").write_text("card")
    assert _mode(target) == 0o755
    assert _mode(target / "sub") == 0o755
    assert _mode(target / "sub" / "adapter_model.safetensors") == 0o644
    assert _mode(target / "README.md") == 0o644


def test_a_file_written_atomically_follows_the_umask(tmp_path, umask_022):
    path = atomic.write_text(tmp_path / "report.md", "x")
    assert _mode(path) == 0o644


def test_a_stricter_umask_is_kept(tmp_path):
    old = os.umask(0o077)
    try:
        target = tmp_path / "merged"
        with atomic.atomic_dir(target) as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert _mode(target) == 0o700
    assert _mode(target / "config.json") == 0o600
