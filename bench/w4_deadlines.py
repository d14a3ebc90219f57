"""Benchmark W4: 10,000 escalation deadlines due within the same minute
while a W1 load runs (issue 12; docs/escalation.md, docs/performance.md).

One broker on 127.0.0.1 (its own store, fsync on every commit). A crisis
policy with one step, `not_accepted alert_supervisor`, at 30 s after
creation. 10,000 crisis referrals from the Shanghai desk to the Qingdao
youth league are created with created_at spread over 50 s starting 20 s
ahead, so their deadlines fall due within one minute. Nobody accepts them,
so each deadline fires an alert. The W1 load runs meanwhile: routine
referrals (1 KiB case files) from the same desk to qd.police, whose
application (w3_agent, on libreferral) takes them as fast as it can, from
before the first deadline until after the last.

Lateness of a deadline = the alert's at_ms (the broker's clock when the
step fired, inside the transaction that queues the alert) minus its due
time. Printed per run: how many fired, worst, p99 and median lateness, and
the W1 rate handed over meanwhile; then the medians over the runs. Target:
worst under 100 ms.

The envelopes are made before the clock matters, by two helper processes
(Python signs and seals at about 1.2 ms each).

Usage (a release build; never in CI):
  meson setup build-release -Dbuildtype=release && ninja -C build-release
  meson test -C build-release --suite bench w4_deadlines --verbose
or directly:
  PYTHONPATH=BUILD/proto:test/integration REFERRALD=BUILD/broker/referrald \\
  REFERRALCTL=BUILD/tools/referralctl REFERRAL_W3_AGENT=BUILD/bench/w3_agent \\
  /usr/bin/python3 bench/w4_deadlines.py --runs 3
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

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "integration"))

import harness as h  # noqa: E402
from harness import pb  # noqa: E402

DESK, LEAGUE, POLICE = "sh.12355.desk", "qd.youth-league", "qd.police"
SUP = "qd.league-supervisor"
AGENT = os.environ.get("REFERRAL_W3_AGENT", "w3_agent")
WITHIN_MS = 30000
SPREAD_MS = 50000
LEAD_MS = 20000
POLICY = f"""[policy.w4]
version = 1
default_for = crisis
delivered_within_ms = {WITHIN_MS}
received_within_ms = {WITHIN_MS}
accepted_within_ms = {WITHIN_MS}
step = not_accepted alert_supervisor
"""
_trust = None


def _make(args):
    """Prepared Submit frames: (kind, created_at_ms, frame bytes)."""
    kind, first, n, t0, count = args
    out = []
    for i in range(first, first + n):
        if kind == "crisis":
            created = t0 + LEAD_MS + i * SPREAD_MS // count
            env = h.make_envelope(DESK, LEAGUE, urgency=pb.URGENCY_CRISIS, body_size=256,
                                  created_at_ms=created, ttl_ms=3600_000, trust=_trust)
        else:
            created = 0
            env = h.make_envelope(DESK, POLICE, body_size=1024, ttl_ms=3600_000, trust=_trust)
        f = pb.ClientFrame(version=h.V1, submit=pb.Submit(request_id=i + 1, envelope=env))
        out.append((created, h.header_of(env).message_id, f.SerializeToString()))
    return out


def prepare(t, kind, count, t0, first_rid=0):
    global _trust
    _trust = t
    chunks = [(kind, i, min(500, count - i), t0, count) for i in range(0, count, 500)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        parts = pool.map(_make, chunks)
    return [x for part in parts for x in part]


def fsync_ms(where, n=200):
    """p50 and p99 of write(4 KiB) + fsync on the file system at where, in ms:
    a deadline that falls due during a turn waits at most for that turn's
    commit, so the disk's fsync bounds the lateness from below."""
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
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1]


