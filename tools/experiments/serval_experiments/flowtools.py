"""Small traffic programs the experiments run inside namespaces
(`python3 -m serval_experiments.flowtools COMMAND ...`). Every loop is
bounded in time.

- `sink`: reads a byte stream (stdin, or a TCP/MPTCP listener) and writes
  the bytes received per time bin as JSON;
- `connect`: sequential HTTP requests, timing each connect;
- `source`: writes zeros at full speed to stdout or to a TCP/MPTCP peer for
  a fixed time.
"""

import argparse
import json
import os
import socket
import sys
import time

IPPROTO_MPTCP = 262


def _listen(addr, mptcp):
    host, port = addr.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if mptcp else 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(1)
    return s


def sink(args):
    if args.listen:
        lst = _listen(args.listen, args.mptcp)
        lst.settimeout(args.seconds)
        conn, _ = lst.accept()
        conn.settimeout(0.2)
        read = lambda: conn.recv(1 << 16)  # noqa: E731
    else:
        os.set_blocking(0, True)
        read = lambda: os.read(0, 1 << 16)  # noqa: E731
    bins = {}
    start = None
    deadline = time.monotonic() + args.seconds
    total = 0
    while time.monotonic() < deadline:
        try:
            data = read()
        except (socket.timeout, BlockingIOError):
            continue
        except OSError:
            break
        if not data:
            break
        now = time.monotonic()
        if start is None:
            start = now
        b = int((now - start) / args.bin)
        bins[b] = bins.get(b, 0) + len(data)
        total += len(data)
    # Times are relative to the first byte; the caller aligns them.
    out = {"bin_s": args.bin, "first_byte_wall": None, "bytes": total,
           "series": [bins.get(i, 0) for i in range(max(bins) + 1)] if bins else []}
    out["first_byte_wall"] = time.time() - (time.monotonic() - start) if start else None
    with open(args.out, "w") as f:
        json.dump(out, f)


def source(args):
    chunk = bytes(1 << 16)
    deadline = time.monotonic() + args.seconds
    if args.connect:
        host, port = args.connect.rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP if args.mptcp else 0)
        s.settimeout(5)
        s.connect((host, int(port)))
        write = s.sendall
    else:
        out = sys.stdout.buffer
        write = out.write
    try:
        while time.monotonic() < deadline:
            write(chunk)
    except OSError:
        pass
    if args.connect:
        s.shutdown(socket.SHUT_WR)
        s.close()


def connect(args):
    """Sequential HTTP/1.0 requests: connect latency and request time (ms)."""
    host, port = args.addr.rsplit(":", 1)
    connect_ms, request_ms, failed = [], [], 0
    deadline = time.monotonic() + args.seconds
    request = f"GET {args.path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode()
    for _ in range(args.count):
        if time.monotonic() > deadline:
            break
        t0 = time.perf_counter()
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            t1 = time.perf_counter()
            s.sendall(request)
            while s.recv(1 << 16):
                pass
            s.close()
        except OSError:
            failed += 1
            continue
        connect_ms.append((t1 - t0) * 1e3)
        request_ms.append((time.perf_counter() - t0) * 1e3)
    with open(args.out, "w") as f:
        json.dump({"connect_ms": connect_ms, "request_ms": request_ms, "failed": failed}, f)


def main():
    p = argparse.ArgumentParser(prog="flowtools")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("sink")
    a.add_argument("--listen")
    a.add_argument("--mptcp", action="store_true")
    a.add_argument("--bin", type=float, default=0.1)
    a.add_argument("--seconds", type=float, required=True)
    a.add_argument("--out", required=True)
    b = sub.add_parser("source")
    b.add_argument("--connect")
    b.add_argument("--mptcp", action="store_true")
    b.add_argument("--seconds", type=float, required=True)
    c = sub.add_parser("connect")
    c.add_argument("--addr", required=True)
    c.add_argument("--path", default="/")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--seconds", type=float, required=True)
    c.add_argument("--out", required=True)
    args = p.parse_args()
    {"sink": sink, "source": source, "connect": connect}[args.cmd](args)


if __name__ == "__main__":
    main()
