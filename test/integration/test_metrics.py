"""Prometheus metrics (docs/operations.md, "Metrics"): off by default; when
[metrics] listen is set, a scrape from 127.0.0.1 shows counters that move
by exactly what the broker did; a non-loopback address is refused unless
allow_remote is set."""

import os
import re
import subprocess
import time
import urllib.error
import urllib.request

import harness as h
import referral_pb2 as pb

SNAPSHOT_INTERVAL_S = 1.1   # queue figures are retaken at most once a second


class MetricsBroker(h.Broker):
    """A broker whose configuration also has a [metrics] section."""

    def __init__(self, metrics=None, **settings):
        self.metrics = metrics or {}
        super().__init__(**settings)

    def write_config(self):
        super().write_config()
        if self.metrics:
            with open(self.config_path, "a") as f:
                f.write("[metrics]\n")
                for k, v in self.metrics.items():
                    f.write(f"{k} = {v}\n")


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode("utf-8")


SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (\S+)$')


def parse(text):
    """{(name, labels): value} from the text format; checks every family
    has HELP and TYPE before its samples."""
    out, typed = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if not line or line.startswith("#"):
            continue
        mo = SAMPLE.match(line)
        assert mo, f"not a sample line: {line!r}"
        name, labels, value = mo.group(1), mo.group(2) or "", float(mo.group(3))
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in typed or family in typed, f"{name} has no # TYPE"
        out[(name, labels)] = value
    return out


def delta(before, after, name, labels=""):
    return after.get((name, labels), 0) - before.get((name, labels), 0)


def counters_move_by_what_the_broker_did():
    port = h.free_port()
    with MetricsBroker(metrics={"listen": f"127.0.0.1:{port}"}) as b:
        assert "serving Prometheus metrics" in b.read_log()
        ctype, text = scrape(port)
        assert ctype.startswith("text/plain; version=0.0.4"), ctype
        s0 = parse(text)
        assert s0[("referral_build_info", '{version="0.1.0"}')] == 1

        desk = h.Client(b, "sh.12355.desk")
        sent = []
        for urgency in (pb.URGENCY_ROUTINE, pb.URGENCY_ROUTINE, pb.URGENCY_CRISIS):
            env = h.make_envelope("sh.12355.desk", "qd.police", urgency=urgency)
            assert desk.submit(env).code == pb.RESULT_OK
            sent.append(env)
        dup = desk.submit(sent[0])
        assert dup.code == pb.RESULT_OK and dup.is_duplicate
        school = h.Client(b, "qd.school")   # submits as someone else: refused
        refused = school.submit(h.make_envelope("sh.12355.desk", "qd.police"))
        assert refused.code == pb.RESULT_SENDER_MISMATCH

        time.sleep(SNAPSHOT_INTERVAL_S)
        s1 = parse(scrape(port)[1])
        assert delta(s0, s1, "referral_submissions_total", '{result="ok"}') == 4
        assert delta(s0, s1, "referral_submissions_duplicate_total") == 1
        assert delta(s0, s1, "referral_submissions_total", '{result="sender_mismatch"}') == 1
        assert s1[("referral_queue_depth", '{urgency="routine"}')] == 2
        assert s1[("referral_queue_depth", '{urgency="crisis"}')] == 1
        assert s1[("referral_queue_depth", '{urgency="urgent"}')] == 0
        assert 0 < s1[("referral_queue_oldest_age_seconds", '{urgency="crisis"}')] < 60
        assert s1[("referral_sessions_open", "")] == 2
        assert s1[("referral_queue_snapshot_age_seconds", "")] < 1.0
        assert delta(s0, s1, "referral_commit_duration_seconds_count") >= 1

        police = h.Client(b, "qd.police")
        police.credit(10)
        got = police.deliveries(3)                # each acknowledged (ACK settle)
        assert got[0].urgency == pb.URGENCY_CRISIS
        for _ in range(3):
            assert police.recv_kind("settle_reply").settle_reply.code == pb.RESULT_OK
        police.unawaited = 0
        receipt = h.receipt_for("qd.police", sent[2], pb.ACK_LEVEL_RECEIVED)
        assert police.submit(receipt).code == pb.RESULT_OK
        police.settle(got[0].message_id)          # again: "already acknowledged", still ok
        bogus = police.settle(h.new_id())         # unknown message: refused
        assert bogus.code == pb.RESULT_UNKNOWN_MESSAGE

        time.sleep(SNAPSHOT_INTERVAL_S)
        s2 = parse(scrape(port)[1])
        assert delta(s1, s2, "referral_deliveries_total") == 3
        assert delta(s1, s2, "referral_redeliveries_total") == 0
        assert delta(s1, s2, "referral_settles_total", '{verb="ack"}') == 4
        assert delta(s1, s2, "referral_settles_refused_total", '{verb="ack"}') == 1
        assert delta(s1, s2, "referral_receipts_total", '{level="received"}') == 1
        assert delta(s1, s2, "referral_receipts_total", '{level="accepted_by_agency"}') == 0
        assert delta(s1, s2, "referral_submissions_total", '{result="ok"}') == 1
        depth = sum(v for (n, _), v in s2.items() if n == "referral_queue_depth")
        # The receipt and the three DELIVERED notices (one per ACK) wait for
        # the desk, which granted no credit.
        assert depth == 4, depth
        assert s2[("referral_in_flight", "")] == 0
        assert s2[("referral_sessions_open", "")] == 3
        assert s2[("referral_verify_pending_frames", "")] == 0
        # The histogram is cumulative and its +Inf bucket is its count.
        buckets = [(k[1], v) for k, v in s2.items()
                   if k[0] == "referral_commit_duration_seconds_bucket"]
        values = [v for _, v in buckets]
        assert values == sorted(values) and buckets[-1][0] == '{le="+Inf"}'
        assert values[-1] == s2[("referral_commit_duration_seconds_count", "")]
        # Only /metrics, only GET.
        try:
            scrape(port, "/other")
            raise AssertionError("/other answered")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", data=b"x",
                                     method="POST")
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("POST answered")
        except urllib.error.HTTPError as e:
            assert e.code == 405
        assert "warn metrics" not in b.read_log() and "error metrics" not in b.read_log()
        assert b.stop() == 0


