"""Errors: local misuse of the API versus protocol violations by the remote peer."""


class TouError(Exception):
    """Base class of every error raised by tou's stack."""


class LocalError(TouError):
    """The application used the engine wrongly (e.g. send after close)."""


class RemoteProtocolError(TouError):
    """The peer sent something the protocol does not allow.

    The engine itself never lets these escape from ``receive``: malformed
    input is dropped and counted. Codecs raise it internally.
    """
