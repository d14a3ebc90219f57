"""Security suite: forged, altered, replayed and misaddressed envelopes,
unknown and revoked keys, spoofed identities, other agencies' queues, bad
directories. Each is refused with its documented code while the broker
keeps serving others and loses nothing it accepted."""

import os
import secrets
import signal
import time

import zmq
import zmq.utils.z85
from cryptography.exceptions import InvalidTag

import harness as h
from harness import pb

DESK = "sh.12355.desk"
POLICE = "qd.police"


class Guard:
    """A referral accepted before the attacks, checked intact after them."""

    def __init__(self, b):
        self.b = b
        self.env = h.make_envelope(DESK, POLICE, pb.URGENCY_CRISIS, trust=b.trust)
        desk = h.Client(b, DESK)
        assert desk.submit(self.env).code == pb.RESULT_OK
        desk.close()

    def check(self):
        assert self.b.proc is not None and self.b.proc.poll() is None, "broker died"
        police = h.Client(self.b, POLICE)
        police.credit(50)
        mid = h.header_of(self.env).message_id
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = police.recv_kind("delivery", timeout_s=5)
            police.settle(f.delivery.message_id, wait=False)
            if f.delivery.message_id == mid:
                assert f.delivery.envelope.sealed_body == self.env.sealed_body
                plain = h.open_sealed(f.delivery.envelope.sealed_body,
                                      f.delivery.envelope.header, self.b.trust.identity(POLICE))
                assert plain.case_file.subject.age_years == 17
                return
        raise AssertionError("the referral accepted before the attacks was not delivered")


def refused(b, env, code, who=DESK):
    c = h.Client(b, who)
    r = c.submit(env)
    c.close()
    assert r.code == code, (pb.ResultCode.Name(r.code), r.detail)
    assert r.detail, "a refusal must say why"
    return r


def forged_and_unknown_signatures_are_refused():
    with h.Broker() as b:
        g = Guard(b)
        # Signed by another agency's key, claiming to be the desk.
        refused(b, h.make_envelope(DESK, POLICE, signer="qd.school"), pb.RESULT_UNKNOWN_KEY)
        # The desk's key id, but a signature of random bytes.
        env = h.make_envelope(DESK, POLICE)
        env.signature = secrets.token_bytes(64)
        refused(b, env, pb.RESULT_BAD_SIGNATURE)
        # A key the directory has never seen.
        env = h.make_envelope(DESK, POLICE, signer="qd.outsider")
        refused(b, env, pb.RESULT_UNKNOWN_KEY)
        g.check()


