"""Where the key passphrase comes from: the setting, a file, systemd's credentials, or nowhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import UsageError
from service.home import read_passphrase
from service.settings import Settings


def test_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    secret = tmp_path / "passphrase"
    secret.write_text("from a mounted secret\n")
    assert read_passphrase(Settings(passphrase="from the environment"), confirm=False) == (
        "from the environment"
    )
    assert read_passphrase(Settings(passphrase_file=secret), confirm=False) == (
        "from a mounted secret"
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_passphrase(Settings(), confirm=False) == "from a mounted secret"
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(UsageError, match="ENTENTE_PASSPHRASE_FILE"):
        read_passphrase(Settings(), confirm=False)
    with pytest.raises(UsageError, match="cannot read the passphrase file"):
        read_passphrase(Settings(passphrase_file=tmp_path / "missing"), confirm=False)
    (tmp_path / "short").write_text("short")
    with pytest.raises(UsageError, match="at least 8"):
        read_passphrase(Settings(passphrase_file=tmp_path / "short"), confirm=False)
