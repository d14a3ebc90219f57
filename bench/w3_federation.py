"""Benchmark W3: the W2 load through a federation.

W2 is 1,000 referrals/s for 10 s, each with a ~1 KiB case file, signed
(Ed25519) and sealed (X25519 + AES-256-GCM) as docs/protocol.md says. W3
sends it from a Shanghai desk through three brokers on 127.0.0.1 (the desk's
broker, a national hub, the Qingdao broker, each with its own store, every
commit with fsync) to the Qingdao youth league's application, w3_agent on
libreferral, and measures submit to hand-over: from the moment the desk's
Submit frame is sent to the moment ref_receive() hands the referral to the
application (stored durably in the library, settled with the broker).

The envelopes are made before the clock starts, by two helper processes
(Python signs and seals at about 1.2 ms each: too slow to make 1,000/s
while sending); the sender then paces prepared Submit frames at the rate,
open loop (it never waits for an answer before the next send), and collects
the SubmitReplies as they come. Each run starts fresh brokers and a fresh
agent; 200 referrals go through first as a warm-up, not measured.

Also printed, to say where the time goes: each broker's mean commit time
(its referral_commit_duration_seconds), the submit-to-ACCEPTED latency at
the desk's broker, and a bare fsync of 4 KiB on the file system the stores
use.

Usage (a release build; never in CI):
  meson setup build-release -Dbuildtype=release && ninja -C build-release
  meson test -C build-release --suite bench w3_federation --verbose
or directly:
  PYTHONPATH=BUILD/proto:test/integration REFERRALD=BUILD/broker/referrald \\
  REFERRALCTL=BUILD/tools/referralctl REFERRAL_W3_AGENT=BUILD/bench/w3_agent \\
  /usr/bin/python3 bench/w3_federation.py --runs 3
Prints one line per run and a final line of medians (and a JSON line).
"""

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "integration"))

import zmq  # noqa: E402

import harness as h  # noqa: E402
from harness import pb  # noqa: E402

SH, HUB, QD = "broker.shanghai", "broker.hub", "broker.qingdao"
DESK, LEAGUE = "sh.12355.desk", "qd.youth-league"
AGENT = os.environ.get("REFERRAL_W3_AGENT", "w3_agent")
WARMUP = 200
_trust = None                     # the helpers' Trust (inherited at fork)


def _make(args):
    """Prepared Submit frames for request ids first..first+n-1: (message id
    hex, frame bytes). Runs in a helper process."""
    first, n, body = args
    out = []
    for i in range(first, first + n):
        env = h.make_envelope(DESK, LEAGUE, body_size=body, trust=_trust)
        frame = pb.ClientFrame(version=h.V1, submit=pb.Submit(request_id=i, envelope=env))
        out.append((h.header_of(env).message_id.hex(), frame.SerializeToString()))
    return out


def prepare(t, count, body):
    global _trust
    _trust = t
    chunks = [(i, min(500, count + 1 - i), body) for i in range(1, count + 1, 500)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return [x for part in pool.map(_make, chunks) for x in part]


def scrape(port):
    """The figures W3 reads from a broker's metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    vals = {}
    for line in text.splitlines():
        if line.startswith(("referral_commit_duration_seconds_", "referral_queue_depth",
                            "referral_in_flight ", "referral_peer_in_flight")) and \
                "le=" not in line:
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    return vals


def backlog(m):
    """Messages queued (every urgency) and in flight at a broker."""
    return int(sum(v for k, v in m.items() if k.startswith(("referral_queue_depth",
                                                             "referral_in_flight ",
                                                             "referral_peer_in_flight"))))


def fsync_ms(where, n=200):
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


def cpu_s(pid):
    """User + system CPU seconds of process pid (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))]


class Federation:
    def __init__(self, t):
        self.trust = t
        ports = {b: h.free_port() for b in (SH, HUB, QD)}
        self.metrics = {b: h.free_port() for b in (SH, HUB, QD)}

        def ep(b):
            return f"tcp://127.0.0.1:{ports[b]}"

        def cfg(b, **extra):
            return dict({"federation__peer_listen": ep(b),
                         "metrics__listen": f"127.0.0.1:{self.metrics[b]}"}, **extra)

        self.brokers = [
            h.Broker(HUB, trust=t, **cfg(HUB, **{f"peers__{SH}": ep(SH), f"peers__{QD}": ep(QD)})),
            h.Broker(QD, trust=t, **cfg(QD, **{f"peers__{HUB}": ep(HUB), "routes__default": HUB})),
            h.Broker(SH, trust=t, **cfg(SH, **{f"peers__{HUB}": ep(HUB), "routes__default": HUB})),
        ]
        self.hub, self.qd, self.sh = self.brokers

    def start(self):
        for b in self.brokers:
            b.start()
        deadline = time.monotonic() + 20
        while f"link connected peer={HUB}" not in self.sh.read_log() or \
                f"link connected peer={HUB}" not in self.qd.read_log():
            if time.monotonic() > deadline:
                raise RuntimeError("the links did not come up")
            time.sleep(0.05)

    def cleanup(self):
        for b in self.brokers:
            b.cleanup()


