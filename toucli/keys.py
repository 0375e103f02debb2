"""Identities for the secure channel: key pairs, pinned peers and shared secrets.

Key pairs are ECDSA P-256 (FIPS 186-4): OpenSSL's DTLS 1.2 negotiates ECDHE-ECDSA
cipher suites with them everywhere (Ed25519 certificates are refused by its DTLS
1.2 cipher selection). Users never see X.509: a certificate is made in memory
from the key when OpenSSL needs one, and peers are recognised by their public key
alone.

Text formats (documented in docs/PROTOCOL.md §6 and man/tou-key.1):

* public key: ``tou-p256 <base64 of the 33-byte compressed point (SEC 1 §2.3.3)>``;
* fingerprint: ``SHA256:<unpadded base64 of SHA-256 over those 33 bytes>`` (ssh style);
* private key file: PKCS #8 PEM, mode 0600;
* authorized-keys file: one ``tou-p256 KEY [name]`` per line, ``#`` comments;
* known-peers file: one ``HOST[:PORT] tou-p256 KEY [comment]`` per line.

Shared secrets come from ``TOU_SECRET`` or a secret file (never the command line)
and are stretched with scrypt (RFC 7914) before use as an HMAC key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import math
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

KEY_TYPE = "tou-p256"
SECRET_ENV = "TOU_SECRET"

# scrypt (RFC 7914 §2) cost: 32 MiB and roughly 0.1 s per guess on a current CPU.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT = b"tou shared secret v1"
WEAK_SECRET_BITS = 80        # estimated entropy below which a secret is called weak

Rng = Callable[[int], bytes]


class KeyFileError(Exception):
    """A key, secret, authorized-keys or known-peers file is missing, unsafe or malformed.

    The message is one line meant for the user.
    """


class PublicKey:
    """A peer's P-256 public key, compared and hashed by its compressed encoding."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
        except (ValueError, TypeError):
            raise KeyFileError("not a P-256 public key") from None
        self.raw = bytes(raw)

    @classmethod
    def from_cryptography(cls, key: ec.EllipticCurvePublicKey) -> PublicKey:
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise KeyFileError("not a P-256 public key")
        return cls(key.public_bytes(serialization.Encoding.X962,
                                    serialization.PublicFormat.CompressedPoint))

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """Parse ``tou-p256 BASE64`` (surrounding white space allowed)."""
        parts = text.split()
        if len(parts) != 2 or parts[0] != KEY_TYPE:
            raise KeyFileError(f"a public key looks like '{KEY_TYPE} BASE64'")
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except ValueError:
            raise KeyFileError("public key is not valid base64") from None
        if len(raw) != 33:
            raise KeyFileError("public key has the wrong length")
        return cls(raw)

    def text(self) -> str:
        return f"{KEY_TYPE} {base64.b64encode(self.raw).decode()}"

    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.raw).digest()).decode().rstrip("=")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"PublicKey({self.fingerprint()})"


class PrivateKey:
    """A P-256 private key with its public half."""

    __slots__ = ("key", "public")

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self.key = key
        self.public = PublicKey.from_cryptography(key.public_key())

    @classmethod
    def generate(cls) -> PrivateKey:
        # OpenSSL's RNG: key generation is not something tests need to replay.
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, data: bytes) -> PrivateKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyFileError("not a tou private key (PKCS #8 PEM)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise KeyFileError("not a P-256 private key")
        return cls(key)

    def pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivateKey:
        """Read a private key file; refuse one that others may read (like ssh does)."""
        check_private_file(path)
        return cls.from_pem(_read(path))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to a new file with mode 0600; refuse to overwrite."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{path} already exists; not overwriting it") from None
        except OSError as exc:
            raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(self.pem())

    def certificate(self) -> x509.Certificate:
        """A self-signed certificate for OpenSSL; nobody checks anything in it but the key."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tou")])
        return (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name)
                .public_key(self.key.public_key())
                .serial_number(1)
                .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
                .not_valid_after(datetime.datetime(9999, 12, 31, tzinfo=datetime.timezone.utc))
                .sign(self.key, hashes.SHA256()))


def _read(path: str | os.PathLike[str]) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None


def check_private_file(path: str | os.PathLike[str]) -> None:
    """Refuse a secret-bearing file that group or others can read or write."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
                           f"run: chmod 600 {path}")


def _lines(text: str):
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield number, line


class AuthorizedKeys:
    """Client keys a server accepts: ``tou-p256 KEY [name]`` per line."""

    def __init__(self, entries: Mapping[PublicKey, str | None] | None = None) -> None:
        self.entries: dict[PublicKey, str | None] = dict(entries or {})

    @classmethod
    def parse(cls, text: str, source: str = "authorized keys") -> AuthorizedKeys:
        entries: dict[PublicKey, str | None] = {}
        for number, line in _lines(text):
            parts = line.split(None, 2)
            try:
                key = PublicKey.parse(" ".join(parts[:2]))
            except KeyFileError as exc:
                raise KeyFileError(f"{source} line {number}: {exc}") from None
            entries[key] = parts[2] if len(parts) > 2 else None
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> AuthorizedKeys:
        return cls.parse(_read(path).decode("utf-8", "replace"), str(path))

    def lookup(self, key: PublicKey) -> str | None:
        """The key's name ('' if it has none), or None if the key is not authorized."""
        if key not in self.entries:
            return None
        return self.entries[key] or ""

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)


