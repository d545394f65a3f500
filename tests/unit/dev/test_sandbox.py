"""The ``sts dev`` state file (sts.dev.sandbox): it holds the sandbox issuer's private key in a
predictable place (``/tmp`` or ``$XDG_RUNTIME_DIR``), so nothing another user planted there, a
world-readable file or a symlink, may receive it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from sts.dev.sandbox import STATE_VARIABLE, _read_state, _write_state, state_path

SECRET = "-----BEGIN PRIVATE KEY-----\nthe sandbox issuer's key\n-----END PRIVATE KEY-----\n"
NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant a file of another user")


def state() -> dict[str, Any]:
    return {"pid": os.getpid(), "url": "http://127.0.0.1:8000", "private_key_pem": SECRET}


def write(path: Path) -> click.ClickException | None:
    """``_write_state``; its refusal, if it refuses (any other failure is the test's)."""
    try:
        _write_state(path, state())
    except click.ClickException as refused:
        return refused
    return None


def assert_ours_and_private(path: Path) -> None:
    info = os.lstat(path)
    assert stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert info.st_nlink == 1
    assert json.loads(path.read_text()) == state()


def assert_one_line(refused: click.ClickException, path: Path) -> None:
    assert "\n" not in refused.message
    assert str(path) in refused.message


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask of 0: the mode must come from the code, not from the user's umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "zuplo-sts-dev.json"


def test_the_state_path_is_the_variable_when_set(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STATE_VARIABLE, str(path))
    assert state_path() == path


@pytest.mark.usefixtures("permissive_umask")
def test_a_new_state_file_is_0600_and_ours(path: Path) -> None:
    assert write(path) is None
    assert_ours_and_private(path)
    assert _read_state(path) == state()


@pytest.mark.usefixtures("permissive_umask")
def test_a_stale_file_of_ours_is_replaced_not_written_into(path: Path) -> None:
    """A sandbox that died left its file, world-readable (say, copied with another mode): it is
    removed and a new 0600 file made; whoever held the old one open reads nothing."""
    path.write_text('{"pid": 1}')
    path.chmod(0o666)
    with open(path) as holder:
        assert write(path) is None
        assert holder.read() == '{"pid": 1}'
    assert_ours_and_private(path)


@pytest.mark.usefixtures("permissive_umask")
@pytest.mark.parametrize("suffix", ["", ".tmp"])
def test_a_planted_world_readable_file_never_receives_the_key(path: Path, suffix: str) -> None:
    """Another user created a 0666 file at the state path (or the name next to it) and keeps it
    open: the write is refused or goes to a new 0600 file, never into theirs."""
    planted = path.with_name(path.name + suffix)
    planted.write_text("")
    planted.chmod(0o666)
    if os.geteuid() == 0:
        os.chown(planted, NOBODY, NOBODY)
    with open(planted) as attacker:
        refused = write(path)
        assert attacker.read() == ""
    assert planted.read_text() in {"", json.dumps(state())}
    if refused is None:
        assert_ours_and_private(path)
    else:
        assert_one_line(refused, path)


@pytest.mark.usefixtures("permissive_umask")
@pytest.mark.parametrize("suffix", ["", ".tmp"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_planted_symlink_is_never_followed(
    path: Path, tmp_path: Path, suffix: str, dangling: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "target"
    if not dangling:
        target.write_text("untouched")
        target.chmod(0o644)
    link = path.with_name(path.name + suffix)
    link.symlink_to(target)
    refused = write(path)
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "untouched"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
    if refused is None:
        assert_ours_and_private(path)
    else:
        assert_one_line(refused, path)
        assert link.is_symlink()  # left for the user to look at


def test_a_symlink_at_the_state_path_is_refused(path: Path, tmp_path: Path) -> None:
    (tmp_path / "target").write_text("untouched")
    path.symlink_to(tmp_path / "target")
    refused = write(path)
    assert refused is not None
    assert_one_line(refused, path)
    assert "symlink" in refused.message
    assert (tmp_path / "target").read_text() == "untouched"


@as_root
def test_a_file_of_another_user_at_the_state_path_is_refused(path: Path) -> None:
    path.write_text("theirs")
    path.chmod(0o644)
    os.chown(path, NOBODY, NOBODY)
    refused = write(path)
    assert refused is not None
    assert_one_line(refused, path)
    assert "another user" in refused.message
    assert path.read_text() == "theirs"
    assert os.lstat(path).st_uid == NOBODY


def test_a_directory_at_the_state_path_is_refused(path: Path) -> None:
    path.mkdir()
    refused = write(path)
    assert refused is not None
    assert_one_line(refused, path)
    assert path.is_dir()


def test_a_file_that_is_not_private_once_open_receives_nothing(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check after opening: if the descriptor is not a 0600 regular file of ours (a file
    system that ignores the mode, say), nothing is written and nothing is left."""
    real_fstat = os.fstat

    def loose(descriptor: int) -> os.stat_result:
        info = list(real_fstat(descriptor))
        info[stat.ST_MODE] = stat.S_IFREG | 0o644
        return os.stat_result(info)

    monkeypatch.setattr(os, "fstat", loose)
    refused = write(path)
    monkeypatch.undo()
    assert refused is not None
    assert_one_line(refused, path)
    assert not path.exists()


@as_root
def test_a_state_file_of_another_user_is_not_read(path: Path) -> None:
    """``sts dev token`` signs with the key it finds: only with one this user's sandbox wrote."""
    path.write_text(json.dumps(state()))
    os.chown(path, NOBODY, NOBODY)
    assert _read_state(path) is None


def test_a_state_file_behind_a_symlink_is_not_read(path: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text(json.dumps(state()))
    path.symlink_to(real)
    assert _read_state(path) is None
