"""Trust bound end to end: what a client asserts about someone else's
referral is checked against what the broker recorded, at the broker and
again in libreferral. Receipts, referral ids and trace queries, each with
the forgeries an outside tester tried."""

import json
import time

import harness as h
from harness import pb

DESK = "sh.12355.desk"          # the sender
POLICE = "qd.police"             # the recipient
LEAGUE = "qd.youth-league"      # a third agency


def submit(b, who, env):
    c = h.Client(b, who)
    try:
        return c.submit(env)
    finally:
        c.close()


def refused(b, who, env, code):
    r = submit(b, who, env)
    assert r.code == code, (pb.ResultCode.Name(r.code), r.detail)
    assert r.detail, "a refusal must say why"
    return r


def receipts_are_bound_to_the_referral_at_the_broker():
    """Only an agency the referral was addressed to may acknowledge it,
    back to its sender, for a message the broker knows, with levels only
    moving forward; each forgery is refused with RESULT_RECEIPT_REFUSED and
    changes nothing: the sender receives exactly the genuine receipts."""
    with h.Broker() as b:
        ref = h.make_envelope(DESK, POLICE, urgency=pb.URGENCY_CRISIS, backups=[LEAGUE])
        assert submit(b, DESK, ref).code == pb.RESULT_OK
        plain = h.make_envelope(DESK, POLICE)            # addressed to POLICE alone
        assert submit(b, DESK, plain).code == pb.RESULT_OK
        rh = h.header_of(ref)
        ACC = pb.ACK_LEVEL_ACCEPTED_BY_AGENCY
        # A third agency, not addressed, claims the recipient accepted it.
        refused(b, LEAGUE,
                h.receipt_for(LEAGUE, plain, ACC), pb.RESULT_RECEIPT_REFUSED)
        # The sender acknowledges its own referral.
        refused(b, DESK, h.receipt_for(DESK, ref, ACC, to=POLICE), pb.RESULT_RECEIPT_REFUSED)
        # A receipt for a message that never existed.
        refused(b, POLICE, h.make_receipt(POLICE, DESK, h.new_id(), rh.referral_id, ACC),
                pb.RESULT_RECEIPT_REFUSED)
        # The right recipient, the wrong referral id.
        refused(b, POLICE, h.make_receipt(POLICE, DESK, rh.message_id, h.new_id(), ACC),
                pb.RESULT_RECEIPT_REFUSED)
        # The right recipient, sent to someone other than the referral's sender.
        refused(b, POLICE, h.receipt_for(POLICE, ref, ACC, to=LEAGUE),
                pb.RESULT_RECEIPT_REFUSED)
        # A receipt without its level in the header is not even readable.
        refused(b, POLICE, h.receipt_for(POLICE, ref, 0, body_level=ACC), pb.RESULT_INVALID_FIELD)
        # Genuine: the recipient, then the backup; levels move forward.
        received = h.receipt_for(POLICE, ref, pb.ACK_LEVEL_RECEIVED)
        assert submit(b, POLICE, received).code == pb.RESULT_OK
        assert submit(b, POLICE, received).is_duplicate          # a resend is fine
        refused(b, POLICE, h.receipt_for(POLICE, ref, pb.ACK_LEVEL_RECEIVED),
                pb.RESULT_RECEIPT_REFUSED)                          # same level again
        # DELIVERED is the broker's word (its notice at the settle), never a receipt.
        refused(b, POLICE, h.receipt_for(POLICE, ref, pb.ACK_LEVEL_DELIVERED),
                pb.RESULT_INVALID_FIELD)
        accepted = h.receipt_for(POLICE, ref, ACC)
        assert submit(b, POLICE, accepted).code == pb.RESULT_OK
        refused(b, POLICE, h.receipt_for(POLICE, ref, pb.ACK_LEVEL_RECEIVED),
                pb.RESULT_RECEIPT_REFUSED)                          # backwards
        backup = h.receipt_for(LEAGUE, ref, pb.ACK_LEVEL_RECEIVED)
        assert submit(b, LEAGUE, backup).code == pb.RESULT_OK      # a backup was addressed
        # The sender gets exactly the three genuine receipts.
        desk = h.Client(b, DESK)
        desk.credit(16)
        got = desk.deliveries(3, timeout_s=10)
        want = {h.header_of(e).message_id for e in (received, accepted, backup)}
        assert {d.message_id for d in got} == want, got
        try:
            extra = desk.recv_kind("delivery", timeout_s=1.5)
            raise AssertionError(f"a forged receipt was delivered: {extra}")
        except TimeoutError:
            pass
        desk.close()
        log = b.read_log()
        assert "code=24" in log, "refused receipts are logged with their code"


