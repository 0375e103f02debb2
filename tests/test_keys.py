"""Key pairs, text formats, authorized keys, known peers, shared secrets, file permissions."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from toucli import keys
from toucli.keys import (AuthorizedKeys, KeyFileError, KnownPeers, PrivateKey, PublicKey, SharedSecret,
                         generate_secret, load_shared_secret, secret_weakness, stretch_secret)

KEY = PrivateKey.generate()
OTHER = PrivateKey.generate()


def test_public_key_text_roundtrip_and_fingerprint() -> None:
    text = KEY.public.text()
    kind, b64 = text.split(" ")
    assert kind == "tou-p256" and len(base64.b64decode(b64)) == 33 and len(text) == 9 + 44
    assert PublicKey.parse("  " + text + "\n") == KEY.public
    fp = KEY.public.fingerprint()
    assert fp == "SHA256:" + base64.b64encode(hashlib.sha256(KEY.public.raw).digest()).decode().rstrip("=")
    assert KEY.public != OTHER.public and len({KEY.public, PublicKey.parse(text)}) == 1


@pytest.mark.parametrize("text", ["", "tou-p256", "ssh-ed25519 AAAA", "tou-p256 !!!!",
                                  "tou-p256 " + base64.b64encode(bytes(33)).decode(),
                                  "tou-p256 " + base64.b64encode(bytes(10)).decode()])
def test_bad_public_keys(text: str) -> None:
    with pytest.raises(KeyFileError):
        PublicKey.parse(text)


def test_private_key_file_is_0600_and_never_overwritten(tmp_path) -> None:
    path = tmp_path / "key"
    KEY.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert PrivateKey.load(path).public == KEY.public
    with pytest.raises(KeyFileError, match="already exists"):
        OTHER.save(path)
    assert PrivateKey.load(path).public == KEY.public


def test_private_key_readable_by_others_is_refused(tmp_path) -> None:
    path = tmp_path / "key"
    KEY.save(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError) as err:
        PrivateKey.load(path)
    assert str(err.value) == f"{path} is accessible by others (mode 0644); run: chmod 600 {path}"


def test_garbage_private_key(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_text("hello")
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match="not a tou private key"):
        PrivateKey.load(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        PrivateKey.load(tmp_path / "missing")


def test_certificate_carries_the_key() -> None:
    cert = KEY.certificate()
    assert PublicKey.from_cryptography(cert.public_key()) == KEY.public


def test_authorized_keys() -> None:
    text = f"# servers' friends\n\n{KEY.public.text()} laptop of ann\n{OTHER.public.text()}\n"
    auth = AuthorizedKeys.parse(text)
    assert len(auth) == 2
    assert auth.lookup(KEY.public) == "laptop of ann"
    assert auth.lookup(OTHER.public) == ""
    assert auth.lookup(PrivateKey.generate().public) is None
    with pytest.raises(KeyFileError, match="line 2"):
        AuthorizedKeys.parse(f"{KEY.public.text()}\nnot a key\n", "auth")


def test_known_peers() -> None:
    peers = KnownPeers.parse(f"example.org:7000 {KEY.public.text()}\n"
                             f"Example.net {OTHER.public.text()} work box\n"
                             f"[2001:db8::1]:6080 {KEY.public.text()}\n")
    assert peers.lookup("example.org", 7000) == KEY.public
    assert peers.lookup("example.org", 6080) is None
    assert peers.lookup("example.net", 6080) == OTHER.public
    assert peers.lookup("2001:db8::1", 6080) == KEY.public
    with pytest.raises(KeyFileError, match="line 1"):
        KnownPeers.parse("host-without-key\n")


def test_secret_stretching_is_deterministic_scrypt() -> None:
    a = stretch_secret(b"s3cret", n=1024)
    assert a == stretch_secret(b"s3cret", n=1024) != stretch_secret(b"s3cret!", n=1024)
    assert a == hashlib.scrypt(b"s3cret", salt=b"tou shared secret v1", n=1024, r=8, p=1, dklen=32)
    assert SharedSecret(b"  s3cret\n", n=1024).key == a


def test_weak_secret_warning() -> None:
    assert secret_weakness(b"hunter2") is not None
    assert secret_weakness(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") is not None
    assert "tou key secret" in secret_weakness(b"password")
    assert secret_weakness(generate_secret().encode()) is None
    assert SharedSecret(b"hunter2", n=1024).warning is not None


def test_generate_secret_uses_the_rng() -> None:
    s = generate_secret(lambda n: bytes(range(n)))
    assert s == base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=") and len(s) == 43


def test_load_shared_secret(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(keys, "SCRYPT_N", 1024)
    assert load_shared_secret(None, {}) is None
    from_env = load_shared_secret(None, {"TOU_SECRET": "x" * 10})
    assert from_env is not None and from_env.warning is not None
    path = tmp_path / "secret"
    path.write_text(generate_secret() + "\n")
    os.chmod(path, 0o600)
    from_file = load_shared_secret(path, {"TOU_SECRET": "ignored"})
    assert from_file is not None and from_file.warning is None
    os.chmod(path, 0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_shared_secret(path)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(KeyFileError, match="empty"):
        load_shared_secret(empty)
