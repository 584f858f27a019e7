"""Starting the product's programs the way a user does: sald, servd,
servalctl, serval-run and svtrans from `target/release`, each in a
namespace, with its control socket and log in the experiment's directory."""

import json
import os
import socket

from .netlab import wait_until

BIN = os.environ.get("SERVAL_BIN", os.path.join(os.path.dirname(__file__), "..", "..", "..", "target", "release"))


def binary(name):
    return os.path.abspath(os.path.join(BIN, name))


def _accepts(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class Host:
    """A namespace running sald (and maybe servd)."""

    def __init__(self, lab, ns, name, ifaces, forward=False, extra=()):
        self.lab = lab
        self.ns = ns
        self.name = name
        self.control = lab.path(f"{name}.sock")
        args = [binary("sald")]
        for iface in ifaces:
            args += ["--iface", iface]
        if forward:
            args.append("--forward")
        args += ["--control", self.control, *extra]
        self.sald = ns.spawn(*args, log=lab.path(f"{name}-sald.log"), env={"RUST_LOG": os.environ.get("RUST_LOG", "info")})
        if not wait_until(lambda: _accepts(self.control) or not self.sald.alive(), 10) or not self.sald.alive():
            raise RuntimeError(f"sald on {name} did not start:\n{self.sald.log_text()}")
        self.env = {"SERVAL_CONTROL": self.control}

    def servd(self, *args):
        return self.ns.spawn(binary("servd"), "--control", self.control, "--name", self.name, *args,
                             log=self.lab.path(f"{self.name}-servd.log"))

    def ctl(self, *args, check=True):
        return self.ns.exec(binary("servalctl"), "--control", self.control, *args, check=check)

    def ctl_json(self, *args):
        return json.loads(self.ctl(*args, "--json").stdout)

    def spawn(self, *args, log=None, **kw):
        """A program in this host's namespace, reaching this host's sald."""
        env = dict(self.env)
        env.update(kw.pop("env", {}) or {})
        return self.ns.spawn(*args, log=log, env=env, **kw)

    def run(self, *args, **kw):
        env = dict(os.environ)
        env.update(self.env)
        return self.ns.exec(*args, env=env, **kw)

    def serval_run(self, maps, *program, log=None, **kw):
        args = [binary("serval-run")]
        for port, service in maps:
            args += ["--map", f"{port}={service}"]
        return self.spawn(*args, "--", *program, log=log, **kw)
