"""Security suite (the part that holds before CURVE and signatures): a
session acts only as its own agency, cannot settle or inspect another's
messages, and the broker refuses replays, stale or far-future envelopes,
loops and exhausted hop limits, while it keeps serving and loses nothing
already accepted. Binding a session to a CURVE key, signatures and
sealing are tested with the trust work (docs/security.md)."""

import harness as h
from harness import pb

DESK = "sh.12355.desk"


def sender_spoofing_is_refused():
    with h.Broker() as b:
        intruder = h.Client(b.endpoint, "qd.school")
        spoof = h.make_envelope("qd.police", "qd.school")
        r = intruder.submit(spoof)
        assert r.code == pb.RESULT_SENDER_MISMATCH, r
        assert "qd.police" in r.detail and "qd.school" in r.detail
        police = h.Client(b.endpoint, "qd.school")
        police.credit(5)
        try:
            police.recv_kind("delivery", timeout_s=0.5)
            raise AssertionError("a spoofed envelope was stored")
        except TimeoutError:
            pass


def another_agency_cannot_settle_or_see():
    with h.Broker() as b:
        desk = h.Client(b.endpoint, DESK)
        env = h.make_envelope(DESK, "qd.police")
        mid = h.header_of(env).message_id
        assert desk.submit(env).code == pb.RESULT_OK
        intruder = h.Client(b.endpoint, "qd.school")
        for verb in (pb.SETTLE_VERB_ACK, pb.SETTLE_VERB_REJECT, pb.SETTLE_VERB_NAK):
            assert intruder.settle(mid, verb).code == pb.RESULT_UNKNOWN_MESSAGE
        st = intruder.status(mid)
        assert st.state == pb.MESSAGE_STATE_UNKNOWN and st.attempts == 0
        # The intruder's queue is its own: nothing of the police arrives.
        intruder.credit(5)
        try:
            intruder.recv_kind("delivery", timeout_s=0.5)
            raise AssertionError("another agency's referral was delivered")
        except TimeoutError:
            pass
        # The sender and the recipient may ask; the message is untouched.
        assert desk.status(mid).state == pb.MESSAGE_STATE_QUEUED
        police = h.Client(b.endpoint, "qd.police")
        police.credit(1)
        assert police.deliveries(1)[0].message_id == mid


def replay_and_freshness_are_refused():
    with h.Broker(limits__clock_skew_ms=60000, limits__max_ttl_ms=86400000) as b:
        desk = h.Client(b.endpoint, DESK)
        env = h.make_envelope(DESK, "qd.police")
        assert desk.submit(env).code == pb.RESULT_OK
        changed = h.make_envelope(DESK, "qd.police", message_id=h.header_of(env).message_id)
        assert desk.submit(changed).code == pb.RESULT_REPLAY
        old = h.make_envelope(DESK, "qd.police", created_at_ms=h.now_ms() - 3600_000,
                              ttl_ms=7200_000)
        r = desk.submit(old)
        assert r.code == pb.RESULT_REPLAY and "clock" in r.detail, r
        future = h.make_envelope(DESK, "qd.police", created_at_ms=h.now_ms() + 3600_000)
        assert desk.submit(future).code == pb.RESULT_REPLAY
        expired = h.make_envelope(DESK, "qd.police", created_at_ms=h.now_ms() - 2000,
                                  ttl_ms=1000)
        assert desk.submit(expired).code == pb.RESULT_EXPIRED
        too_long = h.make_envelope(DESK, "qd.police", ttl_ms=10 * 86400000)
        assert desk.submit(too_long).code == pb.RESULT_INVALID_FIELD
        looped = h.make_envelope(DESK, "qd.police", hops=[b.id])
        assert desk.submit(looped).code == pb.RESULT_LOOP
        worn = h.make_envelope(DESK, "qd.police", hops=["a", "b", "c", "d"])
        assert desk.submit(worn).code == pb.RESULT_HOP_LIMIT
        # Still serving, and the one accepted referral is intact.
        police = h.Client(b.endpoint, "qd.police")
        police.credit(10)
        got = police.deliveries(1)
        assert got[0].message_id == h.header_of(env).message_id
        assert got[0].envelope.sealed_body == env.sealed_body


def hello_with_bad_identity_is_refused():
    with h.Broker() as b:
        c = h.Client(b.endpoint)
        for bad in ("QD.Police", "qd..police", ".qd", "x" * 65, "qd police"):
            c.send(hello=pb.Hello(agency_id=bad))
            f = c.recv_kind("error")
            assert f.error.code == pb.RESULT_INVALID_FIELD, (bad, f)
        c.send(status=pb.StatusQuery(request_id=1, message_id=h.new_id()))
        assert c.recv_kind("error").error.code == pb.RESULT_NOT_IDENTIFIED


if __name__ == "__main__":
    h.run([sender_spoofing_is_refused, another_agency_cannot_settle_or_see,
           replay_and_freshness_are_refused, hello_with_bad_identity_is_refused])
