"""Fault suite: restarts, kill -9, damaged input, a full store, a damaged
or missing store. Every process is started and stopped by PID."""

import os
import secrets
import time

import harness as h
from harness import pb

DESK = "sh.12355.desk"


def drain(client, expected_ids, timeout_s=60):
    """Receive and ack until every expected id arrived; returns the ids seen.
    Credit is topped up by one per delivery, whatever the broker's cap."""
    seen = set()
    deadline = time.monotonic() + timeout_s
    client.credit(1000)
    while not expected_ids <= seen:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            f = client.recv_kind("delivery", timeout_s=min(left, 5))
        except TimeoutError:
            continue
        seen.add(f.delivery.message_id)
        client.settle(f.delivery.message_id, wait=False)
        client.credit(1)
    return seen


def restart_keeps_10000_queued():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        ids = set()
        window = []
        for i in range(10000):
            env = h.make_envelope(DESK, "qd.youth-league", body_size=128)
            ids.add(h.header_of(env).message_id)
            window.append(desk.submit(env, wait=False))
            if len(window) >= 500:
                for rid in window:
                    assert desk.wait_reply(rid).code == pb.RESULT_OK
                window = []
        for rid in window:
            assert desk.wait_reply(rid).code == pb.RESULT_OK
        desk.close()
        assert b.stop() == 0
        b.start()
        agency = h.Client(b, "qd.youth-league")
        seen = drain(agency, ids, timeout_s=240)
        missing = ids - seen
        if missing:
            print(b.read_log()[-6000:])
        assert not missing, f"{len(missing)} of 10000 lost across a restart"
        assert seen == ids


def kill9_keeps_every_accepted_referral():
    """A stream of 10,000 pipelined submissions; kill -9 while it flows (once
    3,000 were accepted); restart: every submission answered OK is
    delivered, and nothing that was never sent appears."""
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        sent = set()
        accepted = set()
        outstanding = 0
        i = 0
        while i < 10000 and len(accepted) < 3000:
            while outstanding < 300 and i < 10000:
                env = h.make_envelope(DESK, "qd.police", body_size=200)
                sent.add(h.header_of(env).message_id)
                desk.submit(env, wait=False)
                outstanding += 1
                i += 1
            f = desk.recv_kind("submit_reply", timeout_s=10)
            outstanding -= 1
            assert f.submit_reply.code == pb.RESULT_OK, f
            accepted.add(f.submit_reply.message_id)
        b.kill()                       # mid-stream: ~300 submissions in flight
        while True:                    # replies already on the wire count too
            try:
                f = desk.recv_kind("submit_reply", timeout_s=0.3)
            except TimeoutError:
                break
            if f.submit_reply.code == pb.RESULT_OK:
                accepted.add(f.submit_reply.message_id)
        desk.close()
        assert len(accepted) >= 3000
        b.start()
        police = h.Client(b, "qd.police")
        seen = drain(police, accepted, timeout_s=120)
        lost = accepted - seen
        assert not lost, f"{len(lost)} accepted referrals lost after kill -9"
        assert seen <= sent, "a message nobody sent was delivered"
        print(f"     sent {len(sent)}, accepted before kill {len(accepted)}, "
              f"delivered after restart {len(seen)}")