def referral_id_of_another_sender_is_refused_and_trace_is_bound():
    """A message carrying someone else's referral id is refused, so nobody
    can add events to another's referral; the trace is answered only to the
    referral's sender and the agencies it addressed, as first recorded."""
    with h.Broker() as b:
        ref = h.make_envelope(DESK, POLICE)
        assert submit(b, DESK, ref).code == pb.RESULT_OK
        rid = h.header_of(ref).referral_id
        # LEAGUE takes A's referral id for a message of its own to DESK.
        squat = h.make_envelope(LEAGUE, DESK, referral_id=rid)
        refused(b, LEAGUE, squat, pb.RESULT_NOT_AUTHORIZED)

        def trace(who):
            c = h.Client(b, who)
            try:
                c.request_id += 1
                c.send(trace=pb.TraceQuery(request_id=c.request_id, referral_id=rid))
                return c.recv_kind("trace").trace
            finally:
                c.close()

        assert trace(DESK).code == pb.RESULT_OK
        assert trace(POLICE).code == pb.RESULT_OK
        t = trace(LEAGUE)
        assert t.code == pb.RESULT_NOT_AUTHORIZED and not t.events, t
        # A referral nobody stored here: refused, not an empty answer.
        c = h.Client(b, DESK)
        c.send(trace=pb.TraceQuery(request_id=9, referral_id=h.new_id()))
        assert c.recv_kind("trace").trace.code == pb.RESULT_NOT_AUTHORIZED
        c.close()


def library_shows_only_receipts_bound_to_what_it_sent():
    """libreferral checks a receipt again before it shows it: the signer was
    addressed by the referral this desk sent, the body's agency is the
    signer, and body and header agree. A broker that relays forgeries (a
    fake one here) gets them refused; the genuine receipt is shown."""
    with h.Broker() as b:
        desk = h.Desk(b, DESK)
        fake = None
        try:
            sent = desk.events("send", "--to", POLICE, "--urgency", "crisis", "--category",
                               "protection", "--narrative", "bound receipts")
            assert sent[0]["event"] == "accepted", sent
            mid = bytes.fromhex(sent[0]["message_id"])
            rid = bytes.fromhex(sent[0]["referral_id"])
            ACC = pb.ACK_LEVEL_ACCEPTED_BY_AGENCY
            forged = [
                ("not addressed", h.make_receipt(LEAGUE, DESK, mid, rid, ACC)),
                ("body names another agency",
                 h.make_receipt(POLICE, DESK, mid, rid, ACC, agency_id=LEAGUE)),
                ("body level differs",
                 h.make_receipt(POLICE, DESK, mid, rid, pb.ACK_LEVEL_RECEIVED, body_level=ACC)),
                ("never sent", h.make_receipt(POLICE, DESK, h.new_id(), rid, ACC)),
            ]
            genuine = h.make_receipt(POLICE, DESK, mid, rid, ACC)
            fake, endpoint = fake_router(b)
            desk.env["REFERRAL_ENDPOINT"] = endpoint
            p = desk.popen("listen", "--count", "1", "--timeout-s", "8", "--json")
            settles = serve_deliveries(fake, p, [e for _, e in forged] + [genuine])
            out, err = p.communicate(timeout=10)
            shown = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            assert len(shown) == 1 and shown[0]["event"] == "receipt", (shown, err)
            assert shown[0]["message_id"] == h.header_of(genuine).message_id.hex(), shown
            assert shown[0]["in_reply_to"] == mid.hex() and shown[0]["referral_id"] == rid.hex()
            rejected = [s for s in settles if s[1] == pb.SETTLE_VERB_REJECT]
            assert len(rejected) == len(forged), settles
        finally:
            if fake is not None:
                fake.close(0)
            desk.cleanup()


def fake_router(b):
    import zmq
    s = zmq.Context.instance().socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    me = b.trust.identity(b.id)
    s.curve_server = True
    s.curve_secretkey = me.curve_secret
    s.curve_publickey = me.curve_public
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, f"tcp://127.0.0.1:{port}"


def serve_deliveries(fake, p, envelopes, seconds=8):
    """Answer Hello, deliver envelopes once credit comes, and collect every
    Settle (message id, verb) until the process exits and its last frames
    are read."""
    settles = []
    sent = False
    deadline = time.monotonic() + seconds
    quiet_after_exit = None
    while time.monotonic() < deadline:
        if p.poll() is not None:
            if quiet_after_exit is None:
                quiet_after_exit = time.monotonic() + 1.0
            elif time.monotonic() > quiet_after_exit:
                break
        if not fake.poll(100):
            continue
        rid, data = fake.recv_multipart()
        f = pb.ClientFrame()
        f.ParseFromString(data)
        body = f.WhichOneof("body")
        if body == "hello":
            w = pb.BrokerFrame(version=h.V1, welcome=pb.Welcome(broker_id="broker.test",
                                                              agency_id=f.hello.agency_id))
            fake.send_multipart([rid, w.SerializeToString()])
        elif body == "credit" and not sent:
            for e in envelopes:
                d = pb.Delivery(message_id=h.header_of(e).message_id, attempt=1,
                                urgency=pb.URGENCY_CRISIS, envelope=e)
                fake.send_multipart([rid, pb.BrokerFrame(version=h.V1,
                                                         delivery=d).SerializeToString()])
            sent = True
        elif body == "settle":
            settles.append((f.settle.message_id, f.settle.verb))
    return settles


if __name__ == "__main__":
    h.run([receipts_are_bound_to_the_referral_at_the_broker,
           referral_id_of_another_sender_is_refused_and_trace_is_bound,
           library_shows_only_receipts_bound_to_what_it_sent])
