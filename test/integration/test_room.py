"""Fault suite: room on disk and failed commits (issue 8, items 5 and 6).

Room: the store lives on a small tmpfs that the test mounts in a temporary
directory and unmounts in cleanup (root only: without it the test exits
77, which meson counts as skipped). The disk guard must count the free
pages inside data.mdb as room (LMDB never shrinks the file), reserve room
per submission within a turn, and keep taking receipts and settles while
it refuses referrals.

Failed commits: referrald runs with the failio shim (test/fault/failio.c)
preloaded; while a trigger file exists every write and sync of data.mdb
fails. A failed commit at start, in a turn or in a SIGHUP reload must end
the process with exit status 3 and a log line of its own, answer nothing
for the failed turn, and a restart on a healthy disk must still hold
everything acknowledged before. Every process is started and stopped by
PID; only what the test mounted is unmounted.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import harness as h
from harness import pb

DESK = "sh.12355.desk"
MIB = 1 << 20


# ---- a small disk ----------------------------------------------------------

@contextlib.contextmanager
def small_disk(size_mib):
    """A tmpfs of size_mib MiB mounted in a new temporary directory; yields
    the mount point. Exits 77 (skipped) when it cannot be mounted."""
    top = tempfile.mkdtemp(prefix="referral-room-")
    mnt = os.path.join(top, "disk")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0700",
                        "referral-room", mnt], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        print(f"skipped: cannot mount a {size_mib} MiB tmpfs (needs root): "
              f"{r.stderr.strip()}", flush=True)
        sys.exit(77)
    try:
        yield mnt
    finally:
        r = subprocess.run(["umount", mnt], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:             # still busy: detach it, never leave it mounted
            subprocess.run(["umount", "-l", mnt], capture_output=True, timeout=30)
        shutil.rmtree(top, ignore_errors=True)


def disk_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def free_pages(store_dir):
    """Pages on LMDB's free list, from mdb_stat (lmdb-utils), or None."""
    if shutil.which("mdb_stat") is None:
        return None
    r = subprocess.run(["mdb_stat", "-f", store_dir], capture_output=True, text=True,
                       timeout=30)
    m = re.search(r"Free pages: (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def submit_until_refused(desk, recipient, body_size, window=64, limit=20000):
    """Submit referrals in pipelined windows until the broker answers
    STORE_FULL; returns (accepted ids, the first refusal)."""
    accepted = []
    refusal = None
    sent = 0
    while refusal is None and sent < limit:
        envs = [h.make_envelope(DESK, recipient, body_size=body_size) for _ in range(window)]
        rids = [desk.submit(e, wait=False) for e in envs]
        sent += window
        for rid in rids:
            r = desk.wait_reply(rid, timeout_s=30)
            if r.code == pb.RESULT_OK:
                accepted.append(r.message_id)
            else:
                assert r.code == pb.RESULT_STORE_FULL, r
                assert "retry later" in r.detail, r
                refusal = refusal or r
    assert refusal is not None, f"never refused after {sent} referrals"
    # Reservations count more than a referral takes: the next turn, measured
    # again, may find room for a few more. Full is refused three times in a row.
    in_a_row = 0
    while in_a_row < 3 and sent < limit:
        r = desk.submit(h.make_envelope(DESK, recipient, body_size=body_size))
        sent += 1
        if r.code == pb.RESULT_OK:
            accepted.append(r.message_id)
            in_a_row = 0
        else:
            assert r.code == pb.RESULT_STORE_FULL, r
            in_a_row += 1
    assert in_a_row == 3, f"never refused three times in a row after {sent} referrals"
    return accepted, refusal


def drain(client, expected, timeout_s=120):
    """Receive and settle (ACK) until every expected id arrived; returns the
    ids seen. Each settle is answered OK (checked by the harness)."""
    seen = set()
    deadline = time.monotonic() + timeout_s
    client.credit(1000)
    while not expected <= seen and time.monotonic() < deadline:
        try:
            f = client.recv_kind("delivery", timeout_s=2)
        except TimeoutError:
            continue
        seen.add(f.delivery.message_id)
        client.settle(f.delivery.message_id, wait=False)
        client.credit(1)
    return seen


def received_receipt(referral):
    """A RECEIVED receipt for referral, from its recipient to its sender,
    bound to it (in_reply_to, referral id, and the signed receipt level
    where the schema has one)."""
    ref = h.header_of(referral)

    def bind(hd):
        hd.in_reply_to = ref.message_id
        hd.referral_id = ref.referral_id
        if "receipt_level" in hd.DESCRIPTOR.fields_by_name:
            hd.receipt_level = pb.ACK_LEVEL_RECEIVED
    return h.make_envelope(ref.to_agency, ref.from_agency, kind=pb.MESSAGE_KIND_RECEIPT,
                           body_size=100, header_edit=bind)


def room_broker(mnt, guard_bytes, **settings):
    return h.Broker(broker__data_dir=os.path.join(mnt, "store"),
                    store__min_free_disk_bytes=guard_bytes, **settings)


def drained_store_accepts_again_and_receipts_flow_while_full():
    """Fill a 24 MiB disk under a 12 MiB guard until referrals are refused;
    receipts and settles are answered OK while full; drain everything; new
    referrals are accepted again although data.mdb did not shrink."""
    guard = 12 * MIB
    with small_disk(24) as mnt, room_broker(mnt, guard) as b:
        store_dir = os.path.join(mnt, "store")
        data = os.path.join(store_dir, "data.mdb")
        desk = h.Client(b, DESK)
        answered = h.make_envelope(DESK, "qd.hospital", body_size=4000)
        assert desk.submit(answered).code == pb.RESULT_OK
        accepted, refusal = submit_until_refused(desk, "qd.hospital", body_size=4000)
        accepted.append(h.header_of(answered).message_id)
        assert "disk low" in refusal.detail and "min_free_disk_bytes" in refusal.detail, refusal
        size_full = os.path.getsize(data)
        free_full = disk_free(mnt)
        assert free_full >= guard // 2, f"the burst ate into the settle reserve: {free_full}"

        # While referrals are refused: a receipt is accepted, a settle is OK.
        hospital_desk = h.Client(b, "qd.hospital")
        receipt = received_receipt(answered)
        r = hospital_desk.submit(receipt)
        assert r.code == pb.RESULT_OK, f"receipt refused while referrals are: {r}"
        r = desk.submit(h.make_envelope(DESK, "qd.hospital", body_size=4000))
        assert r.code == pb.RESULT_STORE_FULL, f"a referral was taken while full: {r}"
        hospital = h.Client(b, "qd.hospital")
        hospital.credit(1)
        first = hospital.recv_kind("delivery", timeout_s=10).delivery
        s = hospital.settle(first.message_id)
        assert s.code == pb.RESULT_OK, f"settle refused while referrals are: {s}"

        # Drain: deliver and settle every referral and the receipt.
        rest = set(accepted) - {first.message_id}
        seen = drain(hospital, rest)
        assert seen >= rest, f"{len(rest - seen)} accepted referrals lost in a full store"
        desk.credit(10)
        got = desk.recv_kind("delivery", timeout_s=10).delivery
        assert got.message_id == h.header_of(receipt).message_id
        assert desk.settle(got.message_id).code == pb.RESULT_OK
        # The settle replies come back after the turn that committed them:
        # once a status query is answered, every settle before it is in.
        assert hospital.status(first.message_id).state == pb.MESSAGE_STATE_DELIVERED

        # Accepted again, without the file shrinking.
        again = 0
        deadline = time.monotonic() + 10
        while again < len(accepted) // 2 and time.monotonic() < deadline:
            r = desk.submit(h.make_envelope(DESK, "qd.hospital", body_size=4000))
            if r.code == pb.RESULT_OK:
                again += 1
            else:
                assert r.code == pb.RESULT_STORE_FULL, r
                time.sleep(0.2)
        size_after = os.path.getsize(data)
        assert size_after >= size_full, "data.mdb shrank (LMDB never shrinks its file)"
        print(f"     refused after {len(accepted)} referrals of ~4.5 KB on a 24 MiB tmpfs "
              f"(guard 12 MiB): data.mdb {size_full} bytes, {free_full} free on the disk; "
              f"after draining {again} accepted again, data.mdb {size_after} bytes, "
              f"{disk_free(mnt)} free on the disk, {free_pages(store_dir)} pages on the "
              f"free list", flush=True)
        assert again >= len(accepted) // 2, \
            f"only {again} of {len(accepted) // 2} accepted after draining: {r}"
        desk.close()
        hospital.close()
        hospital_desk.close()
        assert b.stop() == 0


def burst_cannot_overshoot_the_disk_guard():
    """Pipelined bursts of 17 KB referrals, made beforehand and sent back to
    back in windows of 400 (up to 256 in one turn), against a 16 MiB guard
    on a 32 MiB disk: room is reserved per submission and measured each
    turn, so the disk never falls far under the guard."""
    guard = 16 * MIB
    with small_disk(32) as mnt:
        envs = [h.make_envelope(DESK, "qd.school", body_size=16000) for _ in range(1600)]
        with room_broker(mnt, guard) as b:
            desk = h.Client(b, DESK)
            accepted, refused = [], 0
            for at in range(0, len(envs), 400):
                rids = [desk.submit(e, wait=False) for e in envs[at:at + 400]]
                for rid in rids:
                    r = desk.wait_reply(rid, timeout_s=60)
                    if r.code == pb.RESULT_OK:
                        accepted.append(r.message_id)
                    else:
                        assert r.code == pb.RESULT_STORE_FULL, r
                        refused += 1
            free = disk_free(mnt)
            print(f"     {len(accepted)} of {len(envs)} referrals of ~17 KB accepted in back-to-back "
                  f"windows of 400, {refused} refused: {free} bytes free on the disk under a "
                  f"guard of {guard}", flush=True)
            assert refused > 0, "the disk guard never refused"
            # The guard may be crossed by one turn's commit overhead (copied
            # branch pages, the free list), never by the turn's referrals.
            assert free >= guard - 2 * MIB, f"a burst overshot the guard: {free} bytes left"
            assert b.proc.poll() is None
            school = h.Client(b, "qd.school")
            assert drain(school, set(accepted)) >= set(accepted)
            assert b.stop() == 0


# ---- failed commits ----------------------------------------------------------

FAILIO = os.environ.get("REFERRAL_FAILIO", "")


class FailingDisk(h.Preload):
    """Preload failio into the brokers started inside `with`; fail() and
    heal() create and remove the trigger. With delay_ms, a slow disk
    instead: each sync of data.mdb waits that long, then succeeds."""

    def __init__(self, broker, errno_name="EIO", calls=None, delay_ms=None):
        if not FAILIO or not os.path.exists(FAILIO):
            print(f"skipped: the failio shim is not built ({FAILIO!r})", flush=True)
            sys.exit(77)
        self.trigger = os.path.join(broker.dir, "fail-now")
        super().__init__(
            FAILIO,
            FAILIO_FILE=os.path.realpath(os.path.join(broker.dir, "store", "data.mdb")),
            FAILIO_TRIGGER=self.trigger, FAILIO_ERRNO=errno_name,
            FAILIO_CALLS=calls or ("fsync,fdatasync" if delay_ms else ""),
            FAILIO_DELAY_MS=str(delay_ms or ""))

    def fail(self):
        open(self.trigger, "w").close()

    def heal(self):
        os.unlink(self.trigger)


def accept(desk, recipient, n):
    ids = set()
    for _ in range(n):
        r = desk.submit(h.make_envelope(DESK, recipient, trust=desk.trust))
        assert r.code == pb.RESULT_OK, r
        ids.add(r.message_id)
    return ids


def wait_exit(b, timeout_s=20):
    rc = b.proc.wait(timeout=timeout_s)
    log = b.read_log()
    b.kill()                                # forget the PID, check sanitizer reports
    return rc, log


def restart_holds(b, recipient, acknowledged, may_have=frozenset()):
    """Restart on a healthy disk: every acknowledged referral is delivered,
    nothing that was never acknowledged (beyond may_have) appears."""
    b.start()
    agency = h.Client(b, recipient)
    seen = drain(agency, acknowledged, timeout_s=60)
    assert seen >= acknowledged, f"{len(acknowledged - seen)} acknowledged lost"
    assert seen <= acknowledged | may_have, "a referral nobody acknowledged appeared"
    agency.close()
    assert b.stop() == 0


@contextlib.contextmanager
def unstarted_broker(**kw):
    """A Broker not yet started (so the first start can be preloaded)."""
    b = h.Broker(**kw)
    try:
        yield b
    finally:
        b.cleanup()


def failed_commit_in_a_turn_exits_3_and_answers_nothing():
    with unstarted_broker() as b:
        disk = FailingDisk(b, "ENOSPC")
        with disk:
            b.start()
        desk = h.Client(b, DESK)
        acknowledged = accept(desk, "qd.police", 20)
        disk.fail()
        late = [h.make_envelope(DESK, "qd.police") for _ in range(5)]
        for env in late:
            desk.submit(env, wait=False)
        rc, log = wait_exit(b)
        assert rc == 3, f"exit {rc} after a failed commit:\n{log[-3000:]}"
        assert "error store: commit failed during turn" in log, log[-3000:]
        assert "disk full" in log, log[-3000:]
        answered = []
        while True:
            try:
                answered.append(desk.recv_kind("submit_reply", timeout_s=1).submit_reply)
            except TimeoutError:
                break
        assert not [r for r in answered if r.code == pb.RESULT_OK], \
            f"OK answered for a turn whose commit failed: {answered}"
        desk.close()
        disk.heal()
        restart_holds(b, "qd.police", acknowledged,
                      {h.header_of(e).message_id for e in late})


def failed_commit_in_a_reload_exits_3():
    trust = h.Trust()
    try:
        with unstarted_broker(trust=trust) as b:
            disk = FailingDisk(b, "EIO")
            with disk:
                b.start()
            desk = h.Client(b, DESK)
            acknowledged = accept(desk, "qd.school", 10)
            desk.close()
            trust.sign_directory(2)
            disk.fail()
            b.proc.send_signal(signal.SIGHUP)
            rc, log = wait_exit(b)
            assert rc == 3, f"exit {rc} after a failed commit in a reload:\n{log[-3000:]}"
            assert "error store: store failed during directory reload" in log, log[-3000:]
            assert "I/O error" in log and "reload refused" not in log, log[-3000:]
            disk.heal()
            restart_holds(b, "qd.school", acknowledged)
            assert "directory loaded version=2" in b.read_log()
    finally:
        trust.cleanup()


def failed_commit_at_start_exits_3():
    """Here the pages are written and only the sync fails."""
    with unstarted_broker() as b:
        disk = FailingDisk(b, "EIO", calls="fsync,fdatasync")
        with disk:
            b.start()
        desk = h.Client(b, DESK)
        acknowledged = accept(desk, "qd.civil", 10)
        desk.close()
        assert b.stop() == 0
        disk.fail()
        with disk:
            try:
                b.start(timeout_s=20)
                raise AssertionError("broker started on a disk that fails every commit")
            except RuntimeError as e:
                assert "exited with 3" in str(e), e
                assert "error store: store failed at start" in str(e), e
        b.kill()
        disk.heal()
        restart_holds(b, "qd.civil", acknowledged)



def failing_disks_at_the_hub_and_the_destination_lose_nothing():
    """Across the federation (issue 15, item 4): while a Shanghai desk
    refers to Qingdao through the hub, the hub's syncs fail (EIO) and it
    exits 3 naming the failure; Shanghai keeps what the hub never
    acknowledged. Then Qingdao's disk fills (ENOSPC) and it exits 3 too.
    Healed and restarted, every referral Shanghai accepted reaches the
    league, once."""
    import test_federation as fed
    f = fed.Federation(fed.trust())
    hub_disk = FailingDisk(f.hub, "EIO", "fsync,fdatasync")
    qd_disk = FailingDisk(f.qd, "ENOSPC")
    try:
        f.sh.start()
        with hub_disk:
            f.hub.start()
        with qd_disk:
            f.qd.start()
        fed.wait_log(f.sh, f"link connected peer={fed.HUB}")
        fed.wait_log(f.qd, f"link connected peer={fed.HUB}")
        desk = h.Client(f.sh, fed.DESK)
        desk.trust = f.trust
        accepted = accept(desk, fed.LEAGUE, 10)
        for b, disk, why in ((f.hub, hub_disk, "I/O error"), (f.qd, qd_disk, "disk full")):
            disk.fail()
            accepted |= accept(desk, fed.LEAGUE, 10)     # Shanghai's disk is fine
            rc, log = wait_exit(b)
            assert rc == 3, f"{b.id} exit {rc} after a failed commit:\n{log[-3000:]}"
            assert "commit failed" in log and why in log, log[-3000:]
            disk.heal()
            with disk:
                b.start()
        league = h.Client(f.qd, fed.LEAGUE)
        seen = drain(league, accepted, timeout_s=60)
        print(f"accepted={len(accepted)} delivered={len(seen & accepted)} "
              f"lost={len(accepted - seen)}", flush=True)
        assert seen == accepted, f"{len(accepted - seen)} accepted referrals lost"
    finally:
        for b in (f.sh, f.hub, f.qd):
            b.cleanup()
        f.trust.cleanup()

def settles_sent_during_a_slow_commit_count_after_the_close():
    """An agency settles its last deliveries and closes its connection while
    the broker is inside a long commit (a slow disk: each sync of data.mdb
    waits 300 ms). The monitor reports the close before the broker has read
    those settles; the broker still reads and applies them before it ends
    the session, so every delivery is DELIVERED, none returns to the queue,
    and a new session of the agency is handed none of them."""
    with unstarted_broker() as b:
        disk = FailingDisk(b, delay_ms=300)
        with disk:
            b.start()
        desk = h.Client(b, DESK)
        accepted = accept(desk, "qd.police", 40)
        police = h.Client(b, "qd.police")
        police.credit(40)
        got = [d.message_id for d in police.deliveries(40, ack=False)]
        assert set(got) == accepted
        disk.fail()
        for mid in got[:20]:
            police.settle(mid, wait=False)
        time.sleep(0.15)          # the broker reads these and commits, slowly
        for mid in got[20:]:
            police.settle(mid, wait=False)
        police.sock.close(linger=2000)   # the last settles leave, then the close
        deadline = time.monotonic() + 20
        log = ""
        while time.monotonic() < deadline:
            log = b.read_log()
            if "session ended agency=qd.police" in log:
                break
            time.sleep(0.1)
        disk.heal()
        assert "session ended agency=qd.police" in log, log[-2000:]
        ended = [line for line in log.splitlines() if "session ended agency=qd.police" in line]
        assert ended[0].endswith("in_flight=0"), ended
        assert "returned to queue" not in log, \
            [line for line in log.splitlines() if "returned to queue" in line][:3]
        again = h.Client(b, "qd.police")
        again.credit(40)
        try:
            f = again.recv_kind("delivery", timeout_s=2)
            raise AssertionError(f"handed again after it was settled: {f.delivery.message_id.hex()}")
        except TimeoutError:
            pass
        again.close()
        desk.close()
        assert b.stop() == 0


if __name__ == "__main__":
    h.run([drained_store_accepts_again_and_receipts_flow_while_full,
           burst_cannot_overshoot_the_disk_guard,
           failed_commit_in_a_turn_exits_3_and_answers_nothing,
           failed_commit_in_a_reload_exits_3, failed_commit_at_start_exits_3,
           failing_disks_at_the_hub_and_the_destination_lose_nothing,
           settles_sent_during_a_slow_commit_count_after_the_close])
