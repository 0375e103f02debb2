"""Snapshot assembly (toucli/stats.py): rates from counter deltas, totals, limits, schema."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from toucli.stats import CLOSED_LINGER, HISTORY_SECONDS, SCHEMA_VERSION, Collector, json_safe, limited_by

DOCS = Path(__file__).resolve().parent.parent / "docs" / "STATS.md"


class FakeConn:
    def __init__(self, peer=("192.0.2.1", 4000), lport=50000, rport=1, created=0.0, **stats) -> None:
        self.peer = peer
        self.local_port = lport
        self.remote_port = rport
        self.created = created
        self.s = {"state": "ESTABLISHED", "srtt": 0.02, "rttvar": 0.005, "min_rtt": 0.015, "path_rtt": 0.015, "rto": 0.2,
                  "cwnd": 14000, "ssthresh": 2 ** 31, "congestion_control": "cubic", "mss": 1400,
                  "in_flight": 0, "pipe": 0, "snd_wnd": 65535, "rcv_wnd": 65535, "bytes_sent": 0,
                  "bytes_acked": 0, "bytes_received": 0, "bytes_retrans": 0, "segs_out": 0, "segs_in": 0,
                  "retransmitted_segments": 0, "rto_count": 0, "sack_recoveries": 0, "pacing_rate": 0.0,
                  "pacing_waits": 0, "wscale": (7, 7)}
        self.s.update(stats)

    def stats(self) -> dict:
        return dict(self.s)

    def add(self, **deltas) -> None:
        for k, v in deltas.items():
            self.s[k] += v


class Identity(SimpleNamespace):
    def __str__(self) -> str:
        return f"{self.key.fingerprint()} ({self.name})"


def fake_tunnel(*conns, family=socket.AF_INET, secure=None) -> SimpleNamespace:
    usock = SimpleNamespace(bytes_in=0, bytes_out=0, datagrams_in=0, datagrams_out=0, send_drops=0,
                            family=family, connected_to=None, local_address=lambda: ("198.51.100.1", 40000))
    if secure is None:
        transport = SimpleNamespace(name="cleartext", overhead=4, drops=0)
    else:
        transport = SimpleNamespace(name="DTLS", overhead=41, ep=secure, drops=0)
    ep = SimpleNamespace(connections={(id(c.peer), c.local_port, c.remote_port): c for c in conns})
    return SimpleNamespace(usock=usock, transport=transport, ep=ep, channels={})


def test_rates_come_from_counter_deltas() -> None:
    c = FakeConn()
    t = fake_tunnel(c)
    col = Collector([t], command="connect", pid=99, started=10.0)
    first = col.sample(10.0, 1000.0)
    assert first["connections"][0]["up_bps"] == 0.0
    c.add(bytes_sent=1_000_000, bytes_acked=1_000_000, bytes_received=250_000, segs_out=700, segs_in=200)
    snap = col.sample(12.0, 1002.0)
    assert snap["interval"] == 2.0
    assert snap["uptime"] == 2.0
    row = snap["connections"][0]
    assert row["up_bps"] == 4_000_000.0
    assert row["down_bps"] == 1_000_000.0
    assert row["interval_bytes_up"] == 1_000_000 and row["interval_bytes_down"] == 250_000
    assert snap["totals"]["up_bps"] == 4_000_000.0 and snap["totals"]["down_bps"] == 1_000_000.0
    assert snap["totals"]["bytes_up"] == 1_000_000 and snap["totals"]["bytes_down"] == 250_000
    assert snap["time"] == 1002.0 and snap["instance"]["pid"] == 99
    # Nothing moved: the rate drops to zero, the totals stay.
    snap = col.sample(13.0, 1003.0)
    assert snap["connections"][0]["up_bps"] == 0.0 and snap["totals"]["bytes_up"] == 1_000_000


def test_acknowledged_fin_is_not_payload() -> None:
    c = FakeConn()
    col = Collector([fake_tunnel(c)], started=0.0)
    col.sample(0.0, 0.0)
    c.add(bytes_sent=5000, bytes_acked=5001)          # the FIN's sequence number acknowledged too
    snap = col.sample(1.0, 1.0)
    assert snap["totals"]["bytes_up"] == 5000
    assert snap["connections"][0]["up_bps"] == 40_000.0


def test_loss_and_retransmission_percentages() -> None:
    c = FakeConn()
    col = Collector([fake_tunnel(c)], started=0.0)
    col.sample(0.0, 0.0)
    c.add(segs_out=200, retransmitted_segments=2, bytes_sent=200_000, bytes_retrans=2800)
    snap = col.sample(1.0, 1.0)
    assert snap["path"]["loss_pct"] == 1.0
    c.add(segs_out=100, retransmitted_segments=6)
    snap = col.sample(2.0, 2.0)
    assert snap["path"]["loss_pct"] == 6.0                     # this interval
    assert snap["path"]["loss_pct_total"] == pytest.approx(100 * 8 / 300)
    assert snap["connections"][0]["retrans_pct"] == pytest.approx(100 * 8 / 300)
    assert snap["connections"][0]["interval_retransmitted_segments"] == 6
    snap = col.sample(3.0, 3.0)
    assert snap["path"]["loss_pct"] is None                    # nothing sent: unknown, not 0


def test_wire_overhead_counts_headers_against_payload() -> None:
    c = FakeConn()
    t = fake_tunnel(c)
    col = Collector([t], started=0.0)
    col.sample(0.0, 0.0)
    # 100 datagrams of 1000 TCP payload bytes + 20 TCP header + 4 GUE; 28 bytes IPv4+UDP each on the wire.
    c.add(bytes_sent=100_000, segs_out=100)
    t.usock.bytes_out += 100 * 1024
    t.usock.datagrams_out += 100
    snap = col.sample(1.0, 1.0)
    wire = 100 * (1024 + 28)
    assert snap["totals"]["wire_bytes_out"] == wire
    assert snap["path"]["overhead_pct"] == pytest.approx(100 * (wire - 100_000) / wire)
    assert snap["totals"]["wire_up_bps"] == wire * 8
    assert snap["totals"]["datagrams_out"] == 100


def test_ipv6_headers_are_longer() -> None:
    c = FakeConn(peer=("2001:db8::1", 4000))
    t = fake_tunnel(c, family=socket.AF_INET6)
    col = Collector([t], started=0.0)
    col.sample(0.0, 0.0)
    t.usock.bytes_in += 1000
    t.usock.datagrams_in += 1
    assert col.sample(1.0, 1.0)["totals"]["wire_bytes_in"] == 1048


def test_closed_connection_stays_listed_for_a_while_and_counts_in_totals() -> None:
    a, b = FakeConn(lport=1000), FakeConn(lport=2000)
    t = fake_tunnel(a, b)
    col = Collector([t], started=0.0)
    col.sample(0.0, 0.0)
    b.add(bytes_sent=3000, bytes_acked=3000)
    b.s["state"] = "CLOSED"
    del t.ep.connections[(id(b.peer), b.local_port, b.remote_port)]
    snap = col.sample(1.0, 1.0)
    rows = {r["local_port"]: r for r in snap["connections"]}
    assert rows[2000]["open"] is False and rows[2000]["state"] == "CLOSED"
    assert rows[2000]["bytes_acked"] == 3000                   # its last counters were still read
    assert snap["totals"]["connections"] == 1
    assert snap["totals"]["bytes_up"] == 3000
    snap = col.sample(1.0 + CLOSED_LINGER / 2, 2.0)
    assert {r["local_port"] for r in snap["connections"]} == {1000, 2000}
    assert next(r for r in snap["connections"] if r["local_port"] == 2000)["up_bps"] == 0.0
    snap = col.sample(2.0 + CLOSED_LINGER, 3.0)
    assert [r["local_port"] for r in snap["connections"]] == [1000]
    assert snap["totals"]["bytes_up"] == 3000


def test_ids_are_stable_and_new_connections_get_new_ones() -> None:
    a = FakeConn(lport=1000)
    t = fake_tunnel(a)
    col = Collector([t], started=0.0)
    assert [r["id"] for r in col.sample(0.0, 0.0)["connections"]] == [1]
    b = FakeConn(lport=2000)
    t.ep.connections[("x", 2000)] = b
    t.channels[b] = SimpleNamespace(started=0.5, label="example.com:443")
    snap = col.sample(1.0, 1.0)
    assert [(r["id"], r["label"]) for r in snap["connections"]] == [(1, None), (2, "example.com:443")]
    assert snap["connections"][1]["age"] == 0.5


def test_limited_by() -> None:
    base = {"state": "ESTABLISHED", "mss": 1000, "cwnd": 10_000, "snd_wnd": 100_000, "pacing_rate": 0.0}
    assert limited_by(dict(base, in_flight=0, pipe=0), 0) == "app"              # idle
    assert limited_by(dict(base, in_flight=9500, pipe=9500), 5000) == "cwnd"
    assert limited_by(dict(base, in_flight=5000, pipe=5000), 5000) == "app"     # room left, nothing sent
    assert limited_by(dict(base, in_flight=5000, pipe=5000, snd_wnd=5500), 5000) == "rwnd"
    assert limited_by(dict(base, in_flight=5000, pipe=5000, pacing_rate=1e6, _pacing_waited=True), 5000) == \
        "pacing"
    assert limited_by(dict(base, in_flight=9500, pipe=9500, unsent_bytes=0), 5000) == "app"
    assert limited_by(dict(base, in_flight=1, limited_by="rwnd"), 0) == "rwnd"  # the engine's verdict wins
    assert limited_by(dict(base, state="TIME_WAIT"), 0) is None


def test_secure_sessions_give_peers_and_drop_counters() -> None:
    key = SimpleNamespace(fingerprint=lambda: "SHA256:abc")
    ident = Identity(mode="keys", key=key, name="laptop")
    session = SimpleNamespace(peer_addr=("::ffff:192.0.2.9", 4500), peer_identity=ident, state="established",
                              id=0x1234, created=1.0)
    ep = SimpleNamespace(counters={"datagrams_in": 5, "drop_replay": 2, "drop_auth": 1, "drop_malformed": 0,
                                   "handshakes_completed": 1}, sessions=lambda: [session])
    c = FakeConn(peer=session)
    col = Collector([fake_tunnel(c, secure=ep)], started=0.0)
    snap = col.sample(3.0, 3.0)
    assert snap["transport"]["name"] == "DTLS"
    (peer,) = snap["peers"]
    assert peer["address"] == "192.0.2.9:4500"
    assert peer["fingerprint"] == "SHA256:abc" and peer["key_name"] == "laptop"
    assert peer["identity"] == "SHA256:abc (laptop)" and peer["auth"] == "keys"
    assert peer["age"] == 2.0 and peer["session_id"] == 0x1234
    assert snap["drops"] == {"replay": 2, "auth": 1, "malformed": 0}
    assert snap["secure"]["handshakes_completed"] == 1
    assert snap["connections"][0]["peer"] == "192.0.2.9:4500"
    col.tunnels[0].transport.drops = 3             # TCP headers in authentic records that do not parse
    assert col.sample(4.0, 4.0)["drops"]["malformed"] == 3


def test_history_keeps_the_last_minute() -> None:
    c = FakeConn()
    col = Collector([fake_tunnel(c)], started=0.0)
    for i in range(100):
        c.s["srtt"] = 0.001 * i
        c.s["cwnd"] = 1000 * i
        col.sample(float(i), float(i))
    h = col.history()
    series = h["connections"]["1"]
    assert series["t"][0] == -HISTORY_SECONDS and series["t"][-1] == 0.0
    assert len(series["t"]) == HISTORY_SECONDS + 1
    assert series["cwnd"][-1] == 99_000 and series["srtt"][-1] == pytest.approx(0.099)
    assert len(h["totals"]["up_bps"]) == HISTORY_SECONDS + 1
    assert "history" not in col.snapshot() and col.snapshot(history=True)["history"] == h


def test_snapshot_is_strict_json_with_a_version() -> None:
    c = FakeConn(rto=float("inf"), srtt=None)
    col = Collector([fake_tunnel(c)], started=0.0)
    snap = col.sample(1.0, 1.0)
    text = json.dumps(snap, allow_nan=False)
    back = json.loads(text)
    assert back["version"] == SCHEMA_VERSION == 1
    assert back["connections"][0]["rto"] is None
    assert back["connections"][0]["tcp"]["wscale"] == [7, 7]
    assert json_safe({"a": (1, float("nan"))}) == {"a": [1, None]}


def _documented_fields() -> set[str]:
    return set(re.findall(r"^\| `([a-z_0-9.]+)`", DOCS.read_text(), re.M))


def test_every_field_is_documented_in_docs_stats_md() -> None:
    c = FakeConn()
    key = SimpleNamespace(fingerprint=lambda: "SHA256:abc")
    session = SimpleNamespace(peer_addr=("192.0.2.9", 4500), id=1, created=0.0, state="established",
                              peer_identity=SimpleNamespace(mode="keys", key=key, name=None))
    ep = SimpleNamespace(counters={"drop_replay": 0}, sessions=lambda: [session])
    col = Collector([fake_tunnel(c, secure=ep)], started=0.0)
    col.sample(0.0, 0.0)
    snap = col.snapshot(history=True)
    documented = _documented_fields()
    missing = []
    for k, v in snap.items():
        if k not in documented:
            missing.append(k)
        if isinstance(v, dict) and k not in ("secure", "drops", "history"):
            missing += [f"{k}.{s}" for s in v if f"{k}.{s}" not in documented]
    missing += [f"connections.{s}" for s in snap["connections"][0] if f"connections.{s}" not in documented]
    missing += [f"peers.{s}" for s in snap["peers"][0] if f"peers.{s}" not in documented]
    missing += [f"history.{s}" for s in snap["history"] if f"history.{s}" not in documented]
    assert missing == []


# ------------------------------------------------------------------ a real tunnel
def test_a_real_tunnel_over_loopback() -> None:
    from toucli.tunnel import PlainTransport, Tunnel, engine_config
    from toucli.udp import UdpSocket

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        a = UdpSocket.bind("127.0.0.1", 0)
        b = UdpSocket.bind("127.0.0.1", 0)
        cfg = engine_config(socket.AF_INET, PlainTransport.overhead)
        accepted: asyncio.Future = loop.create_future()
        server = Tunnel(b, PlainTransport(), cfg, on_accept=lambda ch: accepted.done() or accepted.set_result(ch))
        server.listen()
        client = Tunnel(a, PlainTransport(), cfg)
        col = Collector([client], command="test", started=loop.time())
        col.sample(loop.time(), 0.0)
        try:
            ch = client.connect(b.local_address())
            await asyncio.wait_for(asyncio.shield(ch.connected), 5)
            peer = await asyncio.wait_for(accepted, 5)
            data = bytes(range(256)) * 4096          # 1 MiB
            got = bytearray()

            async def reader() -> None:
                while len(got) < len(data):
                    got.extend(await peer.read())

            r = asyncio.ensure_future(reader())
            await ch.write(data)
            await asyncio.wait_for(r, 10)
            await asyncio.sleep(0.05)
            snap = col.sample(loop.time(), 1.0)
            snap["_server_port"] = b.local_address()[1]
            return snap
        finally:
            client.close()
            server.close()

    snap = asyncio.run(main())
    (row,) = snap["connections"]
    assert row["state"] == "ESTABLISHED" and row["open"]
    assert row["peer"] == f"127.0.0.1:{snap['_server_port']}" and row["remote_port"] == 1
    assert row["bytes_sent"] == 1 << 20 and row["bytes_acked"] >= 1 << 20
    assert snap["totals"]["bytes_up"] == 1 << 20
    assert snap["totals"]["up_bps"] > 0
    assert row["srtt"] is not None and row["srtt"] > 0
    assert snap["peers"][0]["address"] == row["peer"]
    assert snap["transport"] == {"name": "cleartext", "overhead": 4, "local": snap["transport"]["local"]}
    assert snap["totals"]["datagrams_out"] >= (1 << 20) // row["mss"]
    assert 0 < snap["path"]["overhead_pct"] < 20