def one_run(t, n_deadlines, n_w1, run):
    state = tempfile.mkdtemp(prefix="referral-w4-")
    b = agent = None
    try:
        t0 = h.now_ms() + 60000       # preparing takes a while: the schedule starts after
        crisis = prepare(t, "crisis", n_deadlines, t0)
        w1 = prepare(t, "routine", n_w1, t0)
        wait = t0 / 1000 - time.time()
        if wait < 5:
            raise RuntimeError("preparing took longer than the lead; lower the counts")
        b = h.Broker(trust=t, extra_config=POLICY,
                     **{"delivery__max_deadlines_per_turn": 1024}).start()
        env = dict(os.environ, REFERRAL_AGENCY=POLICE, REFERRAL_KEYS=t.keydir,
                   REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                   REFERRAL_BROKER=b.id, REFERRAL_ENDPOINT=b.endpoint,
                   REFERRAL_STATE=os.path.join(state, "lib"))
        agent = subprocess.Popen([AGENT, str(n_w1), "120000", "256"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "ready" in agent.stderr.readline(), "w3_agent did not start"
        due = {mid: created + WITHIN_MS for created, mid, _ in crisis}
        # The crisis referrals go in first (their deadlines are ahead).
        desk = h.Client(b, DESK)
        for _, _, frame in crisis:
            desk.send_raw(frame)
        for _ in crisis:
            assert desk.recv_kind("submit_reply", 60).submit_reply.code == pb.RESULT_OK
        sup = h.Client(b, SUP)
        sup.credit(1000)
        late = []
        stop = threading.Event()

        def collect():
            while len(late) < n_deadlines and not stop.is_set():
                try:
                    f = sup.recv_kind("delivery", 1.0)
                except TimeoutError:
                    continue
                n = pb.Notice()
                n.ParseFromString(f.delivery.notice.notice)
                late.append(n.alert.at_ms - due[n.alert.message_id])
                sup.settle(f.delivery.message_id, wait=False)
                sup.credit(1)
        collector = threading.Thread(target=collect)
        collector.start()
        # W1 meanwhile: from 5 s before the first deadline, a window of 256.
        first_due = min(due.values())
        time.sleep(max(0, (first_due - 5000) / 1000 - time.time()))
        w1_desk = h.Client(b, DESK)
        start = time.monotonic()
        sent = replied = 0
        while replied < len(w1):
            while sent < len(w1) and sent - replied < 256:
                w1_desk.send_raw(w1[sent][2])
                sent += 1
            w1_desk.recv_kind("submit_reply", 60)
            replied += 1
        out, _ = agent.communicate(timeout=300)
        w1_s = time.monotonic() - start
        collector.join(timeout=120)
        stop.set()
        assert len(late) == n_deadlines, f"{len(late)} of {n_deadlines} alerts"
        late.sort()
        f50, f99 = fsync_ms(b.dir)
        with open("/proc/loadavg") as la:
            load = la.read().split()[0]
        r = {"run": run, "deadlines": len(late), "worst_ms": late[-1],
             "p99_ms": late[int(len(late) * 0.99) - 1], "median_ms": late[len(late) // 2],
             "w1_per_s": round(n_w1 / w1_s), "fsync_p50_ms": round(f50, 1),
             "fsync_p99_ms": round(f99, 1), "load1": float(load)}
        print(f"run {run}: {r['deadlines']} deadlines fired; lateness worst {r['worst_ms']} ms, "
              f"p99 {r['p99_ms']} ms, median {r['median_ms']} ms; W1 meanwhile "
              f"{r['w1_per_s']}/s; bare fsync p50 {r['fsync_p50_ms']} ms p99 "
              f"{r['fsync_p99_ms']} ms; load {load}", flush=True)
        return r
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        if b is not None:
            b.cleanup()
        shutil.rmtree(state, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--deadlines", type=int, default=10000)
    ap.add_argument("--w1", type=int, default=10000, help="routine referrals of the W1 load")
    a = ap.parse_args()
    t = h.Trust(agencies=[DESK, LEAGUE, POLICE, SUP],
                chains={LEAGUE: {"supervisor_desk": SUP}})
    try:
        runs = [one_run(t, a.deadlines, a.w1, i + 1) for i in range(a.runs)]
    finally:
        t.cleanup()
    med = {k: statistics.median(r[k] for r in runs)
           for k in ("worst_ms", "p99_ms", "median_ms", "w1_per_s", "fsync_p99_ms")}
    print(f"W4 medians over {len(runs)} runs: worst {med['worst_ms']} ms, p99 {med['p99_ms']} "
          f"ms, median {med['median_ms']} ms; W1 {med['w1_per_s']}/s; bare fsync p99 "
          f"{med['fsync_p99_ms']} ms; target worst < 100 ms: "
          f"{'met' if med['worst_ms'] < 100 else 'missed'}")
    print(json.dumps({"workload": "W4", **med, "runs": runs}))


if __name__ == "__main__":
    main()
