"""tou: TCP carried inside (optionally DTLS-encrypted) UDP, through a userspace TCP stack."""

__version__ = "0.1.0"
