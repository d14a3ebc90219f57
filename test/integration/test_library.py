"""libreferral and referral-desk against a real referrald on 127.0.0.1:
send, receive, acknowledge at every level, status, receipts back to the
sender, interoperation with an independent client (this harness, in
Python, reading only docs/protocol.md and the .proto), the outbox across
kill -9, and misuse."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import zmq

import harness as h
from harness import pb

DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
DESKTOOL = h.DESKTOOL
Desk = h.Desk
# After a process exits, frames it sent may still be on their way: read on
# until none came for this long.
QUIET_AFTER_EXIT_S = 0.5


def wait_for(what, condition, timeout_s=10.0, interval_s=0.05):
    """Poll condition() until it is true; fail naming what after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)


def send_receive_acknowledge_with_receipts():
    with h.Broker() as b:
        desk, league = Desk(b, DESK), Desk(b, LEAGUE)
        try:
            sent = desk.events("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                               "psychological_support", "--narrative",
                               "Caller, 17, has a plan for tonight", "--action",
                               "call within 15 minutes", "--pseudonym", "caller-7", "--age", "17")
            assert sent[0]["event"] == "accepted", sent
            mid = sent[0]["message_id"]
            got = league.events("listen", "--count", "1", "--timeout-s", "10", "--ack",
                                "received", "--person", "Wang Li")
            ref = [e for e in got if e["event"] == "referral"][0]
            assert ref["message_id"] == mid and ref["from"] == DESK
            assert ref["narrative"] == "Caller, 17, has a plan for tonight"
            assert ref["urgency"] == "crisis" and ref["age"] == 17
            assert any(e["event"] == "acknowledged" for e in got)
            league.run("ack", mid, "--level", "accepted", "--person", "Wang Li")
            league.run("ack", mid, "--level", "closed", "--person", "Wang Li", "--reason",
                       "family and school engaged")
            events = desk.events("listen", "--count", "4", "--timeout-s", "15")
            # DELIVERED is the broker's signed notice; the agency's receipts follow.
            (delivered,) = [e for e in events if e["event"] == "notice"]
            assert delivered["level"] == "delivered" and delivered["from"] == b.id, delivered
            assert delivered["in_reply_to"] == mid, delivered
            receipts = [e for e in events if e["event"] == "receipt"]
            assert [e["level"] for e in receipts] == ["received", "accepted", "closed"], events
            assert receipts[2]["detail"] == "family and school engaged", receipts[2]
            # A JSON case file, with a flag overriding one of its fields.
            case = os.path.join(desk.state, "case.json")
            with open(case, "w") as f:
                json.dump({"to": LEAGUE, "urgency": "urgent", "category": "protection",
                           "narrative": "from a case file", "requested_action": "visit",
                           "subject": {"pseudonym": "child-3", "age": 9}}, f)
            desk.events("send", "--case", case, "--urgency", "crisis")
            got = league.events("listen", "--count", "1", "--timeout-s", "10")
            assert got[0]["narrative"] == "from a case file" and got[0]["age"] == 9, got
            assert got[0]["urgency"] == "crisis" and got[0]["pseudonym"] == "child-3", got
            assert all(e["from"] == LEAGUE for e in receipts)
            assert desk.run("status", mid).stdout.split()[1] == "DELIVERED"
            # Delivered once: listening again shows nothing new.
            again = league.events("listen", "--timeout-s", "2")
            assert not [e for e in again if e["event"] == "referral"], again
        finally:
            desk.cleanup()
            league.cleanup()


