"""Integration: a store written by the previous release is migrated at open
and its referrals are served; records the broker cannot read are set aside
(quarantine, a log line, a counter) and the broker keeps serving.

previous_release_store_is_migrated_and_served builds the release before
versioned records (commit 698cd3b, store format 1) from this repository's
history (git archive into a temporary directory outside the tree, meson,
only referrald, referralctl and the schema's Python module: a few seconds),
lets that referrald accept referrals with that release's own test harness,
stops it, and opens its store with the referrald under test. Without git
or that commit (a source tarball) it is skipped (exit 77); test_store's
format-1 fixture still covers the migration then.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import harness as h
from harness import pb

PREVIOUS_RELEASE = "698cd3b"
SOURCE_ROOT = os.environ.get("REFERRAL_SOURCE_ROOT", ".")
BUILD_ROOT = os.environ.get("REFERRAL_BUILD_ROOT", ".")
POKE = os.path.join(BUILD_ROOT, "test", "integration", "store-poke")
SKIP = 77

# Run by the previous release's Python (its harness and schema module),
# against its referrald: queue referrals for two agencies of every urgency,
# leave one of them in flight, stop by SIGTERM, print what was sent.
OLD_SIDE = r"""
import json, os, shutil, sys
import harness as h
from harness import pb
work = sys.argv[1]
trust = h.default_trust()   # the one its make_envelope signs with
b = h.Broker(workdir=work, trust=trust)
b.start()
desk = h.Client(b, "sh.12355.desk")
sent = []
plan = [("qd.youth-league", pb.URGENCY_ROUTINE), ("qd.youth-league", pb.URGENCY_CRISIS),
        ("qd.youth-league", pb.URGENCY_PRIORITY), ("qd.youth-league", pb.URGENCY_URGENT),
        ("qd.youth-league", pb.URGENCY_ROUTINE), ("qd.police", pb.URGENCY_URGENT)]
for to, urgency in plan:
    env = h.make_envelope("sh.12355.desk", to, urgency)
    r = desk.submit(env)
    assert r.code == pb.RESULT_OK, r
    sent.append({"to": to, "urgency": urgency, "id": h.header_of(env).message_id.hex(),
                 "envelope": env.SerializeToString().hex()})
