"""``tou key gen|pub|secret``."""

from __future__ import annotations

import os

from click.testing import CliRunner

from toucli.cli import main
from toucli.keys import PrivateKey, PublicKey


def test_gen_writes_0600_and_prints_the_public_key(tmp_path) -> None:
    path = tmp_path / "k"
    result = CliRunner().invoke(main, ["key", "gen", "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert os.stat(path).st_mode & 0o777 == 0o600
    pub = PublicKey.parse(result.stdout.strip())
    assert PrivateKey.load(path).public == pub
    assert f"private key written to {path}" in result.stderr


def test_gen_refuses_to_overwrite(tmp_path) -> None:
    path = tmp_path / "k"
    path.write_text("precious")
    result = CliRunner().invoke(main, ["key", "gen", "--output", str(path)])
    assert result.exit_code == 1
    assert "already exists; not overwriting it" in result.output
    assert path.read_text() == "precious"


def test_gen_default_location(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["key", "gen"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "tou" / "key").exists()
    assert os.stat(tmp_path / "tou").st_mode & 0o777 == 0o700
    pub = CliRunner().invoke(main, ["key", "pub"])
    assert pub.exit_code == 0 and pub.stdout == result.stdout


def test_pub_from_file_and_stdin(tmp_path) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "k"
    key.save(path)
    result = CliRunner().invoke(main, ["key", "pub", str(path)])
    assert result.exit_code == 0 and result.stdout == key.public.text() + "\n"
    result = CliRunner().invoke(main, ["key", "pub", "-"], input=key.pem())
    assert result.exit_code == 0 and result.stdout == key.public.text() + "\n"


def test_pub_refuses_unsafe_permissions(tmp_path) -> None:
    path = tmp_path / "k"
    PrivateKey.generate().save(path)
    os.chmod(path, 0o604)
    result = CliRunner().invoke(main, ["key", "pub", str(path)])
    assert result.exit_code == 1
    assert f"{path} is accessible by others (mode 0604); run: chmod 600 {path}" in result.output


def test_secret_is_256_random_bits() -> None:
    a = CliRunner().invoke(main, ["key", "secret"])
    b = CliRunner().invoke(main, ["key", "secret"])
    assert a.exit_code == 0 and len(a.stdout.strip()) == 43 and a.stdout != b.stdout
