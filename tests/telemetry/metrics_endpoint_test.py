#!/usr/bin/env python3
"""The status endpoints of a real local job (metrics.port), read the way Kubernetes and
Prometheus read them: /healthz and /readyz by status code, /metrics by Prometheus' own
text-format parser (python3-prometheus-client). Checks that the values move as the job trains.

  metrics_endpoint_test.py SHOAL_BINARY SOURCE_DIR

Exit 77 (skipped, with the reason) when Python's prometheus_client is missing.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("SKIP: python3-prometheus-client is not installed (launch/setup-debian.sh installs it)")
    sys.exit(77)

SHOAL, SOURCE = sys.argv[1], sys.argv[2]
JOB = os.path.join(SOURCE, "examples", "fashion_mnist_async.ini")
SERVING = re.compile(r"^(\S+)\s+\|.*serving /healthz /readyz /metrics on http://[^:]+:(\d+)")


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def get(port, path):
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def scrape(port):
    """{(name, frozenset(labels)): value} of every sample, parsed by prometheus_client."""
    status, body = get(port, "/metrics")
    if status != 200:
        return None
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def wait_for(what, predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    fail("timed out waiting for " + what)


class Process:
    """A process whose output is read line by line; records each role's status port."""

    def __init__(self, argv):
        self.ports, self.lines = {}, []
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = SERVING.match(line)
            if m:
                self.ports[m.group(1)] = int(m.group(2))

    def finish(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            print("".join(self.lines[-40:]))
            fail(f"{self.proc.args[1]} did not end within {timeout} s")
        self.reader.join(5)
        return code


def not_ready_before_the_job_assembles():
    # A coordinator alone: alive, but not ready (no worker or server registered).
    p = Process([SHOAL, "coordinator", JOB, "--metrics.port=0", "--metrics.host=127.0.0.1",
                 "--cluster.coordinator=tcp://127.0.0.1:0", "--log.level=info"])
    line = wait_for("the coordinator's status port", lambda: next(
        (int(m.group(1)) for m in (re.search(r"serving /healthz /readyz /metrics on http://[^:]+:(\d+)", l)
                                   for l in list(p.lines)) if m), None))
    if get(line, "/healthz")[0] != 200:
        fail("/healthz of a live coordinator is not 200")
    status, body = get(line, "/readyz")
    if status != 503:
        fail(f"/readyz before the job assembled: {status} {body!r}, expected 503")
    if get(line, "/nothing")[0] != 404:
        fail("an unknown path is not 404")
    p.proc.send_signal(signal.SIGTERM)
    code = p.finish(30)
    if get(line, "/healthz")[0] != 0:
        fail("the endpoint still answers after the coordinator exited")
    print(f"coordinator alone: /healthz 200, /readyz 503, exit {code} on SIGTERM")


def a_training_job_moves_its_metrics(checkpoints):
    p = Process([SHOAL, "launch", "--local", JOB, "--model=mlp", "--train.epochs=4", "--data.train_limit=20000",
                 "--metrics.port=0", "--metrics.host=127.0.0.1", "--checkpoint.dir=" + checkpoints,
                 "--checkpoint.every_steps=40"])
    roles = ["coordinator", "ps.0", "ps.1", "worker.0", "worker.1"]
    wait_for("every role's status port", lambda: all(r in p.ports for r in roles))
    for role in roles:
        wait_for(role + " to be ready", lambda: get(p.ports[role], "/readyz")[0] == 200)
        if get(p.ports[role], "/healthz")[0] != 200:
            fail(role + ": /healthz is not 200")

    worker, coordinator, server = p.ports["worker.0"], p.ports["coordinator"], p.ports["ps.0"]
    first = wait_for("worker.0 to report a trained shard",
                     lambda: (lambda s: s if s and (value(s, "shoal_worker_samples_total") or 0) > 0 else None)(
                         scrape(worker)))
    later = wait_for("worker.0's samples to grow",
                     lambda: (lambda s: s if s and value(s, "shoal_worker_samples_total") >
                              value(first, "shoal_worker_samples_total") else None)(scrape(worker)))
    for server_id in ("ps.0", "ps.1"):
        for name in ("shoal_worker_push_bytes_total", "shoal_worker_pull_bytes_total"):
            a, b = value(first, name, server=server_id), value(later, name, server=server_id)
            if a is None or b is None or not b > a > 0:
                fail(f"{name}{{server={server_id}}} did not grow: {a} then {b}")
        count = value(later, "shoal_worker_push_seconds_count", server=server_id)
        inf = value(later, "shoal_worker_push_seconds_bucket", server=server_id, le="+Inf")
        if not count or count != inf:
            fail(f"push round-trip histogram of {server_id}: count {count}, +Inf bucket {inf}")
    if not value(later, "shoal_worker_step") > 0 or not value(later, "shoal_worker_loss") > 0:
        fail("worker step or loss not set")
    print("worker.0: samples {:.0f} -> {:.0f}, pushed to ps.0 {:.0f} -> {:.0f} bytes".format(
        value(first, "shoal_worker_samples_total"), value(later, "shoal_worker_samples_total"),
        value(first, "shoal_worker_push_bytes_total", server="ps.0"),
        value(later, "shoal_worker_push_bytes_total", server="ps.0")))

    s = scrape(server)  # mid-training: worker.0 has just reported its second shard
    if s is None:
        fail("ps.0 did not answer /metrics")
    if not value(s, "shoal_ps_pushes_total") > 0 or not value(s, "shoal_ps_staleness_count") > 0:
        fail("ps.0: no pushes or no staleness observations")
    if value(s, "shoal_ps_live_workers") != 2:
        fail("ps.0 does not see 2 live workers")
    print("ps.0: {:.0f} pushes, {:.0f} staleness observations".format(
        value(s, "shoal_ps_pushes_total"), value(s, "shoal_ps_staleness_count")))

    c = wait_for("an epoch and a checkpoint at the coordinator",
                 lambda: (lambda s: s if s and value(s, "shoal_coordinator_epoch") and
                          value(s, "shoal_checkpoint_age_seconds") is not None else None)(scrape(coordinator)))
    checks = {
        ("shoal_coordinator_members", (("role", "worker"),)): 2,
        ("shoal_coordinator_members", (("role", "ps"),)): 2,
    }
    for (name, labels), want in checks.items():
        got = value(c, name, **dict(labels))
        if got != want:
            fail(f"{name}{dict(labels)} is {got}, expected {want}")
    if not value(c, "shoal_coordinator_generation") >= 1:
        fail("the generation is not set")
    if not 0 < value(c, "shoal_coordinator_test_accuracy") <= 1:
        fail("test accuracy out of (0, 1]")
    if not 0 <= value(c, "shoal_checkpoint_age_seconds") < 60:
        fail("checkpoint age " + str(value(c, "shoal_checkpoint_age_seconds")))
    c2 = wait_for("the coordinator's steps to grow",
                  lambda: (lambda s: s if s and value(s, "shoal_coordinator_steps") >
                           value(c, "shoal_coordinator_steps") else None)(scrape(coordinator)))
    print("coordinator: steps {:.0f} -> {:.0f}, epoch {:.0f} test accuracy {:.3f}, checkpoint age {:.2f} s".format(
        value(c, "shoal_coordinator_steps"), value(c2, "shoal_coordinator_steps"),
        value(c, "shoal_coordinator_epoch"), value(c, "shoal_coordinator_test_accuracy"),
        value(c, "shoal_checkpoint_age_seconds")))

    code = p.finish(300)
    if code != 0:
        print("".join(p.lines[-40:]))
        fail(f"the job exited {code}")


not_ready_before_the_job_assembles()
with tempfile.TemporaryDirectory() as checkpoints:
    a_training_job_moves_its_metrics(checkpoints)
print("PASS")