police = h.Client(b, "qd.police")
police.credit(1)
d = police.deliveries(1, ack=False)[0]        # in flight when the broker stops
assert d.message_id.hex() == sent[-1]["id"]
rc = b.stop()
assert rc == 0, rc
kept = os.path.join(work, "trust")   # the keys outlive this process's cleanup
shutil.copytree(trust.dir, kept)
print(json.dumps({"trust_dir": kept, "sent": sent}))
"""


def run(cmd, timeout, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def build_previous_release(tmp):
    """Build the previous release's referrald, referralctl and referral_pb2
    in tmp; None when this checkout has no git history to build it from."""
    git = shutil.which("git")
    if git is None or run([git, "-C", SOURCE_ROOT, "cat-file", "-e",
                           PREVIOUS_RELEASE + "^{commit}"], 30).returncode != 0:
        return None
    src, build = os.path.join(tmp, "src"), os.path.join(tmp, "build")
    os.mkdir(src)
    archive = subprocess.Popen([git, "-C", SOURCE_ROOT, "archive", PREVIOUS_RELEASE],
                               stdout=subprocess.PIPE)
    run(["tar", "-x", "-C", src], 60, stdin=archive.stdout, check=True)
    archive.wait(timeout=60)
    started = time.monotonic()
    r = run(["meson", "setup", build, src, "-Dbuildtype=debug"], 120)
    if r.returncode == 0:
        r = run(["ninja", "-j2", "-C", build, "broker/referrald", "tools/referralctl",
                 "proto/referral_pb2.py"], 300)
    if r.returncode != 0:
        raise AssertionError("building release " + PREVIOUS_RELEASE + " failed:\n"
                             + r.stdout[-3000:] + r.stderr[-3000:])
    print(f"built release {PREVIOUS_RELEASE} in {time.monotonic() - started:.1f}s",
          flush=True)
    return src, build


def adopt_trust(trust_dir, version):
    """The previous run's keys, with a directory of a new version signed
    by this tree's referralctl (a store keeps the directory versions it
    used: the same version must never come back with other content)."""
    t = h.Trust.__new__(h.Trust)
    t.dir = trust_dir
    t.keydir = os.path.join(trust_dir, "keys")
    t.brokers = ["broker.test", "broker.demo"]
    t.agencies = list(h.AGENCIES)
    t.ids = {}
    t.directory = os.path.join(trust_dir, "directory.signed")
    t.sign_directory(version, force=True)
    return t


def previous_release_store_is_migrated_and_served():
    tmp = tempfile.mkdtemp(prefix="referral-upgrade-")
    trust = None
    try:
        built = build_previous_release(tmp)
        if built is None:
            print("skipped: no git history with release " + PREVIOUS_RELEASE)
            sys.exit(SKIP)
        src, build = built
        work = os.path.join(tmp, "broker")
        os.mkdir(work)
        env = dict(os.environ,
                   REFERRALD=os.path.join(build, "broker", "referrald"),
                   REFERRALCTL=os.path.join(build, "tools", "referralctl"),
                   PYTHONPATH=os.path.join(build, "proto") + ":"
                   + os.path.join(src, "test", "integration"),
                   PYTHONDONTWRITEBYTECODE="1")
        r = run([sys.executable, "-c", OLD_SIDE, work], 120, env=env,
                cwd=os.path.join(src, "test", "integration"))
        assert r.returncode == 0, "previous release side failed:\n" + r.stdout + r.stderr
        old = json.loads(r.stdout.strip().splitlines()[-1])
        trust = adopt_trust(old["trust_dir"], 2)
        with open(os.path.join(work, "store", "STORE")) as f:
            assert "format 1" in f.read()

        b = h.Broker(workdir=work, trust=trust)
        b.start()
        try:
            log = b.read_log()[b.log_start:]
            assert "migrated store from format 1 to 2" in log, log
            assert "msgs=6 " in log and "set_aside=0 " in log, log
            sent = {s["id"]: s for s in old["sent"]}
            # Crisis first, then urgent, priority, the two routine in arrival order.
            league = h.Client(b, "qd.youth-league")
            league.credit(10)
            got = league.deliveries(5)
            order = [d.message_id.hex() for d in got]
            to_league = [s for s in old["sent"] if s["to"] == "qd.youth-league"]
            by_urgency = sorted(to_league, key=lambda s: -s["urgency"])   # stable: by arrival
            assert order == [s["id"] for s in by_urgency], (order, by_urgency)
            for d in got:
                env_old = pb.Envelope()
                env_old.ParseFromString(bytes.fromhex(sent[d.message_id.hex()]["envelope"]))
                assert d.envelope.header == env_old.header
                assert d.envelope.sealed_body == env_old.sealed_body
                assert list(d.envelope.hops) == [b.id]
                assert d.attempt == 1
            # The one in flight at the stop comes again, its attempt counted.
            police = h.Client(b, "qd.police")
            police.credit(10)
            d = police.deliveries(1)[0]
            assert d.message_id.hex() == old["sent"][-1]["id"] and d.attempt == 2, d
            # Dedup entries came along: a resend is a duplicate, not a new referral.
            desk = h.Client(b, "sh.12355.desk")
            again = pb.Envelope()
            again.ParseFromString(bytes.fromhex(old["sent"][0]["envelope"]))
            r = desk.submit(again)
            assert r.code == pb.RESULT_OK and r.is_duplicate, r
            for c in (league, police):   # their settles are in once their own replies are
                c.status(got[0].message_id)
            for s in old["sent"]:
                assert desk.status(bytes.fromhex(s["id"])).state == pb.MESSAGE_STATE_DELIVERED
            # New work on the migrated store.
            fresh = h.make_envelope("sh.12355.desk", "qd.youth-league", pb.URGENCY_CRISIS,
                                    trust=trust)
            assert desk.submit(fresh).code == pb.RESULT_OK
            assert league.deliveries(1)[0].message_id == h.header_of(fresh).message_id
        finally:
            assert b.stop() == 0
        b.start()   # format 2 now: opened as it is, nothing migrated
        log = b.read_log()[b.log_start:]
        assert "migrated" not in log, log
        assert b.stop() == 0
        with open(os.path.join(work, "store", "STORE")) as f:
            assert "format 2" in f.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if trust is not None:
            trust.cleanup()


def poke(store, *args):
    r = run([POKE, store, *args], 30)
    assert r.returncode == 0, f"store-poke {args}: {r.stderr}"
    return r.stdout.strip()


def unknown_deadline_kind_and_record_version_are_set_aside():
    with h.Broker() as b:
        desk = h.Client(b, "sh.12355.desk")
        envs = [h.make_envelope("sh.12355.desk", "qd.police") for _ in range(3)]
        for env in envs:
            assert desk.submit(env).code == pb.RESULT_OK
        ids = [h.header_of(env).message_id for env in envs]
        desk.close()
        assert b.stop() == 0
        store = os.path.join(b.dir, "store")
        # A deadline of kind 9 (no release has it), due already, naming the
        # first message; the second message's record gets version 9.
        due = (h.now_ms() - 1000).to_bytes(8, "big")
        poke(store, "put", "deadlines", (due + bytes([9]) + ids[0]).hex(), "01")
        poke(store, "set-byte", "msgs", ids[1].hex(), "0", "09")
        assert poke(store, "count", "quarantine") == "0"

        b.start()
        police = h.Client(b, "qd.police")
        police.credit(10)
        got = [d.message_id for d in police.deliveries(2)]
        assert got == [ids[0], ids[2]], got   # the unreadable one is not delivered
        log = b.read_log()[b.log_start:]
        assert "record set aside in quarantine db=deadlines" in log, log
        assert "unknown deadline kind 9" in log, log
        assert "record set aside in quarantine db=msgs key=" + ids[1].hex() in log, log
        assert "unknown message record version 9" in log, log
        # Still serving: new work goes in and out.
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.police", pb.URGENCY_CRISIS)
        assert desk.submit(env).code == pb.RESULT_OK
        assert police.deliveries(1)[0].message_id == h.header_of(env).message_id
        assert desk.status(ids[1]).state == pb.MESSAGE_STATE_UNKNOWN
        police.close()
        desk.close()
        assert b.stop() == 0
        # Kept for operators: the deadline, the record and its body.
        keys = poke(store, "keys", "quarantine").split()
        assert len(keys) == 3, keys
        assert poke(store, "get", "meta", b"set_aside".hex()) == (2).to_bytes(8, "big").hex()
        # And never again: the next start finds nothing to set aside.
        b.start()
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.police")
        assert desk.submit(env).code == pb.RESULT_OK
        police = h.Client(b, "qd.police")
        police.credit(10)
        assert police.deliveries(1)[0].message_id == h.header_of(env).message_id
        assert "set aside" not in b.read_log()[b.log_start:]


def newer_store_format_is_refused():
    with h.Broker() as b:
        assert b.stop() == 0
        store = os.path.join(b.dir, "store")
        poke(store, "put", "meta", b"format".hex(), b"3".hex())
        try:
            b.start(timeout_s=10)
            raise AssertionError("referrald opened a store of a newer format")
        except RuntimeError as e:
            assert "exited with 3" in str(e), e
            assert "is of format 3, newer than this referrald" in str(e), e
        assert poke(store, "get", "meta", b"format".hex()) == b"3".hex()   # untouched


if __name__ == "__main__":
    h.run([previous_release_store_is_migrated_and_served,
           unknown_deadline_kind_and_record_version_are_set_aside,
           newer_store_format_is_refused])