def python_client_and_c_library_interoperate():
    """A referral signed and sealed in Python is verified and opened by
    libreferral; one sent by libreferral is verified and opened in Python."""
    with h.Broker() as b:
        league = Desk(b, LEAGUE)
        try:
            env = h.make_envelope(DESK, LEAGUE, pb.URGENCY_URGENT,
                                  case=h.case_file("made in Python, read in C"))
            py_desk = h.Client(b, DESK)
            assert py_desk.submit(env).code == pb.RESULT_OK
            got = league.events("listen", "--count", "1", "--timeout-s", "10")
            assert got[0]["narrative"] == "made in Python, read in C", got
            assert got[0]["message_id"] == h.header_of(env).message_id.hex()
            # DELIVERED comes back as the broker's signed notice; the league's
            # RECEIVED receipt, signed and sealed in C, follows it.
            league.run("ack", got[0]["message_id"], "--level", "received", "--person", "Wang Li")
            py_desk.credit(5)
            (n, d) = sorted(py_desk.deliveries(2), key=lambda x: x.HasField("envelope"))
            notice = pb.Notice()
            notice.ParseFromString(n.notice.notice)
            assert notice.kind == pb.NOTICE_KIND_ACK_LEVEL
            assert notice.level == pb.ACK_LEVEL_DELIVERED and notice.about_agency == LEAGUE
            b.trust.identity(b.id).sign_key.public_key().verify(
                n.notice.signature, b"referral.v1 notice\x00" + n.notice.notice)
            hdr = h.header_of(d.envelope)
            assert hdr.kind == pb.MESSAGE_KIND_RECEIPT and hdr.from_agency == LEAGUE
            data = (b"referral.v1 envelope\x00" + len(d.envelope.header).to_bytes(4, "big")
                    + d.envelope.header + h.sha256(d.envelope.sealed_body))
            b.trust.identity(LEAGUE).sign_key.public_key().verify(d.envelope.signature, data)
            receipt = h.open_sealed(d.envelope.sealed_body, d.envelope.header,
                                    b.trust.identity(DESK)).receipt
            assert receipt.level == pb.ACK_LEVEL_RECEIVED and receipt.person == "Wang Li"
            assert receipt.message_id == h.header_of(env).message_id
            # And the other way: C sends, Python opens.
            desk = Desk(b, DESK)
            sent = desk.events("send", "--to", LEAGUE, "--urgency", "routine", "--category",
                               "legal_aid", "--narrative", "made in C, read in Python")
            py_league = h.Client(b, LEAGUE)
            py_league.credit(5)
            d = py_league.deliveries(1)[0]
            assert d.message_id.hex() == sent[0]["message_id"]
            plain = h.open_sealed(d.envelope.sealed_body, d.envelope.header,
                                  b.trust.identity(LEAGUE))
            assert plain.case_file.narrative == "made in C, read in Python"
            assert plain.case_file.category == pb.CASE_CATEGORY_LEGAL_AID
            desk.cleanup()
        finally:
            league.cleanup()


