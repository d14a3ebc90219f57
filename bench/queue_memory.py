"""Benchmark: referrald's memory against queue depth.

Submits N referrals (default 1,000,000) with ~2 KiB case files (sealed into
the 4 KiB bucket) for a few agencies that do not consume, sampling the
broker's /proc/PID/status as the queues grow: RssAnon (the broker's own
memory, which must stay bounded), RssFile (LMDB's mapped pages: page cache
the kernel can reclaim, reported apart) and VmHWM. Then it restarts the
broker with the full store, samples again, drains 10,000 deliveries and
samples once more.

To go fast, one sealed body is made per recipient and reused under fresh
headers, each signed again: the broker verifies every signature as usual
(it cannot open bodies, so it behaves exactly as with distinct ones).

Usage (from the repository, after building into BUILD):
  PYTHONPATH=BUILD/proto:test/integration REFERRALD=BUILD/broker/referrald \\
  REFERRALCTL=BUILD/tools/referralctl /usr/bin/python3 bench/queue_memory.py --count 1000000
Needs about 5 GB of disk for 1,000,000. Prints a table and a final JSON line.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "test", "integration"))

import harness as h  # noqa: E402
from harness import pb  # noqa: E402

DESK = "sh.12355.desk"
RECIPIENTS = ["qd.police", "qd.school", "qd.hospital", "qd.civil"]


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[k] = int(v.split()[0]) // 1024   # MiB
    return out


def templates(trust):
    """Per recipient: a sealed body and a header to copy."""
    out = {}
    for r in RECIPIENTS:
        env = h.make_envelope(DESK, r, body_size=1900, ttl_ms=20 * 86400_000, trust=trust)
        out[r] = env
    return out


def fresh(trust, tmpl):
    hdr = h.header_of(tmpl)
    hdr.message_id = h.new_id()
    hdr.referral_id = h.new_id()
    hdr.attempt_id = h.new_id()
    hdr.created_at_ms = h.now_ms()
    hdr.expires_at_ms = hdr.created_at_ms + 20 * 86400_000
    header = hdr.SerializeToString()
    env = pb.Envelope()
    env.CopyFrom(tmpl)
    env.header = header
    env.signature = h.sign_envelope(trust.identity(DESK), header, tmpl.sealed_body)
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--sample-every", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=2000)
    args = ap.parse_args()
    trust = h.default_trust()
    b = h.Broker(store__map_size_bytes=16 << 30, limits__max_ttl_ms=30 * 86400_000,
                 broker__log_level="warn")
    rows = []
    try:
        b.start()
        pid = b.proc.pid
        rows.append({"phase": "start", "depth": 0, **status(pid)})
        desk = h.Client(b, DESK)
        tm = templates(trust)
        outstanding = 0
        accepted = 0
        t0 = time.monotonic()
        for i in range(args.count):
            desk.submit(fresh(trust, tm[RECIPIENTS[i % len(RECIPIENTS)]]), wait=False)
            outstanding += 1
            while outstanding >= args.window:
                f = desk.recv_kind("submit_reply", timeout_s=60)
                outstanding -= 1
                assert f.submit_reply.code == pb.RESULT_OK, f
                accepted += 1
            if (i + 1) % args.sample_every == 0:
                rows.append({"phase": "filling", "depth": i + 1, **status(pid)})
                print(rows[-1], flush=True)
        while outstanding:
            f = desk.recv_kind("submit_reply", timeout_s=60)
            outstanding -= 1
            assert f.submit_reply.code == pb.RESULT_OK, f
            accepted += 1
        elapsed = time.monotonic() - t0
        rows.append({"phase": "full", "depth": accepted, **status(pid)})
        desk.close()
        b.stop()
        b.start()
        pid = b.proc.pid
        time.sleep(1)
        rows.append({"phase": "restarted", "depth": accepted, **status(pid)})
        police = h.Client(b, "qd.police")
        police.credit(1000)
        for _ in range(10_000):
            d = police.recv_kind("delivery", timeout_s=60).delivery
            police.settle(d.message_id, wait=False)
            police.credit(1)
        rows.append({"phase": "drained 10000", "depth": accepted - 10_000, **status(pid)})
        used = sum(os.path.getsize(os.path.join(b.dir, "store", f))
                   for f in os.listdir(os.path.join(b.dir, "store")))
        print(f"{'phase':<14} {'depth':>9} {'RssAnon':>8} {'RssFile':>8} {'VmRSS':>8} {'VmHWM':>8} (MiB)")
        for r in rows:
            print(f"{r['phase']:<14} {r['depth']:>9} {r.get('RssAnon', 0):>8} "
                  f"{r.get('RssFile', 0):>8} {r.get('VmRSS', 0):>8} {r.get('VmHWM', 0):>8}")
        print(json.dumps({"count": accepted, "seconds": round(elapsed, 1),
                          "submits_per_s": round(accepted / elapsed),
                          "store_file_bytes": used, "samples": rows}))
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
