"""In-memory plumbing for secure-channel tests: two SecureEndpoints, a lossy wire, virtual time."""

from __future__ import annotations

import random
from typing import Any, Callable

from toucli.keys import AuthorizedKeys, PrivateKey, SharedSecret
from toucli.session import Auth, SecureConfig, SecureEndpoint, Session, SessionEstablished

CLIENT_ADDR = ("192.0.2.1", 40000)
SERVER_ADDR = ("192.0.2.2", 6080)

SERVER_KEY = PrivateKey.generate()
CLIENT_KEY = PrivateKey.generate()
OTHER_KEY = PrivateKey.generate()


def secret(text: bytes) -> SharedSecret:
    return SharedSecret(text, n=1024)     # cheap scrypt for tests; both sides alike


def key_pair_endpoints(config: SecureConfig | None = None, rng: Callable[[int], bytes] | None = None,
                       server_key: PrivateKey = SERVER_KEY, client_key: PrivateKey = CLIENT_KEY,
                       pinned: PrivateKey = SERVER_KEY) -> tuple[SecureEndpoint, SecureEndpoint]:
    kw: dict[str, Any] = {"config": config}
    if rng is not None:
        kw["rng"] = rng
    server = SecureEndpoint("server", Auth.keys(server_key, authorized=AuthorizedKeys(
        {CLIENT_KEY.public: "laptop"})), **kw)
    client = SecureEndpoint("client", Auth.keys(client_key, peer_key=pinned.public), **kw)
    return client, server


def secret_endpoints(client_secret: bytes = b"correct horse battery staple and more words",
                     server_secret: bytes = b"correct horse battery staple and more words",
                     config: SecureConfig | None = None) -> tuple[SecureEndpoint, SecureEndpoint]:
    server = SecureEndpoint("server", Auth.secret(secret(server_secret)), config=config)
    client = SecureEndpoint("client", Auth.secret(secret(client_secret)), config=config)
    return client, server


class Net:
    """Moves datagrams between a client and a server endpoint.

    ``loss`` drops that fraction of datagrams (seeded). ``client_addr`` is where the
    client currently sends from; server datagrams to any other address are lost.
    ``tap`` sees every delivered datagram as (direction, bytes, addr).
    """

    def __init__(self, client: SecureEndpoint, server: SecureEndpoint, loss: float = 0.0,
                 seed: int = 1) -> None:
        self.client, self.server = client, server
        self.client_addr = CLIENT_ADDR
        self.loss = loss
        self.rand = random.Random(seed)
        self.now = 0.0
        self.to_server: list[tuple[Session, bytes]] = []
        self.to_client: list[tuple[Session, bytes]] = []
        self.client_events: list[Any] = []
        self.server_events: list[Any] = []
        self.sent: list[tuple[str, bytes, Any]] = []
        self.block_server_to_client = False
        self.block_client_to_server = False
        # ``mangle(direction, n, data)``: what the n-th datagram of that direction becomes
        # on the wire (None: lost); sees handshake flights and control messages.
        self.mangle: Callable[[str, int, bytes], bytes | None] | None = None
        self._n = {"c2s": 0, "s2c": 0}

    def _wire(self, way: str, data: bytes) -> bytes | None:
        if self.mangle is None:
            return data
        self._n[way] += 1
        return self.mangle(way, self._n[way], data)

    def _lost(self) -> bool:
        return self.loss > 0 and self.rand.random() < self.loss

    def deliver(self) -> None:
        moved = True
        while moved:
            moved = False
            for data, addr in self.client.datagrams_to_send(self.now):
                moved = True
                self.sent.append(("c2s", data, addr))
                data = self._wire("c2s", data)
                if data is not None and addr == SERVER_ADDR and not self._lost() and not self.block_client_to_server:
                    self.to_server += self.server.datagram_received(data, self.client_addr, self.now)
            for data, addr in self.server.datagrams_to_send(self.now):
                moved = True
                self.sent.append(("s2c", data, addr))
                data = self._wire("s2c", data)
                if data is not None and addr == self.client_addr and not self._lost() and not self.block_server_to_client:
                    self.to_client += self.client.datagram_received(data, SERVER_ADDR, self.now)
        self._drain_events()

    def _drain_events(self) -> None:
        for ep, sink in ((self.client, self.client_events), (self.server, self.server_events)):
            while (ev := ep.next_event()) is not None:
                sink.append(ev)

    def advance(self, until: float) -> None:
        """Run timers and deliveries up to virtual time ``until``."""
        self.deliver()
        while True:
            deadlines = [d for d in (self.client.next_deadline(), self.server.next_deadline()) if d is not None]
            nxt = max(min(deadlines), self.now) if deadlines else None
            if nxt is None or nxt > until:
                self.now = until
                return
            self.now = nxt
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self.deliver()

    def send_c2s(self, session: Session, segment: bytes) -> bytes | None:
        data = self.client.seal_segment(session, segment)
        if data is not None and not self._lost() and not self.block_client_to_server:
            self.to_server += self.server.datagram_received(data, self.client_addr, self.now)
        return data

    def send_s2c(self, session: Session, segment: bytes) -> bytes | None:
        data = self.server.seal_segment(session, segment)
        if data is not None and session.peer_addr == self.client_addr and not self._lost():
            self.to_client += self.client.datagram_received(data, SERVER_ADDR, self.now)
        return data

    def established(self) -> tuple[Session, Session]:
        c = [e.session for e in self.client_events if isinstance(e, SessionEstablished)]
        s = [e.session for e in self.server_events if isinstance(e, SessionEstablished)]
        assert len(c) == 1 and len(s) == 1, (self.client_events, self.server_events)
        return c[0], s[0]


def connect(client: SecureEndpoint, server: SecureEndpoint, **kw: Any) -> tuple[Net, Session, Session]:
    net = Net(client, server, **kw)
    client.connect(SERVER_ADDR, net.now)
    net.advance(5.0)
    cs, ss = net.established()
    return net, cs, ss


def segment(n: int, size: int = 100) -> bytes:
    """A fake TCP segment (at least 20 bytes) numbered ``n``."""
    return n.to_bytes(4, "big") + bytes([n % 251]) * (size - 4)
