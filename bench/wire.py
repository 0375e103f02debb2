"""Encode+decode cost per segment of the TCP and GUE codecs (prints µs/segment)."""
import sys, timeit
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from toucli.stack.segment import Segment, ACK, PSH, SYN
from toucli.stack.tcp import decode_segment, encode_segment, encode_segment_into
from toucli.stack import gue

payload = bytes(range(256)) * 5 + bytes(120)  # 1400 bytes
cases = {
    "bare ACK": Segment(40000, 80, 1, 2, ACK, 512),
    "ACK+TS": Segment(40000, 80, 1, 2, ACK, 512, tsval=7, tsecr=9),
    "data 1400 +TS": Segment(40000, 80, 1, 2, ACK | PSH, 512, payload, tsval=7, tsecr=9),
    "ACK+TS+3 SACK": Segment(40000, 80, 1, 2, ACK, 512, tsval=7, tsecr=9, sack=((10, 20), (30, 40), (50, 60))),
    "SYN full": Segment(40000, 80, 1, 0, SYN, 65535, mss=1400, wscale=7, sack_perm=True, tsval=1, tsecr=0),
}
N = 100_000
buf = bytearray(2048)
for name, seg in cases.items():
    wire = encode_segment(seg)
    assert decode_segment(wire) == seg
    t_enc = min(timeit.repeat(lambda: encode_segment(seg), number=N, repeat=3)) / N * 1e6
    t_into = min(timeit.repeat(lambda: encode_segment_into(seg, buf, 4), number=N, repeat=3)) / N * 1e6
    t_dec = min(timeit.repeat(lambda: decode_segment(wire), number=N, repeat=3)) / N * 1e6
    t_dec_nc = min(timeit.repeat(lambda: decode_segment(wire, verify_checksum=False), number=N, repeat=3)) / N * 1e6
    print(f"{name:16s} encode {t_enc:5.2f}  encode_into {t_into:5.2f}  decode {t_dec:5.2f}  "
          f"decode(no csum) {t_dec_nc:5.2f}  enc+dec {t_enc + t_dec:5.2f} µs")
dg = gue.PLAIN_HEADER + encode_segment(cases["ACK+TS"])
t = min(timeit.repeat(lambda: gue.parse_header(dg), number=N, repeat=3)) / N * 1e6
t2 = min(timeit.repeat(lambda: gue.pack_plain_into(buf, 0), number=N, repeat=3)) / N * 1e6
print(f"GUE parse_header {t:.2f} µs, pack_plain_into {t2:.2f} µs")