def bad_frames_get_errors_and_broker_keeps_serving():
    with h.Broker(limits__max_frame_bytes=262144, limits__max_body_bytes=32768) as b:
        raw = h.Client(b, key_of=DESK)
        good = pb.ClientFrame(version=h.V1, hello=pb.Hello(agency_id=DESK)).SerializeToString()
        cases = {
            "garbage": secrets.token_bytes(64),
            "truncated": pb.ClientFrame(version=h.V1, submit=pb.Submit(
                request_id=1, envelope=h.make_envelope(DESK, "qd.police"))
            ).SerializeToString()[:-7],
            "empty": b"",
            "oversized": b"\x0a" + secrets.token_bytes(300000),
            "wrong version": pb.ClientFrame(version=7, hello=pb.Hello(agency_id=DESK))
            .SerializeToString(),
            "embedded NUL in id": good.replace(DESK.encode(), b"sh.12355\x00desk"),
        }
        expected = {
            "garbage": {pb.RESULT_MALFORMED},
            "truncated": {pb.RESULT_MALFORMED},
            "empty": {pb.RESULT_INVALID_FIELD, pb.RESULT_VERSION_MISMATCH},
            "oversized": {pb.RESULT_TOO_LARGE},
            "wrong version": {pb.RESULT_VERSION_MISMATCH},
            "embedded NUL in id": {pb.RESULT_MALFORMED},
        }
        for name, data in cases.items():
            raw.send_raw(data)
            f = raw.recv_kind("error", timeout_s=5)
            assert f.error.code in expected[name], (name, f.error)
            assert f.error.detail, name
        # A submit before hello, and frames far too large to read at all.
        env = h.make_envelope(DESK, "qd.police")
        raw.send(submit=pb.Submit(request_id=9, envelope=env))
        assert raw.recv_kind("error").error.code == pb.RESULT_NOT_IDENTIFIED
        huge = h.Client(b, key_of=DESK)
        huge.send_raw(b"\x00" * 600000)      # beyond 2x max: libzmq drops that link
        # Submissions with bad headers are answered, not dropped.
        desk = h.Client(b, DESK)
        bad = h.make_envelope(DESK, "qd.police")
        hdr = h.header_of(bad)
        hdr.hop_limit = 0
        bad.header = hdr.SerializeToString()
        r = desk.submit(bad)
        assert r.code == pb.RESULT_INVALID_FIELD and "hop_limit" in r.detail, r
        big = h.make_envelope(DESK, "qd.police", body_size=40000)
        assert desk.submit(big).code == pb.RESULT_TOO_LARGE
        # And the broker still serves.
        ok = h.make_envelope(DESK, "qd.police")
        assert desk.submit(ok).code == pb.RESULT_OK
        assert b.proc.poll() is None


def full_store_refuses_new_and_loses_nothing():
    # A 4 MiB map with a 50% high-water mark fills after a few hundred.
    with h.Broker(store__map_size_bytes=4 << 20, store__high_water_percent=50) as b:
        desk = h.Client(b, DESK)
        accepted = set()
        refused = 0
        first = None
        for i in range(3000):
            env = h.make_envelope(DESK, "qd.hospital", body_size=4000)
            r = desk.submit(env)
            if r.code == pb.RESULT_OK:
                accepted.add(r.message_id)
                first = first or env
            else:
                assert r.code == pb.RESULT_STORE_FULL, r
                assert "retry later" in r.detail
                refused += 1
                if refused >= 20:
                    break
        assert refused >= 20 and accepted, (len(accepted), refused)
        # Receipts (bound to a stored referral) still flow above the high-water mark.
        receipt = h.receipt_for("qd.hospital", first, pb.ACK_LEVEL_RECEIVED)
        hospital_desk = h.Client(b, "qd.hospital")
        assert hospital_desk.submit(receipt).code == pb.RESULT_OK
        # Deliveries and acks keep flowing while full, and free the room.
        hospital = h.Client(b, "qd.hospital")
        seen = drain(hospital, accepted, timeout_s=60)
        assert seen == accepted, f"{len(accepted - seen)} accepted lost in a full store"
        time.sleep(1.2)                      # room is measured once a second
        deadline = time.monotonic() + 10
        while True:
            r = desk.submit(h.make_envelope(DESK, "qd.hospital", body_size=4000))
            if r.code == pb.RESULT_OK or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.code == pb.RESULT_OK, f"store stayed full after draining: {r}"
        assert "store is" in b.read_log()


def sigterm_closes_cleanly():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        assert desk.submit(h.make_envelope(DESK, "qd.police")).code == pb.RESULT_OK
        assert b.stop() == 0
        assert "stopping: last turn committed" in b.read_log()