class KnownPeers:
    """Server keys a client pins: ``HOST[:PORT] tou-p256 KEY [comment]`` per line."""

    def __init__(self, entries: Mapping[str, PublicKey] | None = None) -> None:
        self.entries: dict[str, PublicKey] = dict(entries or {})

    @classmethod
    def parse(cls, text: str, source: str = "known peers") -> KnownPeers:
        entries: dict[str, PublicKey] = {}
        for number, line in _lines(text):
            parts = line.split(None, 3)
            if len(parts) < 3:
                raise KeyFileError(f"{source} line {number}: expected 'HOST[:PORT] {KEY_TYPE} KEY'")
            try:
                entries[parts[0].lower()] = PublicKey.parse(" ".join(parts[1:3]))
            except KeyFileError as exc:
                raise KeyFileError(f"{source} line {number}: {exc}") from None
        return cls(entries)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnownPeers:
        return cls.parse(_read(path).decode("utf-8", "replace"), str(path))

    def lookup(self, host: str, port: int | None = None) -> PublicKey | None:
        """The pinned key for ``host:port``, else for ``host``; IPv6 hosts as ``[addr]:port``."""
        host = host.lower()
        if port is not None:
            bracketed = f"[{host}]" if ":" in host else host
            key = self.entries.get(f"{bracketed}:{port}")
            if key is not None:
                return key
        return self.entries.get(host) or self.entries.get(f"[{host}]")


# --- shared secrets ---------------------------------------------------------------

class SharedSecret:
    """A shared secret, stretched with scrypt; ``warning`` is set when it looks weak.

    The stretching (about 0.1-0.2 s of CPU, by design) runs in a thread from the
    moment the secret is loaded, and :attr:`key` waits for it: the key is needed only
    for the proof after the DTLS handshake (PROTOCOL.md §8.1), so a client's first
    round trips overlap it. hashlib lets go of the GIL while scrypt runs.
    """

    __slots__ = ("_key", "_thread", "warning")

    def __init__(self, secret: bytes, *, n: int = SCRYPT_N) -> None:
        secret = secret.strip()
        if not secret:
            raise KeyFileError("the shared secret is empty")
        self.warning = secret_weakness(secret)
        self._key: bytes | None = None

        def stretch() -> None:
            self._key = stretch_secret(secret, n=n)

        self._thread = threading.Thread(target=stretch, name="tou-scrypt", daemon=True)
        self._thread.start()

    @property
    def key(self) -> bytes:
        """The 32-byte proof key (waits for the stretching to finish)."""
        if self._key is None:
            self._thread.join()
            if self._key is None:
                raise KeyFileError("the shared secret could not be stretched")
        return self._key


def stretch_secret(secret: bytes, *, n: int = SCRYPT_N) -> bytes:
    """scrypt (RFC 7914) with tou's fixed salt: the 32-byte proof key (PROTOCOL.md §8.3)."""
    return hashlib.scrypt(secret, salt=SCRYPT_SALT, n=n, r=SCRYPT_R, p=SCRYPT_P,
                          maxmem=256 * n * SCRYPT_R, dklen=32)


def estimated_bits(secret: bytes) -> float:
    """A rough entropy estimate: length times log2 of the alphabet the characters come from."""
    text = secret.decode("utf-8", "replace")
    alphabet = 0
    if any(c.islower() for c in text):
        alphabet += 26
    if any(c.isupper() for c in text):
        alphabet += 26
    if any(c.isdigit() for c in text):
        alphabet += 10
    if any(not c.isalnum() for c in text):
        alphabet += 33
    distinct = len(set(text))
    return len(text) * math.log2(max(alphabet, 2)) if distinct > 4 else distinct * 4.0


def secret_weakness(secret: bytes) -> str | None:
    """A one-line warning if the secret looks guessable, else None."""
    bits = estimated_bits(secret)
    if bits >= WEAK_SECRET_BITS:
        return None
    return (f"warning: the shared secret looks weak (about {int(bits)} bits); an active attacker "
            "can guess it offline. Use 'tou key secret' to make a strong one")


def load_shared_secret(secret_file: str | os.PathLike[str] | None = None,
                       environ: Mapping[str, str] | None = None) -> SharedSecret | None:
    """The secret from ``secret_file`` (checked to be private) or ``$TOU_SECRET``; None if neither."""
    if secret_file is not None:
        check_private_file(secret_file)
        return SharedSecret(_read(secret_file))
    value = (os.environ if environ is None else environ).get(SECRET_ENV)
    if value is None:
        return None
    return SharedSecret(value.encode())


def generate_secret(rng: Rng = os.urandom) -> str:
    """A random 256-bit secret as unpadded url-safe base64 (43 characters)."""
    return base64.urlsafe_b64encode(rng(32)).decode().rstrip("=")


__all__ = [
    "KEY_TYPE", "SECRET_ENV", "KeyFileError", "PublicKey", "PrivateKey", "AuthorizedKeys",
    "KnownPeers", "SharedSecret", "check_private_file", "stretch_secret", "secret_weakness",
    "load_shared_secret", "generate_secret",
]
