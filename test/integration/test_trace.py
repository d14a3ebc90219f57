"""referral-trace across a federation (issue 13; docs/operations.md,
"referral-trace"): three brokers on 127.0.0.1 as in test_federation.py,
referral-desk as the desk and the agency, referral-trace as the operator on
a broker's operators' socket.
"""

import json
import os
import re
import subprocess
import time

import harness as h
from harness import pb
from test_federation import DESK, HUB, LEAGUE, QD, SH, Federation, trust, wait_log

TRACE = os.environ.get("REFERRAL_TRACE", "referral-trace")
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def admin_socket(b):
    return os.path.join(b.dir, "store", "admin.sock")


def trace(b, *args, check=True):
    r = subprocess.run([TRACE, "--socket", admin_socket(b), "--operator", "duty-officer", *args],
                       capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise AssertionError(f"referral-trace {' '.join(args)} exited {r.returncode}: "
                             f"{r.stderr}")
    return r


def mask(text):
    """The timeline with what changes from run to run masked: ids, times."""
    text = re.sub(r"[0-9a-f]{32}", "<id>", text)
    text = re.sub(r"\d\d:\d\d:\d\d\.\d\d\d", "<time>", text)
    text = re.sub(r"\+\d+(\.\d+s|m\d+s|h\d+m)", "+<t>", text)
    return text


def referred_and_acknowledged(f):
    desk, league = h.Desk(f.sh, DESK), h.Desk(f.qd, LEAGUE)
    try:
        sent = desk.events("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                           "protection", "--narrative", "Child, 8, left alone for days")
        mid, rid = sent[0]["message_id"], sent[0]["referral_id"]
        league.events("listen", "--count", "1", "--timeout-s", "20", "--ack", "received",
                      "--person", "Wang Li")
        league.run("ack", mid, "--level", "accepted", "--person", "Wang Li")
        desk.events("listen", "--count", "3", "--timeout-s", "30")
        return mid, rid
    finally:
        desk.cleanup()
        league.cleanup()


def timeline_gathers_every_broker_from_either_end():
    """From the origin and from the destination, the timeline holds the
    events of all three brokers, in time order; each broker logs the query;
    the text fits 80 columns and matches the golden file (times and ids
    masked)."""
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        wait_log(f.qd, f"link connected peer={HUB}")
        mid, rid = referred_and_acknowledged(f)
        for start in (f.sh, f.qd):
            r = json.loads(trace(start, "--json", rid).stdout)
            assert sorted(r["brokers"]) == sorted([SH, HUB, QD]), r["brokers"]
            assert r["unanswered"] == [] and r["referral_id"] == rid
            at = [e["at_ms"] for e in r["events"]]
            assert at == sorted(at)
            kinds = {(e["broker"], e["kind"]) for e in r["events"]}
            for want in ((SH, "ACCEPTED"), (SH, "RELAYED"), (HUB, "RELAYED"),
                         (QD, "DELIVERED"), (QD, "ACKNOWLEDGED"), (QD, "LEVEL")):
                assert want in kinds, (want, sorted(kinds))
            levels = [e["detail"] for e in r["events"] if e["kind"] == "LEVEL"]
            assert any("RECEIVED" in d for d in levels) and \
                any("ACCEPTED_BY_AGENCY" in d for d in levels), levels
            assert r["events"][0]["elapsed_ms"] == 0
        for b in (f.hub, f.qd):
            assert "trace query from peer=" in b.read_log()
        text = trace(f.sh, rid).stdout
        assert all(len(line) <= 80 for line in text.splitlines()), text
        lines = mask(text).splitlines()
        golden_path = os.path.join(GOLDEN, "referral-trace.txt")
        with open(golden_path) as g:
            golden = g.read().splitlines()
        # The golden file holds the header and the rows every run has, in
        # order; rows of events that vary (redelivery, timing) may sit
        # between them.
        it = iter(lines)
        for want in golden:
            assert any(line == want for line in it), (want, lines)
        dot = trace(f.sh, "--dot", rid).stdout
        assert dot.startswith("digraph referral {") and dot.rstrip().endswith("}"), dot
        assert f'"{DESK}" -> "{SH}"' in dot and f'"{SH}" -> "{HUB}"' in dot, dot
        assert f'"{LEAGUE}" -> "{QD}"' in dot and "style=dashed" in dot, dot


def a_broker_that_does_not_answer_is_named():
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        wait_log(f.qd, f"link connected peer={HUB}")
        mid, rid = referred_and_acknowledged(f)
        f.qd.kill()
        r = json.loads(trace(f.sh, "--json", rid).stdout)
        assert QD in r["unanswered"] and QD not in r["brokers"], r
        assert {SH, HUB} <= set(r["brokers"])
        text = trace(f.sh, rid)
        assert f"NOT ANSWERING (their events are missing): {QD}" in text.stdout, text.stdout


def peers_hear_only_of_referrals_that_passed_between_them():
    """A trace query reaches a peer only for a referral whose messages
    passed between them; an unknown referral gives an empty timeline, and
    the command needs a referral id."""
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        r = json.loads(trace(f.sh, "--json", h.new_id().hex()).stdout)
        assert r["events"] == [] and r["brokers"] == [SH], r
        assert "trace query from peer" not in f.hub.read_log()
        bad = trace(f.sh, "not-an-id", check=False)
        assert bad.returncode == 2 and "32 hex digits" in bad.stderr
        gone = subprocess.run([TRACE, "--socket", "/nonexistent/admin.sock", h.new_id().hex()],
                              capture_output=True, text=True, timeout=30)
        assert gone.returncode == 3 and "no admin socket" in gone.stderr, gone.stderr


def follow_prints_until_the_referral_closes():
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        wait_log(f.qd, f"link connected peer={HUB}")
        mid, rid = referred_and_acknowledged(f)
        p = subprocess.Popen([TRACE, "--socket", admin_socket(f.sh), "--follow",
                              "--timeout-s", "30", rid], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.5)
            league = h.Client(f.qd, LEAGUE)
            closed = h.make_receipt(LEAGUE, DESK, bytes.fromhex(mid), bytes.fromhex(rid),
                                    pb.ACK_LEVEL_CLOSED, trust=f.trust)
            assert league.submit(closed).code == pb.RESULT_OK
            league.close()
            out, err = p.communicate(timeout=40)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 0, err
        assert "CLOSED" in out and "still open" not in err, (out, err)


if __name__ == "__main__":
    h.run([timeline_gathers_every_broker_from_either_end, a_broker_that_does_not_answer_is_named,
           peers_hear_only_of_referrals_that_passed_between_them,
           follow_prints_until_the_referral_closes])
