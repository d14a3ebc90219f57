"""Integration: submit, deliver, acknowledge, ordering and redelivery
against a real referrald on 127.0.0.1."""

import harness as h
from harness import pb


def submit_deliver_ack():
    with h.Broker() as b:
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.youth-league", pb.URGENCY_CRISIS)
        mid = h.header_of(env).message_id
        r = desk.submit(env)
        assert r.code == pb.RESULT_OK, r
        assert r.message_id == mid and not r.is_duplicate
        agency = h.Client(b, "qd.youth-league")
        agency.credit(10)
        d = agency.deliveries(1, ack=False)[0]
        assert d.message_id == mid and d.attempt == 1
        assert d.envelope.header == env.header
        assert d.envelope.sealed_body == env.sealed_body
        assert list(d.envelope.hops) == [b.id]
        s = agency.settle(mid)
        assert s.code == pb.RESULT_OK, s
        assert desk.status(mid).state == pb.MESSAGE_STATE_DELIVERED
        # Acknowledged: nothing more arrives.
        try:
            agency.recv_kind("delivery", timeout_s=0.5)
            raise AssertionError("acknowledged message was delivered again")
        except TimeoutError:
            pass


def duplicate_is_accepted_once():
    with h.Broker() as b:
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.police")
        r1 = desk.submit(env)
        r2 = desk.submit(env)
        assert r1.code == r2.code == pb.RESULT_OK
        assert r2.is_duplicate and not r1.is_duplicate
        # Same id, other content: replay.
        other = h.make_envelope("sh.12355.desk", "qd.police",
                                message_id=h.header_of(env).message_id)
        r3 = desk.submit(other)
        assert r3.code == pb.RESULT_REPLAY, r3
        police = h.Client(b, "qd.police")
        police.credit(10)
        police.deliveries(1)
        try:
            police.recv_kind("delivery", timeout_s=0.7)
            raise AssertionError("a duplicate was stored twice")
        except TimeoutError:
            pass


def late_resend_of_a_stored_referral_is_a_duplicate():
    """A desk's outbox may resend long after the broker stored a referral
    (the answer was lost): same content is OK (duplicate) even once its
    created_at has left the clock-skew window."""
    with h.Broker(limits__clock_skew_ms=1000) as b:
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.police")
        assert desk.submit(env).code == pb.RESULT_OK
        h.time.sleep(1.5)
        r = desk.submit(env)
        assert r.code == pb.RESULT_OK and r.is_duplicate, r
        fresh = h.make_envelope("sh.12355.desk", "qd.police", created_at_ms=h.now_ms() - 5000)
        assert desk.submit(fresh).code == pb.RESULT_REPLAY


def crisis_overtakes_routine():
    with h.Broker() as b:
        desk = h.Client(b, "sh.12355.desk")
        for _ in range(1000):
            desk.submit(h.make_envelope("sh.12355.desk", "qd.school", body_size=64), wait=False)
        crisis = h.make_envelope("sh.12355.desk", "qd.school", pb.URGENCY_CRISIS)
        rid = desk.submit(crisis, wait=False)
        assert desk.wait_reply(rid, timeout_s=60).code == pb.RESULT_OK
        school = h.Client(b, "qd.school")
        school.credit(1)
        d = school.deliveries(1)[0]
        assert d.message_id == h.header_of(crisis).message_id, "crisis did not come first"
        assert d.urgency == pb.URGENCY_CRISIS


def redelivery_after_disconnect():
    with h.Broker(delivery__ack_timeout_ms=700) as b:
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.hospital", pb.URGENCY_URGENT)
        mid = h.header_of(env).message_id
        assert desk.submit(env).code == pb.RESULT_OK
        first = h.Client(b, "qd.hospital")
        first.credit(5)
        d1 = first.deliveries(1, ack=False)[0]
        assert d1.attempt == 1
        first.close()                      # gone without acking
        second = h.Client(b, "qd.hospital")
        second.credit(5)
        d2 = second.deliveries(1, timeout_s=10, ack=False)[0]
        assert d2.message_id == mid and d2.attempt >= 2, d2
        assert second.settle(mid).code == pb.RESULT_OK
        # Returned when the first session ended with its connection (or, if
        # that is noticed late, by the ack timeout).
        log = b.read_log()
        assert "why=session ended" in log or "ack timeout" in log


def nak_delays_and_in_progress_extends():
    with h.Broker(delivery__ack_timeout_ms=2000) as b:
        desk = h.Client(b, "sh.12355.desk")
        env = h.make_envelope("sh.12355.desk", "qd.civil")
        mid = h.header_of(env).message_id
        desk.submit(env)
        c = h.Client(b, "qd.civil")
        c.credit(5)
        c.deliveries(1, ack=False)
        assert c.settle(mid, pb.SETTLE_VERB_NAK, delay_ms=300).code == pb.RESULT_OK
        d = c.deliveries(1, timeout_s=5, ack=False)[0]
        assert d.attempt == 2
        # In progress three times across more than one ack timeout (with a
        # second of margin each time): no redelivery.
        for _ in range(3):
            h.time.sleep(1.0)
            assert c.settle(mid, pb.SETTLE_VERB_IN_PROGRESS).code == pb.RESULT_OK
        try:
            c.recv_kind("delivery", timeout_s=0.3)
            raise AssertionError("in-progress did not extend the deadline")
        except TimeoutError:
            pass
        assert c.settle(mid).code == pb.RESULT_OK


def reject_and_expiry_notify_sender():
    with h.Broker() as b:
        desk = h.Client(b, "sh.12355.desk")
        rej = h.make_envelope("sh.12355.desk", "qd.procuratorate")
        exp = h.make_envelope("sh.12355.desk", "qd.nobody", ttl_ms=1500)
        desk.submit(rej)
        desk.submit(exp)
        p = h.Client(b, "qd.procuratorate")
        p.credit(1)
        d = p.deliveries(1, ack=False)[0]
        assert p.settle(d.message_id, pb.SETTLE_VERB_REJECT, reason="not our remit").code \
            == pb.RESULT_OK
        desk.credit(10)
        notices = desk.deliveries(2, timeout_s=10)
        kinds = {}
        for n in notices:
            assert n.WhichOneof("payload") == "notice"
            body = pb.Notice()
            body.ParseFromString(n.notice.notice)
            kinds[body.message_id] = body
        rejected = kinds[h.header_of(rej).message_id]
        assert rejected.level == pb.ACK_LEVEL_REJECTED and "not our remit" in rejected.detail
        for n in notices:                      # signed by the broker
            b.trust.identity(b.id).sign_key.public_key().verify(
                n.notice.signature, b"referral.v1 notice\x00" + n.notice.notice)
            assert n.notice.signer_key_id == h.key_id(b.trust.identity(b.id).sign_public)
        expired = kinds[h.header_of(exp).message_id]
        assert expired.kind == pb.NOTICE_KIND_UNDELIVERABLE
        assert expired.code == pb.RESULT_UNDELIVERABLE
        assert desk.status(h.header_of(exp).message_id).state == \
            pb.MESSAGE_STATE_UNDELIVERABLE


if __name__ == "__main__":
    h.run([submit_deliver_ack, duplicate_is_accepted_once,
           late_resend_of_a_stored_referral_is_a_duplicate, crisis_overtakes_routine,
           redelivery_after_disconnect, nak_delays_and_in_progress_extends,
           reject_and_expiry_notify_sender])
