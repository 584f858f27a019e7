"""The partitioned key-value client of the `memcached` experiment
(`python3 -m serval_experiments.kvclient`, run under serval-run so that its
AF_SERVAL sockets reach sald through the shim).

Each key is addressed by service ID: bytes 5e ca, then the key's CRC-32,
then zeros. The service router's longest-prefix match on the partition
prefixes (5eca0/18, 5eca4/18, 5eca8/18, 5ecac/18: the CRC's top two bits)
picks the memcached that holds the key. The client keeps one connection
per partition, opened toward the service ID of the first key it needs
there; when a connection breaks (a partition moved) it reconnects, which
reaches the partition's new server, and retries the operation once. It
issues a GET/SET mix (a GET miss is followed by a SET, as a cache does) and
writes per-second counts as JSON."""

import argparse
import ctypes
import json
import os
import random
import time
import zlib

AF_SERVAL = 28
SOCK_STREAM = 1


class SockaddrSv(ctypes.Structure):
    _fields_ = [("family", ctypes.c_uint16), ("flags", ctypes.c_uint8), ("prefix_bits", ctypes.c_uint8),
                ("id", ctypes.c_uint8 * 32)]


LIBC = ctypes.CDLL(None, use_errno=True)


def service_id(key):
    h = zlib.crc32(key.encode())
    return bytes([0x5E, 0xCA]) + h.to_bytes(4, "big") + bytes(26), h >> 30


class Conn:
    """A memcached text-protocol connection over a Serval stream."""

    def __init__(self, sid):
        fd = LIBC.socket(AF_SERVAL, SOCK_STREAM, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "socket(AF_SERVAL)")
        sa = SockaddrSv(AF_SERVAL, 0, 0, (ctypes.c_uint8 * 32)(*sid))
        if LIBC.connect(fd, ctypes.byref(sa), ctypes.sizeof(sa)) != 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, os.strerror(err))
        self.fd = fd
        self.buf = b""

    def close(self):
        os.close(self.fd)

    def _line(self):
        while b"\r\n" not in self.buf:
            data = os.read(self.fd, 65536)
            if not data:
                raise OSError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n:
            data = os.read(self.fd, 65536)
            if not data:
                raise OSError("connection closed")
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]

    def get(self, key):
        self._send(f"get {key}\r\n".encode())
        line = self._line()
        if line == b"END":
            return None
        parts = line.split()
        if parts[0] != b"VALUE":
            raise OSError(f"unexpected reply {line[:40]!r}")
        value = self._exact(int(parts[3]) + 2)[:-2]
        if self._line() != b"END":
            raise OSError("missing END")
        return value

    def set(self, key, value):
        self._send(f"set {key} 0 0 {len(value)}\r\n".encode() + value + b"\r\n")
        if self._line() != b"STORED":
            raise OSError("not stored")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--keys", type=int, default=2000)
    p.add_argument("--get-ratio", type=float, default=0.9)
    p.add_argument("--max-ops", type=int, default=5_000_000)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    rng = random.Random(1)
    conns = {}
    opened = set()
    stats = {}
    start = time.time()
    deadline = time.monotonic() + args.seconds
    ops = 0
    latencies = []

    def bump(field):
        sec = int(time.time() - start)
        row = stats.setdefault(sec, {"ops": 0, "misses": 0, "failed": 0, "reconnects": 0})
        row[field] += 1

    while time.monotonic() < deadline and ops < args.max_ops:
        ops += 1
        key = f"key{rng.randrange(args.keys)}"
        sid, partition = service_id(key)
        value = f"value-of-{key}".encode() * 8
        is_get = rng.random() < args.get_ratio
        began = time.perf_counter()
        for attempt in (0, 1):
            try:
                if partition not in conns:
                    conns[partition] = Conn(sid)
                    if partition in opened:
                        bump("reconnects")
                    opened.add(partition)
                c = conns[partition]
                if is_get:
                    if c.get(key) is None:
                        bump("misses")
                        c.set(key, value)
                else:
                    c.set(key, value)
                bump("ops")
                latencies.append((time.perf_counter() - began) * 1e3)
                break
            except OSError:
                old = conns.pop(partition, None)
                if old:
                    old.close()
                if attempt:
                    bump("failed")
                    time.sleep(0.05)
    rows = [{"t": t, **stats[t]} for t in sorted(stats)]
    with open(args.out, "w") as f:
        latencies.sort()
        pick = lambda q: latencies[min(len(latencies) - 1, int(len(latencies) * q))] if latencies else None  # noqa: E731
        json.dump({"start_wall": start, "per_second": rows, "latency_ms_p50": pick(0.5),
                   "latency_ms_p99": pick(0.99)}, f)


if __name__ == "__main__":
    main()
