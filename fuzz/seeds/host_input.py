"""Writes the seeds of the host_input fuzz target (fuzz/seeds/host_input/);
run from fuzz/. The input format is described in fuzz_targets/host_input.rs."""
import struct, os
def base(src, dst, shl, proto): return struct.pack(">IIBBH", src, dst, shl, proto, 0)
def control(flags, verno=0, ackno=0, nonce=b"\0"*8): return bytes([0x10, 20, flags, 0]) + struct.pack(">II", verno, ackno) + nonce
def service(): return bytes([0x20, 36, 0, 0]) + b"\0"*32
def tcp(seq, ack, flags, data=b""): return struct.pack(">HHIIBBHHH", 0, 0, seq, ack, 0x50, flags, 0xffff, 0, 0) + data
def sal(exts, proto, seg, src=0x01020304, dst=0):
    h = b"".join(exts); return base(src, dst, (12 + len(h)) // 4, proto) + h + seg
def inject(flags, addresses, packet): return bytes([0, flags, addresses]) + struct.pack("<H", len(packet)) + packet
ADV = lambda t: bytes([2, t]); CW = lambda n: bytes([3, n]); SW = lambda n: bytes([4, n])
SAL, STREAM, DGRAM, SYNDUP, SVC, NONCE, XSUM, SEQ = 2, 4, 8, 12, 0x10, 0x20, 0x40, 0x80
seeds = {
  "syn": inject(SAL|SVC|XSUM, 1, sal([control(0x80, 7), service()], 6, tcp(1000, 0, 0x02))) + ADV(0x90) + CW(10),
  "syn_flood": b"".join(inject(SAL|SVC|XSUM, 1 | (i << 3), sal([control(0x80, i), service()], 6, tcp(i, 0, 0x02), src=i+1)) for i in range(8)) + ADV(0x9a) + bytes([6, 3]),
  "data_segment": inject(SAL|STREAM|XSUM|SEQ, 0, sal([], 6, tcp(0, 0, 0x18, b"0123456789"))) + CW(4) + ADV(50),
  "rsyn": inject(SAL|STREAM|NONCE|SEQ, 1, sal([control(0x40, 0, 0)], 6, b"")) + CW(20) + ADV(0xa0),
  "fin": inject(SAL|STREAM|NONCE|SEQ, 0, sal([control(0x04, 0, 0)], 6, b"")) + SW(3) + ADV(0x84),
  "rst_blind": inject(SAL|STREAM, 1, sal([control(0x08, 0, 0)], 6, b"")) + CW(2) + ADV(10),
  "datagram": inject(SAL|DGRAM|XSUM, 0, sal([], 17, struct.pack(">HHHH", 0, 0, 12, 0) + b"evil")) + bytes([5, 9, 5, 8]) + ADV(5),
  "client_rst": inject(1|SAL|STREAM|NONCE|SEQ, 0, sal([control(0x08, 0, 0)], 6, b"")) + CW(1) + ADV(0x88),
  "syn_dup": inject(SAL|SYNDUP|SVC|NONCE|XSUM, 0, sal([control(0x80, 0), service()], 6, tcp(5, 0, 0x02))) + ADV(0x84),
}
# The first byte sets the victim up: bit 0 UDP carriage, bit 1 cookies
# always, bit 2 a second interface on both hosts.
seeds = {name: b"\0" + data for name, data in seeds.items()}
seeds["udp_rsyn"] = b"\1" + seeds["rsyn"][1:]
seeds["udp_data_segment"] = b"\1" + seeds["data_segment"][1:]
seeds["cookies_syn"] = b"\2" + seeds["syn"][1:]
seeds["udp_cookies_syn_flood"] = b"\3" + seeds["syn_flood"][1:]
MIGRATE_CLIENT, MIGRATE_SERVER = bytes([6, 4]), bytes([6, 5])
seeds["multi_migrate_rsyn"] = b"\4" + MIGRATE_CLIENT + CW(30) + ADV(0x82) + seeds["rsyn"][1:] + MIGRATE_SERVER + SW(5) + ADV(0x96)
seeds["udp_multi_migrate_fin"] = b"\5" + MIGRATE_SERVER + SW(30) + seeds["fin"][1:] + MIGRATE_CLIENT + ADV(0x90)
os.makedirs("seeds/host_input", exist_ok=True)
for name, data in seeds.items():
    open(f"seeds/host_input/{name}", "wb").write(data)