def started_federation(t, tries=3):
    """Three brokers up and linked; new ports when one was taken meanwhile
    (free_port() only says a port was free a moment ago)."""
    for attempt in range(tries):
        fed = Federation(t)
        try:
            fed.start()
            return fed
        except RuntimeError as e:
            fed.cleanup()
            if "Address already in use" not in str(e) or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def one_run(t, frames, rate, run):
    fed = None
    state = tempfile.mkdtemp(prefix="referral-w3-")
    agent = None
    try:
        fed = started_federation(t)
        env = dict(os.environ, REFERRAL_AGENCY=LEAGUE, REFERRAL_KEYS=t.keydir,
                   REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                   REFERRAL_BROKER=QD, REFERRAL_ENDPOINT=fed.qd.endpoint,
                   REFERRAL_STATE=os.path.join(state, "lib"))
        agent = subprocess.Popen([AGENT, str(len(frames)), "30000", "256"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "ready" in agent.stderr.readline(), "w3_agent did not start"
        desk = h.Client(fed.sh, DESK)
        desk.credit(1000)                     # the desk takes its DELIVERED notices
        sock = desk.sock
        credit_one = pb.ClientFrame(version=h.V1, credit=pb.Credit(grant=1)).SerializeToString()
        sent_ns, sent_rid_ns, replied_ns, accepted = {}, {}, {}, 0

        def drain():
            nonlocal accepted
            while True:
                try:
                    raw = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                now = time.monotonic_ns()
                f = pb.BrokerFrame.FromString(raw)
                body = f.WhichOneof("body")
                if body == "submit_reply":
                    replied_ns[f.submit_reply.request_id] = now
                    accepted += f.submit_reply.code == pb.RESULT_OK
                elif body == "delivery":      # a DELIVERED notice: the desk takes it
                    sock.send(pb.ClientFrame(version=h.V1, settle=pb.Settle(
                        message_id=f.delivery.message_id,
                        verb=pb.SETTLE_VERB_ACK)).SerializeToString())
                    sock.send(credit_one)         # and grants again as it settles

        # Warm-up: not measured.
        for _, frame in frames[:WARMUP]:
            sock.send(frame)
            time.sleep(1 / rate)
        measured = frames[WARMUP:]
        time.sleep(1.0)
        drain()
        load = os.getloadavg()[0]
        pids = {b.id.split(".")[1]: b.proc.pid for b in fed.brokers}
        pids["agent"] = agent.pid
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        cpu0["python"] = time.process_time()
        cpu0["agent"] = cpu_s(agent.pid)
        wall0 = time.monotonic()
        gap_ns = int(1e9 / rate)
        t0 = time.monotonic_ns() + 10_000_000
        for i, (mid, frame) in enumerate(measured):
            due = t0 + i * gap_ns
            while True:
                now = time.monotonic_ns()
                if now >= due:
                    break
                drain()
                if due - now > 1_200_000:     # wait in poll: a reply wakes it
                    sock.poll((due - now - 200_000) // 1_000_000)
            sock.send(frame)
            sent_ns[mid] = sent_rid_ns[WARMUP + 1 + i] = time.monotonic_ns()
        send_s = (time.monotonic_ns() - t0) / 1e9
        # Where the backlog sits when the last referral has been sent.
        at_end = {b: backlog(scrape(port)) for b, port in fed.metrics.items()}
        deadline = time.monotonic() + 60
        while len(replied_ns) < len(frames) and time.monotonic() < deadline:
            sock.poll(10)
            drain()
        # The agent prints everything as it exits; read it aside while the
        # desk keeps taking its notices.
        outs = []
        reader = threading.Thread(target=lambda: outs.append(agent.stdout.read()), daemon=True)
        reader.start()
        while reader.is_alive() and time.monotonic() < deadline + 60:
            sock.poll(10)
            drain()
        reader.join(timeout=30)
        out = outs[0] if outs else ""
        err = agent.stderr.read()
        _, status, usage = os.wait4(agent.pid, 0)
        agent.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - wall0
        cpu1 = {k: cpu_s(p) for k, p in pids.items() if k != "agent"}
        cpu1["agent"] = usage.ru_utime + usage.ru_stime
        cpu1["python"] = time.process_time()
        cpu = {k: round((cpu1[k] - cpu0[k]) / wall, 2) for k in cpu1}   # cores busy
        arrived = {}
        for line in out.splitlines():
            mid, us = line.split()
            arrived.setdefault(mid, int(us) * 1000)
        lat = sorted((arrived[m] - s) / 1e6 for m, s in sent_ns.items() if m in arrived)
        acc = sorted((replied_ns[r] - s) / 1e6 for r, s in sent_rid_ns.items()
                     if r in replied_ns)
        first = min(sent_ns.values())
        last = max(arrived[m] for m in sent_ns if m in arrived)
        commits = {}
        for b, port in fed.metrics.items():
            m = scrape(port)
            n = m.get("referral_commit_duration_seconds_count", 0)
            commits[b] = (m.get("referral_commit_duration_seconds_sum", 0) * 1000 / n
                          if n else 0.0, int(n))
        desk.close()
        r = {"run": run, "sent": len(sent_ns), "accepted": accepted - WARMUP,
             "delivered": len(lat), "send_rate": len(sent_ns) / send_s,
             "throughput": len(lat) / ((last - first) / 1e9),
             "p50_ms": pct(lat, 0.50), "p99_ms": pct(lat, 0.99), "max_ms": lat[-1],
             "accept_p50_ms": pct(acc, 0.50), "accept_p99_ms": pct(acc, 0.99),
             "commit_mean_ms": {b: round(c[0], 3) for b, c in commits.items()},
             "commits": {b: c[1] for b, c in commits.items()},
             "backlog_at_end_of_sending": at_end, "cpu_cores": cpu,
             "fsync_p50_ms": fsync_ms(fed.sh.dir), "load1": load}
        print(f"run={run} sent={r['sent']} accepted={r['accepted']} delivered={r['delivered']} "
              f"send_rate={r['send_rate']:.0f}/s throughput={r['throughput']:.0f}/s "
              f"p50={r['p50_ms']:.2f}ms p99={r['p99_ms']:.2f}ms max={r['max_ms']:.2f}ms "
              f"accept_p50={r['accept_p50_ms']:.2f}ms accept_p99={r['accept_p99_ms']:.2f}ms "
              f"commit_mean_ms=" + ",".join(f"{b.split('.')[1]}:{v:.2f}"
                                           for b, v in r["commit_mean_ms"].items())
              + " commits=" + ",".join(f"{b.split('.')[1]}:{v}" for b, v in r["commits"].items())
              + " cpu_cores=" + ",".join(f"{k}:{v}" for k, v in cpu.items())
              + f"(sum {sum(cpu.values()):.2f} of {os.cpu_count()})"
              + " backlog_at_end=" + ",".join(f"{b.split('.')[1]}:{v}" for b, v in at_end.items())
              + f" fsync_p50={r['fsync_p50_ms']:.2f}ms load1={load:.2f}", flush=True)
        if err.strip():
            print(err.strip()[-2000:], file=sys.stderr)
        return r
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        if fed is not None:
            fed.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000, help="referrals per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--body", type=int, default=1024, help="case file bytes")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    t = h.Trust(brokers=(SH, HUB, QD), agencies=[DESK, LEAGUE], homes={DESK: SH, LEAGUE: QD})
    try:
        count = int(args.rate * args.seconds)
        results = []
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            frames = prepare(t, count + WARMUP, args.body)
            print(f"run={run}: {len(frames)} envelopes made in "
                  f"{time.monotonic() - started:.1f}s", flush=True)
            results.append(one_run(t, frames, args.rate, run))
        med = {k: statistics.median(r[k] for r in results) for k in
               ("send_rate", "throughput", "p50_ms", "p99_ms", "max_ms", "accept_p50_ms",
                "accept_p99_ms", "fsync_p50_ms", "load1")}
        print(f"median of {len(results)}: throughput={med['throughput']:.0f}/s "
              f"p50={med['p50_ms']:.2f}ms p99={med['p99_ms']:.2f}ms max={med['max_ms']:.2f}ms "
              f"accept_p50={med['accept_p50_ms']:.2f}ms accept_p99={med['accept_p99_ms']:.2f}ms "
              f"fsync_p50={med['fsync_p50_ms']:.2f}ms load1={med['load1']:.2f}", flush=True)
        print(json.dumps({"runs": results, "median": med}))
        lost = [r for r in results if r["delivered"] != r["sent"]]
        sys.exit(1 if lost else 0)
    finally:
        t.cleanup()


if __name__ == "__main__":
    main()
