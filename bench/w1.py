"""Benchmarks W1, W2, W5 and growth (issue 14), with the crypto bound and
the bare ZeroMQ + LMDB baseline.

One referrald on 127.0.0.1 with a fresh store (every commit with fsync). A
desk (sh.12355.desk) sends routine referrals with 1 KiB narratives to
qd.police with w1_load send (libreferral's ref_send_async); qd.police's
application, w1_load receive, takes them with ref_receive() and confirms
each (credit 256). Both stamp CLOCK_MONOTONIC per message id and print the
stamps at the end. Modes:

  w1      COUNT (20,000) referrals, at most 256 sent and not yet answered
          by the broker; --runs (3) runs; median, min and max. Per run:
          throughput from the first submit to the last hand-over; broker
          CPU per referral (/proc/PID/stat utime + stime, before and after,
          every thread); client CPU per referral (sender + receiver, their
          rusage); the broker's commits; the disk's flush requests per
          referral (/proc/diskstats: every fsync of broker and clients);
          the 1-minute load; the bare 4 KiB write + fsync p50 of the
          store's file system. Then the crypto bound (crypto_costs and
          crypto_per_referral below) and measured/bound.
  bare    bare_loop (bench/bare_loop.c) with the same count and window,
          then one W1 run (--runs to change), and in the same invocation:
          broker CPU per referral outside its signature work, and its ratio
          to what the bare loop spends on as many frames.
  w2      open loop, --rate (1,000) referrals/s for --seconds (10), --runs
          (3): p50, p99 and max from submit (just before ref_send_async) to
          hand-over (ref_receive returned it), both CLOCK_MONOTONIC here.
  w5      --count (1,000,000) referrals queued for qd.police while nothing
          takes them (two senders), then kill -9 of the broker and a
          restart: restart to first hand-over, the broker's RssAnon after
          the first delivery, and the rate the backlog is served at for
          --drain-seconds (10).
  growth  W1 (COUNT referrals) with --depths (0,100000,1000000) referrals
          queued for qd.school, which does not consume; the W1 rates and
          max/min.

Usage (a release build; never in CI):
  meson setup build-release -Dbuildtype=release && ninja -C build-release
  meson test -C build-release --suite bench w1 --verbose   (w1_bare, w2, w5, w1_growth)
or directly:
  PYTHONPATH=BUILD/proto:test/integration REFERRALD=BUILD/broker/referrald \\
  REFERRALCTL=BUILD/tools/referralctl REFERRAL_W1_LOAD=BUILD/bench/w1_load \\
  REFERRAL_BARE_LOOP=BUILD/bench/bare_loop /usr/bin/python3 bench/w1.py w1 --runs 3
Prints one line per run, a summary, and a final JSON line.
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "integration"))

import harness as h  # noqa: E402

W1_LOAD = os.environ.get("REFERRAL_W1_LOAD", "w1_load")
BARE_LOOP = os.environ.get("REFERRAL_BARE_LOOP", "bare_loop")
DESK, POLICE = "sh.12355.desk", "qd.police"
IDLE = "qd.school"                              # growth: queued for it, never taken
FILLERS = ("qd.hospital", "qd.civil")           # growth: who queues them
STORE_MAP = 64 << 30                            # room for 1,000,000 referrals and more
PROC_TIMEOUT_S = 3600                           # no client runs longer than this


# ---- measuring helpers --------------------------------------------------------

def cpu_s(pid):
    """User + system CPU seconds of process pid (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def load1():
    return os.getloadavg()[0]


def fsync_p50_ms(where, n=200):
    """p50 of write(4 KiB) + fsync on the file system at where, in ms."""
    path = os.path.join(where, "fsync-probe")
    times = []
    with open(path, "wb") as f:
        for _ in range(n):
            start = time.perf_counter()
            f.write(os.urandom(4096))
            f.flush()
            os.fsync(f.fileno())
            times.append((time.perf_counter() - start) * 1000)
    os.unlink(path)
    return statistics.median(times)


def disk_flushes(path):
    """Flush requests the disk under path has completed (/proc/diskstats,
    Linux 5.5 and later): every fsync of every process ends in one or
    more. Machine-wide, so other work on the disk counts too; None when
    the kernel does not say."""
    dev = os.stat(path).st_dev
    with open("/proc/diskstats") as f:
        for line in f:
            p = line.split()
            if int(p[0]) == os.major(dev) and int(p[1]) == os.minor(dev) and len(p) >= 20:
                return int(p[18])
    return None


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def scrape_commits(port):
    """(commits, milliseconds spent committing) so far, from the broker's
    metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith("referral_commit_duration_seconds_") and "le=" not in line:
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    return (int(vals.get("referral_commit_duration_seconds_count", 0)),
            vals.get("referral_commit_duration_seconds_sum", 0.0) * 1000)


# ---- processes ------------------------------------------------------------------

class Load:
    """One w1_load process (send or receive) as an agency, its output in
    files under work; waited for by PID with its rusage."""

    def __init__(self, t, b, agency, work, name, args):
        self.out_path = os.path.join(work, name + ".out")
        self.err_path = os.path.join(work, name + ".err")
        env = dict(os.environ, REFERRAL_AGENCY=agency, REFERRAL_KEYS=t.keydir,
                   REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                   REFERRAL_BROKER=b.id, REFERRAL_ENDPOINT=b.endpoint,
                   REFERRAL_STATE=os.path.join(work, name + ".state"))
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([W1_LOAD, *args], env=env, stdout=out, stderr=err)
        self.cpu = None
        self.rc = None

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def wait_ready(self, timeout_s=30):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "w1_load: ready" in self.stderr():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"w1_load did not connect:\n{self.stderr()[-2000:]}")

    def wait(self, timeout_s=PROC_TIMEOUT_S):
        """Exit status and CPU seconds (rusage), waiting at most timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid == self.proc.pid:
                self.rc = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.rc
                self.cpu = usage.ru_utime + usage.ru_stime
                return self.rc
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"w1_load ran over {timeout_s} s:\n{self.stderr()[-2000:]}")

    def kill(self):
        if self.proc.returncode is None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)

    def output(self):
        """Stamps {message id: [us...]} of S or R lines, and the summary."""
        stamps, summary = {}, {}
        with open(self.out_path) as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("S", "R"):
                    stamps.setdefault(parts[1], [int(x) for x in parts[2:]])
                elif parts and parts[0] == "#":
                    summary = dict(p.split("=", 1) for p in parts[2:])
        return stamps, {k: int(v) for k, v in summary.items()}


