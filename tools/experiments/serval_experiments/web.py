"""nginx instances run unmodified under serval-run (inet mode): binding
port 8080 registers a service ID. Shared by the router and webservice
experiments."""

import os

from .netlab import wait_until

CONF = """daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    # one request per connection: every request is a new SAL flow, placed
    # by the service router (as the paper's web clients did)
    keepalive_timeout 0;
    log_format timed '$msec $status $body_bytes_sent $request_time';
    access_log {dir}/access.log timed;
    server {{ listen 8080; root {root}; }}
}}
"""


class Nginx:
    """One nginx instance in its own directory under the lab's."""

    def __init__(self, host, name, root, service):
        self.host = host
        self.name = name
        self.dir = host.lab.path(f"nginx-{name}")
        os.makedirs(self.dir, exist_ok=True)
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(CONF.format(dir=self.dir, root=root))
        self.proc = host.serval_run([(8080, service)], "nginx", "-c", conf, "-p", self.dir,
                                    log=os.path.join(self.dir, "stdout.log"))

    def access_log(self):
        """[(time, status, bytes)] of every request it answered."""
        path = os.path.join(self.dir, "access.log")
        out = []
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        out.append((float(parts[0]), int(parts[1]), int(parts[2])))
        return out

    def error_log(self):
        path = os.path.join(self.dir, "error.log")
        return open(path).read() if os.path.exists(path) else ""


def content(lab, size, name="file"):
    """A web root holding one file of `size` bytes; returns (root, path)."""
    root = lab.path("www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, name), "wb") as f:
        f.write(os.urandom(size))
    return root, f"/{name}"


def wait_bound(host, service, timeout=10):
    """Waits until `service` shows among host's rules (bound or announced)."""
    return wait_until(lambda: service in host.ctl("services").stdout, timeout, 0.1)