def damaged_or_missing_store_is_refused():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        desk.submit(h.make_envelope(DESK, "qd.police"))
        b.stop()
        data = os.path.join(b.dir, "store", "data.mdb")
        os.rename(data, data + ".moved")
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started without its data file")
        except RuntimeError as e:
            assert "refusing to start empty" in str(e), e
        assert not os.path.exists(data), "an empty store replaced the missing one"
        # A damaged file (its header pages overwritten) is refused too.
        os.rename(data + ".moved", data)
        with open(data, "r+b") as f:
            f.write(secrets.token_bytes(8192))
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started on a damaged store")
        except RuntimeError as e:
            assert "cannot open store" in str(e) or "not of format" in str(e), e


def corrupt_body_is_quarantined_not_delivered():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        bad = h.make_envelope(DESK, "qd.school")
        marker = bad.sealed_body[100:600]
        good = h.make_envelope(DESK, "qd.school")
        desk.submit(bad)
        desk.submit(good)
        desk.close()
        b.stop()
        data = os.path.join(b.dir, "store", "data.mdb")
        blob = bytearray(open(data, "rb").read())
        # Copy-on-write leaves stale copies in free pages: damage them all.
        at = blob.find(marker)
        assert at >= 0, "body not found in the store file"
        while at >= 0:
            blob[at + 100] ^= 0xFF
            at = blob.find(marker, at + 1)
        open(data, "wb").write(bytes(blob))
        b.start()
        school = h.Client(b, "qd.school")
        school.credit(10)
        got = school.deliveries(1)
        assert got[0].message_id == h.header_of(good).message_id
        try:
            school.recv_kind("delivery", timeout_s=0.7)
            raise AssertionError("a corrupt body was delivered")
        except TimeoutError:
            pass
        desk = h.Client(b, DESK)
        desk.credit(5)
        n = desk.deliveries(1)[0]
        notice = pb.Notice()
        notice.ParseFromString(n.notice.notice)
        assert notice.kind == pb.NOTICE_KIND_QUARANTINED
        assert notice.message_id == h.header_of(bad).message_id
        assert desk.status(notice.message_id).state == pb.MESSAGE_STATE_QUARANTINED
        assert "quarantined" in b.read_log()


def client_that_stops_reading_does_not_stall_others():
    """A client floods requests and never reads: its replies fill its pipe,
    the broker holds them, then drops that session; others are served all
    along and nothing accepted is lost."""
    with h.Broker(limits__max_credit=4) as b:
        desk = h.Client(b, DESK)
        flooder = h.Client(b, "qd.hospital")
        flooder.sock.setsockopt(h.zmq.RCVHWM, 10)
        flooder.sock.setsockopt(h.zmq.SNDTIMEO, 2000)
        junk = b"\xff" * 64                 # each answered by an ErrorReply
        for _ in range(100000):
            try:
                flooder.sock.send(junk)
            except h.zmq.Again:
                break
        accepted = set()
        start = time.monotonic()
        while time.monotonic() - start < 9:
            env = h.make_envelope(DESK, "qd.police")
            r = desk.submit(env, timeout_s=5)
            assert r.code == pb.RESULT_OK, r
            accepted.add(r.message_id)
            time.sleep(0.1)
        assert "peer stopped reading" in b.read_log(), "the flooding session was not dropped"
        police = h.Client(b, "qd.police")
        assert drain(police, accepted, timeout_s=60) == accepted
        assert b.proc.poll() is None


if __name__ == "__main__":
    h.run([bad_frames_get_errors_and_broker_keeps_serving, sigterm_closes_cleanly,
           damaged_or_missing_store_is_refused, corrupt_body_is_quarantined_not_delivered,
           full_store_refuses_new_and_loses_nothing, restart_keeps_10000_queued,
           kill9_keeps_every_accepted_referral, client_that_stops_reading_does_not_stall_others])