def start_broker(t, work):
    port = h.free_port()
    os.makedirs(os.path.join(work, "broker"))
    b = h.Broker(trust=t, workdir=os.path.join(work, "broker"),
                 store__map_size_bytes=STORE_MAP, metrics__listen=f"127.0.0.1:{port}")
    b.metrics_port = port
    return b.start()


def fill(t, b, work, to, count, senders, tag):
    """count referrals queued for to, by the agencies senders in parallel
    (each its own w1_load send, window 256, not waiting for DELIVERED)."""
    if count <= 0:
        return 0.0
    started = time.monotonic()
    shares = [count // len(senders) + (i < count % len(senders)) for i in range(len(senders))]
    loads = [Load(t, b, s, work, f"{tag}-{s}", ["send", "--to", to, "--count", str(n),
                                                "--drain-ms", "0"])
             for s, n in zip(senders, shares) if n > 0]
    try:
        for ld in loads:
            if ld.wait() != 0:
                raise RuntimeError(f"filling failed:\n{ld.stderr()[-2000:]}")
    finally:
        for ld in loads:
            ld.kill()
    return time.monotonic() - started


# ---- W1 and W2 ----------------------------------------------------------------

class Meter:
    """The broker's CPU seconds, commits and the disk's flushes between
    start() and stop()."""

    def __init__(self, b):
        self.b = b

    def read(self):
        commits, commit_ms = scrape_commits(self.b.metrics_port)
        return {"cpu": cpu_s(self.b.proc.pid), "flushes": disk_flushes(self.b.dir),
                "commits": commits, "commit_ms": commit_ms}

    def start(self):
        self.at0 = self.read()

    def stop(self):
        at1 = self.read()
        self.delta = {k: (at1[k] - self.at0[k]) if at1[k] is not None else None for k in at1}


def run_pair(t, b, work, send_args, count, tag):
    """Receiver (connected first), then sender, against broker b: their
    Loads, once both ended, and the broker's Meter over the run."""
    recv = Load(t, b, POLICE, work, f"{tag}-recv", ["receive", "--count", str(count)])
    send = None
    meter = Meter(b)
    try:
        recv.wait_ready()
        meter.start()
        send = Load(t, b, DESK, work, f"{tag}-send", ["send", "--to", POLICE, *send_args])
        rcs = (send.wait(), recv.wait())
        time.sleep(0.3)               # the last settles reach the broker
        meter.stop()
    finally:
        recv.kill()
        if send is not None:
            send.kill()
    if rcs != (0, 0):
        print(f"{tag}: sender exit {rcs[0]}, receiver exit {rcs[1]}\n"
              f"{send.stderr()[-1500:]}{recv.stderr()[-1500:]}", file=sys.stderr)
    return send, recv, meter.delta


def latencies(sent, handed, stamp):
    """Sorted ms from sent[m][stamp] (0: the call, 2: when due) to the
    hand-over of each referral handed over (and due, for stamp 2)."""
    return sorted((handed[m][0] - s[stamp]) / 1000 for m, s in sent.items()
                  if m in handed and s[stamp])


def one_load_run(t, b, work, send_args, count, tag):
    """A sender and a receiver through broker b; returns the run's figures."""
    load_before = load1()
    send, recv, d = run_pair(t, b, work, send_args, count, tag)
    sent, s_sum = send.output()
    handed, _ = recv.output()
    first = min(v[0] for v in sent.values())
    last_call = max(v[0] for v in sent.values())
    last = max(v[0] for v in handed.values())
    lat = latencies(sent, handed, 0)
    # Open loop: also from when each was due, which counts the time a
    # sender that fell behind its schedule kept a referral waiting.
    sched = latencies(sent, handed, 2) or [0.0]
    n = len(lat)
    return {
        "sent": len(sent), "accepted": s_sum.get("accepted", 0), "handed": n,
        # Referrals the receiver was handed that this run's sender did not
        # send (a previous run's, handed again to a fresh receiver state).
        "foreign": len(handed) - n,
        "throughput": n / ((last - first) / 1e6),
        "send_rate": (len(sent) - 1) / max(1e-6, (last_call - first) / 1e6),
        "broker_cpu_us": d["cpu"] * 1e6 / n,
        "sender_cpu_us": send.cpu * 1e6 / n, "receiver_cpu_us": recv.cpu * 1e6 / n,
        "client_cpu_us": (send.cpu + recv.cpu) * 1e6 / n,
        "receipts_per_ref": s_sum.get("receipts", 0) / n,
        "notices_per_ref": s_sum.get("notices", 0) / n,
        "disk_flushes_per_ref": d["flushes"] / n if d["flushes"] is not None else -1,
        "commits": d["commits"], "refs_per_commit": n / max(1, d["commits"]),
        "commit_mean_ms": d["commit_ms"] / max(1, d["commits"]),
        "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99), "max_ms": lat[-1],
        "due_p50_ms": pct(sched, 0.50), "due_p99_ms": pct(sched, 0.99),
        "load1_before": load_before, "load1": load1(),
        "fsync_p50_ms": fsync_p50_ms(b.dir),
    }


def print_w1(r):
    depth = f" depth={r['depth']}" if r["depth"] else ""
    foreign = f" foreign={r['foreign']}" if r["foreign"] else ""
    print(f"run={r['run']}{depth} handed={r['handed']}/{r['sent']}{foreign} "
          f"throughput={r['throughput']:.0f}/s broker_cpu={r['broker_cpu_us']:.0f}us/ref "
          f"client_cpu={r['client_cpu_us']:.0f}us/ref (sender {r['sender_cpu_us']:.0f}, "
          f"receiver {r['receiver_cpu_us']:.0f}) commits={r['commits']} "
          f"({r['refs_per_commit']:.2f} ref/commit, mean {r['commit_mean_ms']:.2f} ms) "
          f"disk_flushes/ref={r['disk_flushes_per_ref']:.1f} "
          f"receipts/ref={r['receipts_per_ref']:.2f} notices/ref={r['notices_per_ref']:.2f} "
          f"load1={r['load1_before']:.2f}->{r['load1']:.2f} "
          f"fsync_p50={r['fsync_p50_ms']:.2f}ms", flush=True)


def w1_rounds(t, count, window, run, depth=0, rounds=1):
    """rounds W1 runs on one fresh broker, with depth referrals queued
    first for IDLE (growth: filled once, measured several times)."""
    work = tempfile.mkdtemp(prefix="referral-w1-")
    b = None
    try:
        b = start_broker(t, work)
        fill_s = fill(t, b, work, IDLE, depth, FILLERS, "fill")
        rs = []
        for k in range(rounds):
            label = f"run{run}" if rounds == 1 else f"run{run}-{k + 1}"
            r = one_load_run(t, b, work, ["--count", str(count), "--window", str(window)],
                             count, label)
            r.update(run=run if rounds == 1 else f"{run}.{k + 1}", depth=depth,
                     fill_s=round(fill_s, 1))
            print_w1(r)
            rs.append(r)
        return rs
    finally:
        if b is not None:
            b.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def w1_run(t, count, window, run, depth=0):
    """A W1 run on a fresh broker, with depth referrals queued first for
    IDLE (growth)."""
    return w1_rounds(t, count, window, run, depth)[0]


def w2_run(t, rate, seconds, run):
    work = tempfile.mkdtemp(prefix="referral-w2-")
    b = None
    try:
        b = start_broker(t, work)
        r = one_load_run(t, b, work, ["--rate", str(rate), "--seconds", str(seconds)],
                         rate * seconds, f"run{run}")
        r["run"] = run
        print(f"run={run} handed={r['handed']}/{r['sent']} send_rate={r['send_rate']:.0f}/s "
              f"throughput={r['throughput']:.0f}/s p50={r['p50_ms']:.2f}ms "
              f"p99={r['p99_ms']:.2f}ms max={r['max_ms']:.2f}ms (from the schedule: "
              f"p50={r['due_p50_ms']:.2f}ms p99={r['due_p99_ms']:.2f}ms) "
              f"broker_cpu={r['broker_cpu_us']:.0f}us/ref client_cpu={r['client_cpu_us']:.0f}"
              f"us/ref load1={r['load1_before']:.2f}->{r['load1']:.2f} "
              f"fsync_p50={r['fsync_p50_ms']:.2f}ms", flush=True)
        return r
    finally:
        if b is not None:
            b.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def spread(runs, key):
    xs = [r[key] for r in runs]
    return statistics.median(xs), min(xs), max(xs)


# ---- the crypto bound ---------------------------------------------------------

def openssl_speed(*args):
    r = subprocess.run(["openssl", "speed", "-seconds", "1", *args], capture_output=True,
                       text=True, timeout=120)
    return r.stdout


def sodium_costs(seconds=0.5):
    """Seconds per Ed25519 sign and verify (of 256 bytes, about an
    envelope's signing input) and per X25519 multiplication (variable and
    fixed base), on one core, through libsodium as common/sign.c and
    common/seal.c call it (ctypes: about a microsecond per call more);
    None when libsodium cannot be loaded."""
    name = ctypes.util.find_library("sodium")
    if name is None:
        return None
    na = ctypes.CDLL(name)
    if na.sodium_init() < 0:
        return None
    buf = ctypes.create_string_buffer
    pk, sk, sig, msg = buf(32), buf(64), buf(64), buf(bytes(range(256)), 256)
    q, n, p = buf(32), buf(bytes(range(1, 33)), 32), buf(32)
    na.crypto_sign_ed25519_seed_keypair(pk, sk, buf(bytes(32), 32))
    na.crypto_scalarmult_base(p, n)
    mlen = ctypes.c_ulonglong(256)
    calls = {
        "sign": lambda: na.crypto_sign_ed25519_detached(sig, None, msg, mlen, sk),
        "verify": lambda: na.crypto_sign_ed25519_verify_detached(sig, msg, mlen, pk),
        "x25519": lambda: na.crypto_scalarmult(q, n, p),
        "x25519_base": lambda: na.crypto_scalarmult_base(q, n),
    }
    costs = {}
    for op, call in calls.items():
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(50):
                call()
            done += 50
        costs[op] = (time.perf_counter() - start) / done
    return costs


def crypto_costs():
    """Seconds per operation on one core. openssl speed for Ed25519 and
    X25519 (OpenSSL's own figures, printed for reference) and for
    AES-256-GCM (which seal.c does with OpenSSL); libsodium, timed here,
    for Ed25519 and X25519, which sign.c and seal.c do with libsodium. The
    bound uses the library the code uses."""
    ed = re.search(r"EdDSA \(Ed25519\)\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)",
                   openssl_speed("ed25519"))
    x = re.search(r"ecdh \(X25519\)\s+\S+\s+([\d.]+)", openssl_speed("ecdhx25519"))
    costs = {"openssl_sign": 1 / float(ed.group(1)), "openssl_verify": 1 / float(ed.group(2)),
             "openssl_x25519": 1 / float(x.group(1))}
    for size in (1024, 4096):
        out = openssl_speed("-evp", "aes-256-gcm", "-bytes", str(size))
        g = re.search(r"AES-256-GCM\s+([\d.]+)k", out)
        costs[f"aes{size}"] = size / (float(g.group(1)) * 1000)   # '1000s of bytes'/s
    sodium = sodium_costs()
    costs.update(sodium or {"sign": costs["openssl_sign"], "verify": costs["openssl_verify"],
                            "x25519": costs["openssl_x25519"],
                            "x25519_base": costs["openssl_x25519"]})
    costs["source"] = "libsodium" if sodium else "openssl speed"
    return costs


def crypto_per_referral(receipts, notices, readers=1):
    """Crypto operations per referral on the real path, by process, from
    the code (client-lib/envelope.c, common/sign.c, common/seal.c,
    broker/ingress.c, broker/verify.c, broker/delivery.c,
    broker/escalate.c, client-lib/delivery.c):

    The referral. The sender signs the envelope once (envelope_compose,
    sign_envelope) and seals the body (seal_body): per reader an ephemeral
    X25519 key (crypto_scalarmult_base) and the shared secret with the
    reader's key (crypto_scalarmult, in wrap_key), and AES-256-GCM over the
    padded body (a 1 KiB narrative lands in the 4 KiB bucket) plus 32
    bytes per reader (neglected). The readers are the recipient and its
    escalation chain in the directory: 1 here. The broker verifies the
    signature once at ingress (broker/ingress.c, on a verify worker,
    broker/verify.c); its SubmitReply (ACCEPTED) is not signed. The
    receiver verifies (open_checked) and opens (seal_open: one
    crypto_scalarmult, AES-256-GCM over 4 KiB).

    Its DELIVERED word, counted per referral from what the desk received.
    A notice (notices per referral): the recipient's broker signs it when
    the receiver settles (escalate_on_final, tell_delivered,
    delivery_notify: sign_detached), and the desk verifies it
    (delivery_from_notice). A receipt (receipts per referral; what the
    library sent before the broker's notice replaced it): the receiving
    library signs and seals it for the desk alone (a fixed-base and a
    variable-base multiplication, AES over the 1 KiB bucket), the broker
    verifies it at ingress, the desk verifies and opens it (one
    multiplication, AES 1 KiB).

    Hashes (SHA-256 of headers and bodies, HKDF) and CURVE's per-frame
    XSalsa20-Poly1305 are not counted: small against these."""
    return {
        "sender": {"sign": 1, "x25519_base": readers, "x25519": readers, "aes4096": 1,
                   "verify": receipts + notices, "x25519_r": receipts, "aes1024": receipts},
        "broker": {"verify": 1 + receipts, "sign": notices},
        "receiver": {"verify": 1, "x25519": 1, "aes4096": 1, "sign": receipts,
                     "x25519_base": receipts, "x25519_r": receipts, "aes1024": receipts},
    }


def seconds_of(ops, costs):
    return sum(n * costs["x25519" if op == "x25519_r" else op] for op, n in ops.items())


def crypto_bound(costs, receipts, notices):
    """Referrals/s if the 2 cores did nothing but this crypto."""
    per = crypto_per_referral(receipts, notices)
    by_proc = {p: seconds_of(ops, costs) for p, ops in per.items()}
    return os.cpu_count() / sum(by_proc.values()), by_proc, per


def us(costs, key):
    return f"{costs[key] * 1e6:.1f} us"


def print_bound(costs, runs):
    receipts = statistics.median(r["receipts_per_ref"] for r in runs)
    notices = statistics.median(r["notices_per_ref"] for r in runs)
    bound, by_proc, per = crypto_bound(costs, receipts, notices)
    measured = statistics.median(r["throughput"] for r in runs)
    print(f"crypto per op, one core: openssl speed Ed25519 sign {us(costs, 'openssl_sign')}, "
          f"verify {us(costs, 'openssl_verify')}, X25519 {us(costs, 'openssl_x25519')}, "
          f"AES-256-GCM 1 KiB {us(costs, 'aes1024')}, 4 KiB {us(costs, 'aes4096')}; "
          f"{costs['source']} (used) Ed25519 sign {us(costs, 'sign')}, verify "
          f"{us(costs, 'verify')}, X25519 {us(costs, 'x25519')}, fixed base "
          f"{us(costs, 'x25519_base')}")
    print(f"crypto per referral (receipts/ref {receipts:.2f}, notices/ref {notices:.2f}): "
          + ", ".join(f"{p} {s * 1e6:.0f} us" for p, s in by_proc.items())
          + f"; bound {bound:.0f}/s on {os.cpu_count()} cores; measured {measured:.0f}/s = "
          f"{measured / bound:.2f} of the bound", flush=True)
    return {"costs_us": {k: v * 1e6 for k, v in costs.items() if k != "source"},
            "source": costs["source"], "ops": per,
            "crypto_us": {p: s * 1e6 for p, s in by_proc.items()}, "bound": bound,
            "measured_over_bound": measured / bound}


# ---- bare ---------------------------------------------------------------------

def frames_per_referral(receipts, notices):
    """Frames through the broker's client socket per referral (in + out),
    at most: the referral's Submit, SubmitReply, Delivery, Settle,
    SettleReply and the receiver's Credit; per DELIVERED receipt the same
    six again (desk side); per DELIVERED notice its Delivery, Settle,
    SettleReply and the desk's Credit. A Credit frame is counted whole,
    though libreferral may give back the credit of many deliveries in one."""
    return 6 + 6 * receipts + 4 * notices


def bare(count, window, curve=True):
    work = tempfile.mkdtemp(prefix="referral-bare-")
    try:
        args = [BARE_LOOP, "--count", str(count), "--window", str(window), "--dir", work]
        r = subprocess.run(args + (["--curve"] if curve else []), capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"bare_loop failed: {r.stderr}")
        line = r.stdout.strip().splitlines()[-1]
        print(line, f"load1={load1():.2f}", flush=True)
        vals = dict(p.split("=", 1) for p in line.split()[1:])
        return {"msgs_per_s": float(vals["msgs_per_s"]),
                "us_per_msg": float(vals["server_cpu_us_per_msg"]),
                "mean_batch": float(vals["mean_batch"]), "load1": load1()}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_outside(costs, runs, b):
    """Broker CPU per referral outside signature work against the bare
    loop's cost of as many frames (a bare message is one frame in and its
    ack out, with one LMDB put: two frames)."""
    r = sorted(runs, key=lambda x: x["throughput"])[len(runs) // 2]   # the median run
    receipts, notices = r["receipts_per_ref"], r["notices_per_ref"]
    ops = crypto_per_referral(receipts, notices)["broker"]
    sig_us = (ops["verify"] * costs["verify"] + ops["sign"] * costs["sign"]) * 1e6
    outside = r["broker_cpu_us"] - sig_us
    frames = frames_per_referral(receipts, notices)
    bare_us = b["us_per_msg"] / 2 * frames
    print(f"broker CPU per referral {r['broker_cpu_us']:.0f} us, of which signature work "
          f"{sig_us:.0f} us ({ops['verify']:.2f} verify + {ops['sign']:.2f} sign); outside "
          f"signature work {outside:.0f} us; {frames:.1f} frames through the broker per "
          f"referral cost the bare loop {bare_us:.1f} us ({b['us_per_msg']:.2f} us per message "
          f"of 2 frames); ratio {outside / bare_us:.1f}", flush=True)
    return {"broker_cpu_us": r["broker_cpu_us"], "signature_us": sig_us, "outside_us": outside,
            "frames_per_referral": frames, "bare_us_for_frames": bare_us,
            "ratio": outside / bare_us}


# ---- W5 -----------------------------------------------------------------------

def sample_rss(pid, samples, stop):
    """(monotonic us, RssAnon KiB) every 50 ms until stop."""
    while not stop.is_set():
        try:
            samples.append((time.monotonic_ns() // 1000, rss_anon_kib(pid)))
        except OSError:
            return
        stop.wait(0.05)


def restart_and_drain(t, b, work, count, drain_s):
    """kill -9 broker b, start it again on its store, and take from its
    backlog for drain_s seconds from the first hand-over, sampling its
    RssAnon meanwhile. Returns the figures of W5."""
    b.kill()                                     # kill -9, by PID
    restart_us = time.monotonic_ns() // 1000
    b.start(timeout_s=600)
    listening_us = time.monotonic_ns() // 1000
    samples, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(b.proc.pid, samples, stop))
    sampler.start()
    recv = Load(t, b, POLICE, work, "drain", ["receive", "--count", str(count),
                                              "--seconds", str(drain_s)])
    try:
        rc = recv.wait(timeout_s=drain_s + 600)
    finally:
        stop.set()
        sampler.join(timeout=10)
        recv.kill()
    _, s = recv.output()
    if rc != 0 or not s.get("handed"):
        raise RuntimeError(f"the receiver failed:\n{recv.stderr()[-2000:]}")
    first, last = s["first_us"], s["last_us"]
    after_first = [kib for at, kib in samples if at >= first] or [0]
    return {"restart_to_listening_ms": (listening_us - restart_us) / 1000,
            "receiver_connect_ms": (s["ready_us"] - s["start_us"]) / 1000,
            "restart_to_first_ms": (first - restart_us) / 1000,
            "rss_anon_after_first_mib": after_first[0] / 1024,
            "rss_anon_max_mib": max(kib for _, kib in samples) / 1024,
            "drained": s["handed"],
            "drain_per_s": (s["handed"] - 1) / max(1e-6, (last - first) / 1e6)}


def w5(t, count, drain_s):
    work = tempfile.mkdtemp(prefix="referral-w5-")
    b = None
    try:
        b = start_broker(t, work)
        fill_s = fill(t, b, work, POLICE, count, (DESK, FILLERS[0]), "fill")
        print(f"filled {count} for {POLICE} in {fill_s:.0f} s ({count / fill_s:.0f}/s); "
              f"RssAnon {rss_anon_kib(b.proc.pid) / 1024:.1f} MiB", flush=True)
        r = {"count": count, "fill_s": fill_s, "fill_per_s": count / fill_s,
             **restart_and_drain(t, b, work, count, drain_s),
             "load1": load1(), "fsync_p50_ms": fsync_p50_ms(b.dir)}
        print(f"W5: {count} queued; restart to listening {r['restart_to_listening_ms']:.0f} ms, "
              f"restart to first hand-over {r['restart_to_first_ms']:.0f} ms (receiver connect "
              f"{r['receiver_connect_ms']:.0f} ms); RssAnon after first delivery "
              f"{r['rss_anon_after_first_mib']:.1f} MiB (max {r['rss_anon_max_mib']:.1f}); "
              f"backlog served at {r['drain_per_s']:.0f}/s for {drain_s} s "
              f"({r['drained']} handed); load1={r['load1']:.2f} "
              f"fsync_p50={r['fsync_p50_ms']:.2f}ms", flush=True)
        return r
    finally:
        if b is not None:
            b.cleanup()
        shutil.rmtree(work, ignore_errors=True)


# ---- main ---------------------------------------------------------------------

def summary(name, runs, keys):
    """Median, min and max of keys over runs, printed on one line."""
    med = {k: spread(runs, k) for k in keys}
    print(f"{name} over {len(runs)} runs (median, min, max): " + "; ".join(
        f"{k} {m:.2f} ({lo:.2f}-{hi:.2f})" for k, (m, lo, hi) in med.items()), flush=True)
    return med


def mode_w1(t, a, count, runs):
    """w1 and bare: the runs, the crypto bound, and (bare) the baseline."""
    b = bare(count, a.window) if a.mode == "bare" else None
    rs = [w1_run(t, count, a.window, i + 1) for i in range(runs)]
    result = {"runs": rs, "summary": summary("W1", rs, (
        "throughput", "broker_cpu_us", "client_cpu_us", "disk_flushes_per_ref", "load1",
        "fsync_p50_ms"))}
    if not a.no_crypto or b is not None:
        costs = crypto_costs()
        result["crypto"] = print_bound(costs, rs)
        if b is not None:
            result.update(bare=b, outside=print_outside(costs, rs, b))
    return result, rs


def mode_w2(t, a, runs):
    rs = [w2_run(t, a.rate, a.seconds, i + 1) for i in range(runs)]
    return {"runs": rs, "summary": summary("W2", rs, (
        "send_rate", "throughput", "p50_ms", "p99_ms", "max_ms", "due_p99_ms", "load1"))}, rs


def mode_growth(t, a, count, runs):
    """Per depth, one broker filled once and runs W1 rounds on it; the
    medians are compared (one run per depth cannot tell growth from noise:
    W1's own run-to-run spread is wider than 10% on this machine)."""
    depths = [int(x) for x in a.depths.split(",")]
    rs, medians = [], []
    for i, d in enumerate(depths):
        got = w1_rounds(t, count, a.window, i + 1, depth=d, rounds=runs)
        rs += got
        rates = [r["throughput"] for r in got]
        medians.append((d, statistics.median(rates), min(rates), max(rates)))
    mids = [m for _, m, _, _ in medians]
    print("growth: W1 median " + ", ".join(f"{m:.0f}/s ({lo:.0f}-{hi:.0f}) with {d} queued"
                                           for d, m, lo, hi in medians)
          + f"; max/min of the medians {max(mids) / min(mids):.2f} ({runs} runs per depth)",
          flush=True)
    return {"runs": rs, "medians": medians, "max_over_min": max(mids) / min(mids)}, rs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("mode", nargs="?", default="w1", choices=("w1", "bare", "w2", "w5", "growth"))
    ap.add_argument("--count", type=int, help="referrals (w1, bare, growth: 20000; w5: 1000000)")
    ap.add_argument("--window", type=int, default=256, help="w1, bare, growth: window")
    ap.add_argument("--runs", type=int, help="runs (w1, w2: 3; bare: 1; growth: 3 per depth)")
    ap.add_argument("--rate", type=int, default=1000, help="w2: referrals per second")
    ap.add_argument("--seconds", type=int, default=10, help="w2: seconds of load")
    ap.add_argument("--drain-seconds", type=int, default=10, help="w5: seconds of draining")
    ap.add_argument("--depths", default="0,100000,1000000",
                    help="growth: referrals queued for another agency, per run")
    ap.add_argument("--no-crypto", action="store_true", help="w1: skip openssl speed")
    a = ap.parse_args()
    count = a.count or (1_000_000 if a.mode == "w5" else 20000)
    runs = a.runs or (1 if a.mode == "bare" else 3)
    t = h.Trust()
    try:
        result, rs = {"mode": a.mode, "load1_at_start": load1()}, []
        if a.mode in ("w1", "bare"):
            more, rs = mode_w1(t, a, count, runs)
        elif a.mode == "w2":
            more, rs = mode_w2(t, a, runs)
        elif a.mode == "w5":
            more = {"w5": w5(t, count, a.drain_seconds)}
        else:
            more, rs = mode_growth(t, a, count, a.runs or 3)
        result.update(more)
        print(json.dumps(result))
        sys.exit(1 if any(r["handed"] != r["sent"] for r in rs) else 0)
    finally:
        t.cleanup()


if __name__ == "__main__":
    main()