def tampered_header_and_body_are_refused():
    with h.Broker() as b:
        g = Guard(b)
        env = h.make_envelope(DESK, POLICE, pb.URGENCY_ROUTINE)
        hdr = h.header_of(env)
        hdr.urgency = pb.URGENCY_CRISIS              # jump the queue
        env.header = hdr.SerializeToString()
        refused(b, env, pb.RESULT_BAD_SIGNATURE)
        env = h.make_envelope(DESK, POLICE)
        body = bytearray(env.sealed_body)
        body[len(body) // 2] ^= 0x01
        env.sealed_body = bytes(body)
        refused(b, env, pb.RESULT_BAD_SIGNATURE)
        g.check()


def body_moved_to_another_header_is_refused_and_unreadable():
    with h.Broker() as b:
        g = Guard(b)
        a = h.make_envelope(DESK, POLICE)
        other = h.make_envelope(DESK, POLICE)
        moved = pb.Envelope()
        moved.CopyFrom(other)
        moved.sealed_body = a.sealed_body
        # Same size bucket, so the header's padded_size still matches.
        assert len(a.sealed_body) == len(other.sealed_body)
        refused(b, moved, pb.RESULT_BAD_SIGNATURE)
        # Even if the sender re-signs it (a compromised desk), the AEAD binds
        # the body to its header: the recipient cannot open it.
        moved.signature = h.sign_envelope(b.trust.identity(DESK), moved.header, moved.sealed_body)
        desk = h.Client(b, DESK)
        assert desk.submit(moved).code == pb.RESULT_OK
        police = h.Client(b, POLICE)
        police.credit(10)
        seen = 0
        while seen < 2:
            d = police.recv_kind("delivery").delivery
            police.settle(d.message_id, wait=False)
            seen += 1
            if d.message_id == h.header_of(moved).message_id:
                try:
                    h.open_sealed(d.envelope.sealed_body, d.envelope.header,
                                  b.trust.identity(POLICE))
                    raise AssertionError("a body moved to another header was opened")
                except InvalidTag:
                    pass


def replay_is_refused():
    with h.Broker(limits__clock_skew_ms=60000) as b:
        g = Guard(b)
        again = pb.Envelope()
        again.CopyFrom(g.env)
        desk = h.Client(b, DESK)
        r = desk.submit(again)
        assert r.code == pb.RESULT_OK and r.is_duplicate      # same content: once
        other = h.make_envelope(DESK, POLICE, message_id=h.header_of(g.env).message_id)
        refused(b, other, pb.RESULT_REPLAY)
        old = h.make_envelope(DESK, POLICE, created_at_ms=h.now_ms() - 600_000, ttl_ms=3600_000)
        refused(b, old, pb.RESULT_REPLAY)
        expired = h.make_envelope(DESK, POLICE, created_at_ms=h.now_ms() - 5000, ttl_ms=1000)
        refused(b, expired, pb.RESULT_EXPIRED)
        # Hops are appended by brokers only: a client's submission with hops
        # is refused, whatever they say, and cannot buy a way round freshness.
        refused(b, h.make_envelope(DESK, POLICE, hops=[b.id]), pb.RESULT_INVALID_FIELD)
        refused(b, h.make_envelope(DESK, POLICE, hops=["a", "b", "c", "d"]),
                pb.RESULT_INVALID_FIELD)
        day = 24 * 3600_000
        for created in (h.now_ms() - 20 * day, h.now_ms() + 20 * day):
            refused(b, h.make_envelope(DESK, POLICE, hops=["broker.beijing"], created_at_ms=created,
                                       ttl_ms=25 * day), pb.RESULT_INVALID_FIELD)
            refused(b, h.make_envelope(DESK, POLICE, created_at_ms=created, ttl_ms=25 * day),
                    pb.RESULT_REPLAY)
        refused(b, h.make_envelope(DESK, "qd.outsider"), pb.RESULT_UNKNOWN_RECIPIENT)
        g.check()


def send_bounded(sock, data):
    """Send without blocking: a DEALER whose only pipe the broker's ZAP
    handler tore down has no peer, and a blocking send would wait forever.
    Whether the frame left or not, nothing may come back."""
    try:
        sock.send(data, zmq.NOBLOCK)
    except zmq.Again:
        pass


def wait_for_log(b, text, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while text not in b.read_log():
        assert time.monotonic() < deadline, f"no '{text}' in the log: " + b.read_log()[-2000:]
        time.sleep(0.05)


def unknown_curve_key_cannot_connect():
    with h.Broker() as b:
        g = Guard(b)
        outsider = h.Client(b, key_of="qd.outsider")
        send_bounded(outsider.sock, pb.ClientFrame(version=h.V1, hello=pb.Hello(agency_id=DESK))
                     .SerializeToString())
        wait_for_log(b, "unknown CURVE key")
        try:
            outsider.recv(timeout_s=1.5)
            raise AssertionError("a connection with an unknown CURVE key got an answer")
        except TimeoutError:
            pass
        outsider.close()
        # A client that does not know the server key at all.
        ctx = zmq.Context.instance()
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(b.endpoint)
        send_bounded(plain, pb.ClientFrame(version=h.V1, hello=pb.Hello(agency_id=DESK))
                     .SerializeToString())
        assert not plain.poll(1000), "a plaintext client got an answer"
        plain.close(0)
        g.check()


def sender_spoofing_is_refused():
    with h.Broker() as b:
        g = Guard(b)
        school = h.Client(b, "qd.school")
        spoof = h.make_envelope(POLICE, "qd.school")       # properly signed by the police
        r = school.submit(spoof)
        assert r.code == pb.RESULT_SENDER_MISMATCH, r
        # A Hello that names another agency than the key's is refused.
        c = h.Client(b, key_of="qd.school")
        c.send(hello=pb.Hello(agency_id=DESK))
        assert c.recv_kind("error").error.code == pb.RESULT_NOT_AUTHORIZED
        g.check()


def another_agency_queue_is_out_of_reach():
    with h.Broker() as b:
        g = Guard(b)
        mid = h.header_of(g.env).message_id
        intruder = h.Client(b, "qd.school")
        for verb in (pb.SETTLE_VERB_ACK, pb.SETTLE_VERB_REJECT, pb.SETTLE_VERB_NAK):
            assert intruder.settle(mid, verb).code == pb.RESULT_UNKNOWN_MESSAGE
        assert intruder.status(mid).state == pb.MESSAGE_STATE_UNKNOWN
        intruder.credit(10)
        try:
            intruder.recv_kind("delivery", timeout_s=0.5)
            raise AssertionError("another agency's referral was delivered")
        except TimeoutError:
            pass
        g.check()


def broker_store_holds_no_plaintext():
    with h.Broker() as b:
        marker = "caller-" + secrets.token_hex(16)
        case = h.case_file(narrative=f"{marker} said she would jump from the school roof.")
        case.subject.pseudonym = marker
        env = h.make_envelope(DESK, POLICE, pb.URGENCY_CRISIS, case=case)
        desk = h.Client(b, DESK)
        assert desk.submit(env).code == pb.RESULT_OK
        b.stop()
        with open(os.path.join(b.dir, "store", "data.mdb"), "rb") as f:
            data = f.read()
        assert env.sealed_body[40:200] in data, "the sealed body should be stored"
        assert marker.encode() not in data, "case plaintext found in the broker's store"
        assert b"school roof" not in data


def bad_directories_are_refused():
    t = h.Trust(brokers=("broker.test",), agencies=[DESK, POLICE])
    try:
        good = t.directory
        other_root = h.Trust(brokers=("broker.test",), agencies=[DESK])
        # Signed by a root that is not the pinned one.
        t.directory = other_root.directory
        b = h.Broker(trust=t)
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started with a directory from another root")
        except RuntimeError as e:
            assert "not by the pinned trust root" in str(e), e
        # Unsigned: the directory bytes with no signature.
        sd = pb.SignedDirectory()
        with open(good, "rb") as f:
            sd.ParseFromString(f.read())
        sd.ClearField("signature")
        unsigned = os.path.join(t.dir, "unsigned.signed")
        with open(unsigned, "wb") as f:
            f.write(sd.SerializeToString())
        t.directory = unsigned
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started with an unsigned directory")
        except RuntimeError as e:
            assert "not signed" in str(e), e
        # Expired: a directory whose validity ended, properly signed.
        d = pb.Directory()
        with open(good, "rb") as f:
            sd.ParseFromString(f.read())
        d.ParseFromString(sd.directory)
        d.issued_at_ms = h.now_ms() - 20_000
        d.expires_at_ms = h.now_ms() - 10_000
        root = t.identity("root")
        sd.directory = d.SerializeToString()
        sd.signature = root.sign_key.sign(b"referral.v1 directory\x00" + sd.directory)
        expired = os.path.join(t.dir, "expired.signed")
        with open(expired, "wb") as f:
            f.write(sd.SerializeToString())
        t.directory = expired
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started with an expired directory")
        except RuntimeError as e:
            assert "expired" in str(e), e
        # Altered after signing.
        with open(good, "rb") as f:
            raw = bytearray(f.read())
        raw[len(raw) // 3] ^= 0x20
        altered = os.path.join(t.dir, "altered.signed")
        with open(altered, "wb") as f:
            f.write(bytes(raw))
        t.directory = altered
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started with an altered directory")
        except RuntimeError as e:
            assert "refused" in str(e), e
        b.cleanup()
        other_root.cleanup()
    finally:
        t.cleanup()


def revocation_closes_sessions_and_refuses_old_keys():
    t = h.Trust(brokers=("broker.test",), agencies=[DESK, POLICE, "qd.school"])
    try:
        b = h.Broker(trust=t).start()
        g = Guard(b)
        school = h.Client(b, "qd.school")
        assert school.status(h.new_id()).state == pb.MESSAGE_STATE_UNKNOWN  # session works
        old_sign = h.key_id(t.identity("qd.school").sign_public)
        old_curve = h.sha256(zmq.utils.z85.decode(t.identity("qd.school").curve_public))[:16]
        # Version 2 revokes the school's keys; an older version 1 is refused after.
        t.sign_directory(2, revoked=[old_sign, old_curve])
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "directory loaded version=2" not in b.read_log():
            assert time.monotonic() < deadline, b.read_log()[-2000:]
            time.sleep(0.05)
        school.send(status=pb.StatusQuery(request_id=5, message_id=h.new_id()))
        assert school.recv_kind("error").error.code == pb.RESULT_REVOKED_KEY
        assert "closed session: key revoked" in b.read_log()
        again = h.Client(b, key_of="qd.school")              # a new connection: refused by ZAP
        send_bounded(again.sock, pb.ClientFrame(version=h.V1, hello=pb.Hello(
            agency_id="qd.school")).SerializeToString())
        try:
            again.recv(timeout_s=1.0)
            raise AssertionError("a revoked CURVE key connected")
        except TimeoutError:
            pass
        with open(t.directory, "rb") as f:
            version_2 = f.read()
        # referralctl will not write a version at or below the one in the file.
        r = t.sign_directory(1, check=False)
        assert r.returncode != 0 and "already holds version 2" in r.stderr, r
        # Version 2 again, without the revocation: refused by the broker,
        # which remembers the digest of the version 2 it loaded.
        t.sign_directory(2, force=True)
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "already used for a directory with other content" not in b.read_log():
            assert time.monotonic() < deadline, b.read_log()[-2000:]
            time.sleep(0.05)
        again = h.Client(b, key_of="qd.school")              # still revoked
        send_bounded(again.sock, pb.ClientFrame(version=h.V1, hello=pb.Hello(
            agency_id="qd.school")).SerializeToString())
        try:
            again.recv(timeout_s=1.0)
            raise AssertionError("a revoked CURVE key came back with a reused version")
        except TimeoutError:
            pass
        b.stop()
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started with another directory under version 2")
        except RuntimeError as e:
            assert "already used for a directory with other content" in str(e), e
        with open(t.directory, "wb") as f:                     # the same file again
            f.write(version_2)
        b.start()
        # Rolling back to version 1 is refused; version 2 stays in force.
        t.sign_directory(1, force=True)
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "older than version 2" not in b.read_log():
            assert time.monotonic() < deadline, b.read_log()[-2000:]
            time.sleep(0.05)
        assert "older than version 2" in b.read_log()
        g.check()
        b.stop()
        # And a restart with the old file is refused too.
        try:
            b.start(timeout_s=5)
            raise AssertionError("broker started with an older directory")
        except RuntimeError as e:
            assert "older than version 2" in str(e), e
        b.cleanup()
    finally:
        t.cleanup()


def revoked_signing_key_is_refused():
    t = h.Trust(brokers=("broker.test",), agencies=[DESK, POLICE])
    try:
        desk_kid = h.key_id(t.identity(DESK).sign_public)
        stale = h.make_envelope(DESK, POLICE, trust=t)
        t.sign_directory(2, revoked=[desk_kid])
        with h.Broker(trust=t) as b:
            desk = h.Client(b, DESK)      # its CURVE key is still valid
            r = desk.submit(stale)
            assert r.code == pb.RESULT_REVOKED_KEY, r
    finally:
        t.cleanup()


def hello_with_bad_identity_is_refused():
    with h.Broker() as b:
        c = h.Client(b, key_of=DESK)
        for bad in ("QD.Police", "qd..police", ".qd", "x" * 65, "qd police"):
            c.send(hello=pb.Hello(agency_id=bad))
            f = c.recv_kind("error")
            assert f.error.code == pb.RESULT_INVALID_FIELD, (bad, f)
        c.send(status=pb.StatusQuery(request_id=1, message_id=h.new_id()))
        assert c.recv_kind("error").error.code == pb.RESULT_NOT_IDENTIFIED


def trace_only_for_sender_and_recipient():
    with h.Broker() as b:
        env = h.make_envelope(DESK, POLICE, pb.URGENCY_CRISIS)
        rid = h.header_of(env).referral_id
        desk = h.Client(b, DESK)
        assert desk.submit(env).code == pb.RESULT_OK
        police = h.Client(b, POLICE)
        police.credit(1)
        police.deliveries(1)

        def trace(client):
            client.send(trace=pb.TraceQuery(request_id=7, referral_id=rid))
            return client.recv_kind("trace").trace

        for who in (desk, police):
            deadline = time.monotonic() + 5
            while True:
                r = trace(who)
                kinds = [pb.TraceEventKind.Name(e.kind) for e in r.events]
                if "TRACE_EVENT_KIND_ACKNOWLEDGED" in kinds or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert r.code == pb.RESULT_OK, r
            # The home broker's escalation records each level it tracks.
            assert kinds == ["TRACE_EVENT_KIND_ACCEPTED", "TRACE_EVENT_KIND_LEVEL",
                             "TRACE_EVENT_KIND_DELIVERED", "TRACE_EVENT_KIND_ACKNOWLEDGED",
                             "TRACE_EVENT_KIND_LEVEL"], kinds
            assert all(e.broker_id == b.id and e.from_agency == DESK for e in r.events)
        other = h.Client(b, "qd.school")
        r = trace(other)
        assert r.code == pb.RESULT_NOT_AUTHORIZED and not r.events, r
        unknown = pb.TraceQuery(request_id=8, referral_id=h.new_id())
        other.send(trace=unknown)
        assert other.recv_kind("trace").trace.code == pb.RESULT_NOT_AUTHORIZED
        assert b.read_log().count("trace query") >= 4


TESTS = [hello_with_bad_identity_is_refused, trace_only_for_sender_and_recipient, forged_and_unknown_signatures_are_refused, tampered_header_and_body_are_refused,
         body_moved_to_another_header_is_refused_and_unreadable, replay_is_refused,
         unknown_curve_key_cannot_connect, sender_spoofing_is_refused,
         another_agency_queue_is_out_of_reach, broker_store_holds_no_plaintext,
         bad_directories_are_refused, revocation_closes_sessions_and_refuses_old_keys,
         revoked_signing_key_is_refused]

if __name__ == "__main__":
    h.run(TESTS)