def listening_ports(pid):
    """The TCP ports process pid listens on (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        mo = re.match(r"socket:\[(\d+)\]", target)
        if mo:
            inodes.add(mo.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:   # LISTEN
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def metrics_are_off_by_default():
    with h.Broker() as b:
        assert listening_ports(b.proc.pid) == {b.port}, "only the client port listens"
        assert "metrics" not in b.read_log()
    port = h.free_port()
    with MetricsBroker(metrics={"listen": f"127.0.0.1:{port}"}) as b:
        assert listening_ports(b.proc.pid) == {b.port, port}
    with MetricsBroker(metrics={"listen": ""}) as b:   # empty: off
        assert listening_ports(b.proc.pid) == {b.port}


def non_loopback_address_is_refused_unless_allowed():
    def check(metrics):
        b = MetricsBroker(metrics=metrics)
        try:
            return subprocess.run([h.REFERRALD, "--check-config", b.config_path],
                                  capture_output=True, text=True, timeout=30)
        finally:
            b.cleanup()

    r = check({"listen": "0.0.0.0:9464"})
    assert r.returncode == 2 and "allow_remote" in r.stderr, r.stderr
    r = check({"listen": "0.0.0.0:9464", "allow_remote": "true"})
    assert r.returncode == 0, r.stderr
    r = check({"listen": "[::1]:9464"})
    assert r.returncode == 0, r.stderr
    for bad in ("localhost:9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000"):
        r = check({"listen": bad})
        assert r.returncode == 2 and "[metrics] listen" in r.stderr, (bad, r.stderr)
    r = check({"listen": "127.0.0.1:9464", "allow_remote": "yes"})
    assert r.returncode == 2 and "allow_remote" in r.stderr, r.stderr
    # A port already taken stops the broker at start (exit 4), never half-running.
    port = h.free_port()
    with MetricsBroker(metrics={"listen": f"127.0.0.1:{port}"}) as first:
        second = MetricsBroker(metrics={"listen": f"127.0.0.1:{port}"}, trust=first.trust)
        try:
            second.start()
            raise AssertionError("second broker started on a taken metrics port")
        except RuntimeError as e:
            assert "exited with 4" in str(e), e
        finally:
            second.cleanup()


if __name__ == "__main__":
    h.run([counters_move_by_what_the_broker_did, metrics_are_off_by_default,
           non_loopback_address_is_refused_unless_allowed])
