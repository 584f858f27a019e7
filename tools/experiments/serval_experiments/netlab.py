"""Network namespaces, links and processes for one experiment, all removed
on exit, also when the experiment fails or is interrupted.

A `Lab` is a context manager. Every namespace it creates is named
`svx-<pid>-<n>-<label>`; leaving the `with` block (normally, by exception,
or by SIGINT/SIGTERM, which `install_signal_handlers` turns into
exceptions) kills every process it started, then every process still inside
its namespaces, then deletes the namespaces (which takes their veths, TUN
devices, routes and nftables tables with them). Namespaces of a run that was
SIGKILLed are removed by the next run (`remove_orphans`). Only 10.0.0.0/8
addresses inside namespaces made here are ever configured.
"""

import ipaddress
import os
import signal
import subprocess
import time

PREFIX = "svx-"


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: unwind and clean up."""


def install_signal_handlers():
    def handler(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run(args, check=True, timeout=60, **kw):
    """Runs a command to completion; returns its CompletedProcess (text)."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(map(str, args))}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_pids(name):
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if p.isdigit()]


def _delete_ns(name):
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        pids = [p for p in _ns_pids(name) if p != os.getpid()]
        if not pids:
            break
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def remove_orphans():
    """Deletes svx-<pid>-... namespaces whose creating process is gone."""
    try:
        names = os.listdir("/run/netns")
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            print(f"experiments: removing orphaned namespace {name}")
            _delete_ns(name)


def _check_cidr(cidr):
    net = ipaddress.ip_interface(cidr)
    if net.ip not in ipaddress.ip_network("10.0.0.0/8"):
        raise ValueError(f"{cidr}: experiment addresses must be inside 10.0.0.0/8")
    return net


class Proc:
    """A process started in a namespace; stopped (TERM, then KILL) on exit."""

    def __init__(self, popen, what, log=None):
        self.popen = popen
        self.what = what
        self.log = log

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def send(self, sig):
        if self.alive():
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        """Waits up to `timeout` s; returns the exit code or None if still running."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace=5.0, sig=signal.SIGTERM):
        if not self.alive():
            return self.popen.returncode
        self.send(sig)
        code = self.wait(grace)
        if code is None:
            self.send(signal.SIGKILL)
            code = self.wait(5)
        return code

    def log_text(self):
        if self.log and os.path.exists(self.log):
            with open(self.log, errors="replace") as f:
                return f.read()
        return ""


class Netns:
    """One namespace of a lab."""

    def __init__(self, lab, name, label):
        self.lab = lab
        self.name = name
        self.label = label

    def ip(self, *args, check=True):
        return run(["ip", "-n", self.name, *map(str, args)], check=check)

    def exec(self, *args, check=True, timeout=60, **kw):
        return run(["ip", "netns", "exec", self.name, *map(str, args)], check=check, timeout=timeout, **kw)

    def sysctl(self, key, value):
        self.exec("sysctl", "-q", "-w", f"{key}={value}")

    def spawn(self, *args, log=None, env=None, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=None):
        """Starts a program in the namespace. Its output goes to `log` (a
        file path) unless `stdout` is given."""
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        out = stdout
        err = None
        if log is not None:
            out = open(log, "w")
            err = subprocess.STDOUT
        popen = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *map(str, args)],
            stdin=stdin, stdout=out, stderr=err, env=full_env, cwd=cwd,
            start_new_session=True,
        )
        if log is not None:
            out.close()
        proc = Proc(popen, f"{args[0]} in {self.label}", log)
        self.lab.procs.append(proc)
        return proc


class Lab:
    """The namespaces, links and processes of one experiment."""

    counter = 0

    def __init__(self, label, workdir):
        self.label = label
        self.workdir = workdir
        self.namespaces = []
        self.procs = []
        os.makedirs(workdir, exist_ok=True)

    def __enter__(self):
        remove_orphans()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def netns(self, label):
        Lab.counter += 1
        name = f"{PREFIX}{os.getpid()}-{Lab.counter}-{label}"[:60]
        run(["ip", "netns", "add", name])
        ns = Netns(self, name, label)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(self, a, if_a, cidr_a, b, if_b, cidr_b, mtu=1500):
        """A veth pair between two namespaces, addressed and up (a cidr of
        None leaves that end without an address)."""
        for cidr in (cidr_a, cidr_b):
            if cidr:
                _check_cidr(cidr)
        tmp_a, tmp_b = f"vx{os.getpid() % 100000}a{Lab.counter}", f"vx{os.getpid() % 100000}b{Lab.counter}"
        Lab.counter += 1
        run(["ip", "link", "add", tmp_a, "netns", a.name, "type", "veth", "peer", "name", tmp_b, "netns", b.name])
        for ns, tmp, name, cidr in ((a, tmp_a, if_a, cidr_a), (b, tmp_b, if_b, cidr_b)):
            ns.ip("link", "set", tmp, "name", name)
            ns.ip("link", "set", name, "mtu", mtu)
            if cidr:
                ns.ip("addr", "add", cidr, "dev", name)
            ns.ip("link", "set", name, "up")

    def lan(self, members):
        """A LAN: a bridge in a namespace of its own joining (netns, ifname,
        cidr) members."""
        br = self.netns("lan")
        br.ip("link", "add", "br0", "type", "bridge")
        br.ip("link", "set", "br0", "up")
        for i, (ns, ifname, cidr) in enumerate(members):
            self.veth(ns, ifname, cidr, br, f"p{i}", None)
            br.ip("link", "set", f"p{i}", "master", "br0")
        return br

    def path(self, name):
        return os.path.join(self.workdir, name)

    def close(self):
        # Daemons first, gently (sald undoes its plumbing on SIGTERM).
        for proc in reversed(self.procs):
            try:
                proc.stop(grace=3)
            except Exception:  # noqa: BLE001 - cleanup must go on
                pass
        for ns in reversed(self.namespaces):
            _delete_ns(ns.name)
        self.namespaces.clear()
        self.procs.clear()


def wait_until(cond, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
