"""Abuse (issue 15, item 6): bytes no honest client sends, identities used
where they do not belong, and floods. Each is refused with its own code or
never admitted, changes nothing, and the broker goes on serving: the
referral accepted before the attack (test_security.Guard) is delivered
intact afterwards."""

import os
import time

import zmq

import harness as h
from harness import pb
from test_security import DESK, POLICE, Guard


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field, written by hand (the generated
    code refuses to write invalid UTF-8, which is the point)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def invalid_utf8_and_oversized_texts_are_refused():
    with h.Broker() as b:
        g = Guard(b)
        c = h.Client(b, key_of=DESK)
        hello = _field(1, DESK.encode()) + _field(2, b"desk \xff\xfe client")
        c.send_raw(b"\x08\x01" + _field(2, hello))          # ClientFrame{version 1, hello}
        err = c.recv_kind("error").error
        assert err.code in (pb.RESULT_MALFORMED, pb.RESULT_INVALID_FIELD), err
        assert "UTF-8" in err.detail, err
        c.close()
        desk = h.Client(b, DESK)
        # A settle reason above its 512 bytes: refused whole, nothing settled.
        desk.send(settle=pb.Settle(message_id=h.header_of(g.env).message_id,
                                   verb=pb.SETTLE_VERB_REJECT, reason="x" * 600))
        err = desk.recv_kind("error").error
        assert err.code in (pb.RESULT_TOO_LARGE, pb.RESULT_INVALID_FIELD), err
        assert desk.status(h.header_of(g.env).message_id).state == pb.MESSAGE_STATE_QUEUED
        # A client name above 64 bytes.
        c2 = h.Client(b, key_of=DESK)
        c2.send(hello=pb.Hello(agency_id=DESK, client_name="n" * 65))
        assert c2.recv_kind("error").error.code in (pb.RESULT_TOO_LARGE,
                                                     pb.RESULT_INVALID_FIELD)
        # Invalid UTF-8 inside a signed header: refused before anything else.
        env = h.make_envelope(DESK, POLICE, trust=b.trust)
        bad = bytearray(env.header)
        i = bad.find(DESK.encode())
        bad[i] = 0xFF
        env.header = bytes(bad)
        r = desk.submit(env)
        assert r.code in (pb.RESULT_MALFORMED, pb.RESULT_INVALID_FIELD), \
            (pb.ResultCode.Name(r.code), r.detail)
        assert "UTF-8" in r.detail, r.detail
        g.check()


def a_broker_key_is_no_agency():
    """A broker's CURVE key on the client socket is not admitted (brokers
    and agencies are apart); the attempt is logged."""
    with h.Broker() as b:
        g = Guard(b)
        c = h.Client(b, key_of=b.id)
        c.send(hello=pb.Hello(agency_id=DESK))
        try:
            c.recv(timeout_s=1.5)
            raise AssertionError("a broker's key was admitted as an agency")
        except TimeoutError:
            pass
        c.close()
        deadline = time.monotonic() + 5
        while "refused connection: unknown CURVE key" not in b.read_log():
            assert time.monotonic() < deadline, b.read_log()[-2000:]
            time.sleep(0.05)
        g.check()


def a_flood_of_connections_leaves_the_broker_serving():
    """300 connections with unknown keys and 100 admitted ones that never
    say Hello, opened at once: none is admitted or holds a session, and an
    honest desk is served meanwhile, within the test's bounds."""
    with h.Broker() as b:
        g = Guard(b)
        ctx = zmq.Context()
        socks = []
        try:
            server = b.trust.identity(b.id).curve_public
            for i in range(400):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.LINGER, 0)
                if i < 300:
                    pub, sec = zmq.curve_keypair()
                else:
                    me = b.trust.identity(POLICE)
                    pub, sec = me.curve_public, me.curve_secret
                s.curve_secretkey = sec
                s.curve_publickey = pub
                s.curve_serverkey = server
                s.connect(b.endpoint)
                s.send(b"\x08\x01")                          # a frame with no body
                socks.append(s)
            start = time.monotonic()
            desk = h.Client(b, DESK)
            env = h.make_envelope(DESK, POLICE, trust=b.trust)
            assert desk.submit(env, timeout_s=20).code == pb.RESULT_OK
            print(f"  honest submission answered {time.monotonic() - start:.2f} s into the "
                  "flood", flush=True)
            deadline = time.monotonic() + 20        # every handshake decided before closing
            while b.read_log().count("refused connection: unknown CURVE key") < 300:
                assert time.monotonic() < deadline, \
                    b.read_log().count("refused connection: unknown CURVE key")
                time.sleep(0.1)
        finally:
            for s in socks:
                s.close(0)
            ctx.term()
        with open(f"/proc/{b.proc.pid}/status") as f:
            rss = [line for line in f if line.startswith("RssAnon")][0]
        print(f"  broker {rss.strip()}", flush=True)
        assert int(rss.split()[1]) < 256 * 1024, rss           # kB: well bounded
        log = b.read_log()
        assert log.count("refused connection: unknown CURVE key") >= 300
        assert "opened agency=qd.police" not in log               # no Hello, no session
        g.check()


if __name__ == "__main__":
    h.run([invalid_utf8_and_oversized_texts_are_refused, a_broker_key_is_no_agency,
           a_flood_of_connections_leaves_the_broker_serving])