def fake_broker(trust, broker_id):
    """A CURVE ROUTER with the broker's key that answers Hello and swallows
    every Submit: the desk waits for an ACCEPTED that never comes."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)
    s.setsockopt(zmq.LINGER, 0)
    me = trust.identity(broker_id)
    s.curve_server = True
    s.curve_secretkey = me.curve_secret
    s.curve_publickey = me.curve_public
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, f"tcp://127.0.0.1:{port}"


def serve_fake(s, seconds):
    deadline = time.monotonic() + seconds
    submits = 0
    while time.monotonic() < deadline:
        if not s.poll(100):
            continue
        rid, data = s.recv_multipart()
        f = pb.ClientFrame()
        f.ParseFromString(data)
        if f.WhichOneof("body") == "hello":
            w = pb.BrokerFrame(version=h.V1, welcome=pb.Welcome(broker_id="broker.test",
                                                              agency_id=f.hello.agency_id))
            s.send_multipart([rid, w.SerializeToString()])
        elif f.WhichOneof("body") == "submit":
            submits += 1
    return submits


def outbox_survives_kill9_of_the_desk():
    with h.Broker() as b:
        fake, endpoint = fake_broker(b.trust, b.id)
        desk = Desk(b, DESK, endpoint=endpoint)
        try:
            p = desk.popen("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                           "protection", "--narrative", "must not be lost")
            assert serve_fake(fake, 3) == 1, "the desk did not submit"
            p.send_signal(signal.SIGKILL)       # before any ACCEPTED
            p.wait(timeout=10)
            fake.close(0)
            # The next start of the desk, against the real broker, sends it again.
            desk.env["REFERRAL_ENDPOINT"] = b.endpoint
            desk.run("listen", "--timeout-s", "2")
            league = Desk(b, LEAGUE)
            got = league.events("listen", "--count", "1", "--timeout-s", "10")
            assert got and got[0]["narrative"] == "must not be lost", got
            again = league.events("listen", "--timeout-s", "2")
            assert not [e for e in again if e["event"] == "referral"], "delivered twice"
            league.cleanup()
        finally:
            desk.cleanup()


def outbox_entry_refused_later_is_reported_not_dropped():
    """A referral left in the outbox that expired before it could be sent
    again is refused by the broker at the next start: the desk hears of it
    (a notice to the application, an error in the log), it is not dropped."""
    with h.Broker() as b:
        fake, endpoint = fake_broker(b.trust, b.id)
        desk = Desk(b, DESK, endpoint=endpoint)
        try:
            p = desk.popen("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                           "protection", "--narrative", "expires in the outbox", "--ttl-s", "1")
            assert serve_fake(fake, 3) == 1
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=10)
            fake.close(0)
            time.sleep(1.5)   # the referral's TTL (1 s) passes: what is under test, not a sync
            desk.env["REFERRAL_ENDPOINT"] = b.endpoint
            got = desk.events("listen", "--count", "1", "--timeout-s", "10")
            assert got and got[0]["event"] == "notice" and got[0]["from"] == "libreferral", got
            assert "RESULT_EXPIRED" in got[0]["detail"], got
        finally:
            desk.cleanup()


def send_retries_while_the_store_is_full():
    """ref_send keeps sending while the broker answers STORE_FULL, and
    succeeds once the store has room again (no duplicate by the app)."""
    with h.Broker(store__map_size_bytes=4 << 20, store__high_water_percent=50) as b:
        py = h.Client(b, DESK)
        accepted = []
        full_since = None                      # fill until it stays full across measurements
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = py.submit(h.make_envelope(DESK, "qd.police", body_size=200))
            if r.code == pb.RESULT_OK:
                accepted.append(r.message_id)
                full_since = None
                continue
            assert r.code == pb.RESULT_STORE_FULL, r
            full_since = full_since or time.monotonic()
            if time.monotonic() - full_since > 2.5:
                break
            time.sleep(0.2)
        assert full_since is not None and time.monotonic() - full_since > 2.5
        desk = Desk(b, DESK)
        try:
            desk.env["REFERRAL_STATE"] = desk.state
            p = subprocess.Popen([DESKTOOL, "--timeout-ms", "30000", "send", "--to", LEAGUE,
                                  "--urgency", "crisis", "--category", "protection",
                                  "--narrative", "waits for room", "--json"], env=desk.env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # The desk keeps sending while the store is full: wait until the
            # broker has refused its referral (to the league) twice, as it
            # sends again every second.
            def refusals():
                return len(re.findall(r"refused msg=\w+ from=%s to=%s code=%d " % (
                    DESK, LEAGUE, pb.RESULT_STORE_FULL), b.read_log()))

            wait_for("the desk to send again while the store is full",
                     lambda: refusals() >= 2 or p.poll() is not None, timeout_s=15)
            if p.poll() is not None:
                out, err = p.communicate()
                raise AssertionError(f"ref_send gave up while the store was full: {p.returncode} {out} {err}")
            police = h.Client(b, "qd.police")
            police.credit(len(accepted) + 10)
            police.deliveries(len(accepted), timeout_s=30)
            out, err = p.communicate(timeout=40)
            assert p.returncode == 0, err
            assert json.loads(out.splitlines()[-1])["event"] == "accepted"
            got = Desk(b, LEAGUE).events("listen", "--count", "1", "--timeout-s", "10")
            assert [e["narrative"] for e in got] == ["waits for room"], got
        finally:
            desk.cleanup()


def delivery_not_taken_by_the_application_comes_again():
    """A client that pumps a delivery but exits before the application took
    it: the delivery is handed again at the next start (from the library's
    inbox, or by the broker if it never got that far), and once only."""
    with h.Broker(delivery__ack_timeout_ms=800) as b:
        desk, league = Desk(b, DESK), Desk(b, LEAGUE)
        try:
            sent = desk.events("send", "--to", LEAGUE, "--urgency", "urgent", "--category",
                               "protection", "--narrative", "do not lose me")
            mid = sent[0]["message_id"]
            # 'status' connects (granting credit), pumps, and exits without
            # ever calling ref_receive.
            # Nothing to wait for once it has exited: the delivery is either in
            # its inbox, stored and settled (state DELIVERED), or still at the
            # broker (QUEUED, or IN_FLIGHT until ack_timeout_ms); the next
            # listener is handed it in each case.
            league.run("status", mid)
            state = h.Client(b, DESK).status(bytes.fromhex(mid)).state
            assert state in (pb.MESSAGE_STATE_DELIVERED, pb.MESSAGE_STATE_QUEUED,
                             pb.MESSAGE_STATE_IN_FLIGHT), state
            got = league.events("listen", "--count", "1", "--timeout-s", "10")
            assert [e["narrative"] for e in got if e["event"] == "referral"] == \
                ["do not lose me"], got
            again = league.events("listen", "--timeout-s", "2")
            assert not [e for e in again if e["event"] == "referral"], again
        finally:
            desk.cleanup()
            league.cleanup()


def forged_notice_is_refused():
    """A notice that its broker did not sign (here: signed with an agency's
    key) is refused by libreferral, never shown; a signed one is shown."""
    with h.Broker() as b:
        fake, endpoint = fake_broker(b.trust, b.id)
        desk = Desk(b, DESK, endpoint=endpoint)
        try:
            p = desk.popen("listen", "--count", "1", "--timeout-s", "6", "--json")
            settles = []

            def notice(signer, detail):
                n = pb.Notice(notice_id=h.new_id(), kind=pb.NOTICE_KIND_UNDELIVERABLE,
                              referral_id=h.new_id(), message_id=h.new_id(), broker_id=b.id,
                              about_agency=LEAGUE, at_ms=h.now_ms(),
                              code=pb.RESULT_UNDELIVERABLE, detail=detail).SerializeToString()
                key = b.trust.identity(signer)
                return pb.Delivery(message_id=h.new_id(), attempt=1, urgency=pb.URGENCY_CRISIS,
                                   notice=pb.SignedNotice(
                                       notice=n, signer_key_id=h.key_id(key.sign_public),
                                       signature=key.sign_key.sign(
                                           b"referral.v1 notice\x00" + n)))

            # Serve until the desk has exited and its last frames are read:
            # it settles the forged notice (REJECT) while it reads on, and
            # that frame may still be on its way when it exits.
            deadline = time.monotonic() + 8
            sent = False
            quiet_until = None
            while time.monotonic() < deadline:
                if p.poll() is not None and quiet_until is None:
                    quiet_until = time.monotonic() + QUIET_AFTER_EXIT_S
                if quiet_until is not None and time.monotonic() > quiet_until:
                    break
                if not fake.poll(100):
                    continue
                if quiet_until is not None:
                    quiet_until = time.monotonic() + QUIET_AFTER_EXIT_S
                rid, data = fake.recv_multipart()
                f = pb.ClientFrame()
                f.ParseFromString(data)
                body = f.WhichOneof("body")
                if body == "hello":
                    w = pb.BrokerFrame(version=h.V1, welcome=pb.Welcome(
                        broker_id=b.id, agency_id=DESK))
                    fake.send_multipart([rid, w.SerializeToString()])
                elif body == "credit" and not sent:
                    for d in (notice(DESK, "forged"), notice(b.id, "genuine")):
                        fake.send_multipart([rid, pb.BrokerFrame(
                            version=h.V1, delivery=d).SerializeToString()])
                    sent = True
                elif body == "settle":
                    settles.append((f.settle.verb, f.settle.reason))
            out, err = p.communicate(timeout=10)
            shown = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
            assert [e["detail"] for e in shown] == [
                "NOTICE_KIND_UNDELIVERABLE: genuine (about qd.youth-league)"], (shown, err)
            assert (pb.SETTLE_VERB_REJECT, "notice signature does not verify") in settles, settles
        finally:
            fake.close(0)
            desk.cleanup()


def misuse_gives_errors_not_crashes():
    with h.Broker() as b:
        desk = Desk(b, DESK)
        try:
            r = desk.run("send", "--to", LEAGUE, check=False)
            assert r.returncode == 2 and "required" in r.stderr, r
            r = desk.run("send", "--to", "qd.nowhere", "--urgency", "routine", "--category",
                         "other", "--narrative", "x", check=False)
            assert r.returncode == 1 and "not in the directory" in r.stderr, r
            assert not r.stdout, "a referral that was not sent is never reported as sent"
            r = desk.run("send", "--to", "Bad..Id", "--urgency", "routine", "--category",
                         "other", "--narrative", "x", check=False)
            assert r.returncode == 2, r
            r = desk.run("send", "--to", LEAGUE, "--urgency", "routine", "--category", "other",
                         "--narrative", "x" * 70000, check=False)
            assert r.returncode == 1 and "larger" in r.stderr and not r.stdout, r
            r = desk.run("ack", "00" * 16, "--level", "received", "--person", "x", check=False)
            assert r.returncode == 2 and "no referral" in r.stderr, r
            r = desk.run("ack", "nothex", "--level", "received", check=False)
            assert r.returncode == 2, r
            r = desk.run("frobnicate", check=False)
            assert r.returncode == 2, r
            wrong = dict(desk.env, REFERRAL_KEYS="/nonexistent")
            r = subprocess.run([DESKTOOL, "status", "00" * 16], env=wrong, capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 4 and "cannot open" in r.stderr, r
            other = dict(desk.env, REFERRAL_AGENCY="qd.outsider")
            r = subprocess.run([DESKTOOL, "--timeout-ms", "1500", "status", "00" * 16],
                               env=other, capture_output=True, text=True, timeout=30)
            assert r.returncode != 0, r
            assert subprocess.run([DESKTOOL, "--help"], capture_output=True,
                                  timeout=10).returncode == 0
        finally:
            desk.cleanup()
        assert b.proc.poll() is None


TESTS = [send_receive_acknowledge_with_receipts, python_client_and_c_library_interoperate,
         outbox_survives_kill9_of_the_desk, outbox_entry_refused_later_is_reported_not_dropped,
         send_retries_while_the_store_is_full, delivery_not_taken_by_the_application_comes_again,
         forged_notice_is_refused, misuse_gives_errors_not_crashes]

if __name__ == "__main__":
    h.run(TESTS)
