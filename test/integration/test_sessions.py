"""Sessions at the broker (docs/protocol.md, section 3, "Sessions at the
broker"): a session belongs to one connection and one key, ends with its
connection, is capped per agency (the oldest makes room), and an attempt
counts only a delivery that left for a live connection. Real referrald on
127.0.0.1; every wait is bounded and awaits an event (a frame or a log
line), never a fixed sleep."""

import secrets
import signal
import threading
import time

import zmq

import harness as h
from harness import pb

DESK = "sh.12355.desk"
POLICE = "qd.police"
SCHOOL = "qd.school"
HOSPITAL = "qd.hospital"


class RidClient(h.Client):
    """A harness client whose DEALER sets its own ZeroMQ routing id
    (ZMQ_ROUTING_ID) before connecting, as a careless integrator might."""

    def __init__(self, broker, key_of, routing_id):
        self.ctx = zmq.Context.instance()
        self.broker = broker
        self.trust = broker.trust
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, routing_id)
        who = self.trust.identity(key_of)
        self.sock.curve_secretkey = who.curve_secret
        self.sock.curve_publickey = who.curve_public
        self.sock.curve_serverkey = self.trust.identity(broker.id).curve_public
        self.sock.connect(broker.endpoint)
        self.request_id = 0
        self.pending = []
        self.unawaited = 0


def wait_log(b, text, timeout_s=5.0, since=0):
    """Wait until the broker's log (from offset since) contains text."""
    deadline = time.monotonic() + timeout_s
    while text not in b.read_log()[since:]:
        assert time.monotonic() < deadline, f"log never said {text!r}:\n{b.read_log()[-3000:]}"
        time.sleep(0.02)


def round_trip(c, tries=20):
    """Ping until the broker answers this connection (any frame): then the
    broker has read everything c sent before. Returns the answer."""
    for nonce in range(1, tries + 1):
        c.send(ping=pb.Ping(nonce=nonce))
        try:
            return c.recv(timeout_s=0.25)
        except TimeoutError:
            continue
    raise AssertionError("the broker never answered this connection")


def nothing_delivered(c, timeout_s=1.5):
    try:
        f = c.recv_kind("delivery", timeout_s=timeout_s)
    except TimeoutError:
        return
    raise AssertionError(f"a delivery reached a connection it was not meant for: {f}")


def submit(b, recipient, urgency=pb.URGENCY_CRISIS):
    desk = h.Client(b, DESK)
    env = h.make_envelope(DESK, recipient, urgency)
    assert desk.submit(env).code == pb.RESULT_OK
    return desk, h.header_of(env).message_id


def routing_id_takeover_gets_nothing():
    with h.Broker(delivery__ack_timeout_ms=60000) as b:
        # libzmq lets a client choose even a routing id shaped like the
        # ones the broker assigns (5 bytes, first 0): the police take one.
        rid = b"\x00" + secrets.token_bytes(4)
        police = RidClient(b, POLICE, rid)
        police.hello(POLICE)
        police.credit(10)
        round_trip(police)
        mark = len(b.read_log())
        police.close()
        wait_log(b, f"session ended agency={POLICE}", since=mark)
        # Another key connects with the same routing id.
        school = RidClient(b, SCHOOL, rid)
        round_trip(school)
        school.hello(SCHOOL)
        school.credit(10)
        desk, mid = submit(b, POLICE)
        nothing_delivered(school)
        st = desk.status(mid)
        assert st.state == pb.MESSAGE_STATE_QUEUED and st.attempts == 0, st
        # The police get it on a proper connection, as a first attempt.
        fresh = h.Client(b, POLICE)
        fresh.credit(1)
        d = fresh.deliveries(1)[0]
        assert d.message_id == mid and d.attempt == 1, d
        # A routing id the broker would never assign: Hello is refused and
        # the error tells the integrator what to change.
        named = RidClient(b, POLICE, b"qd.police-desk-1")
        named.send(hello=pb.Hello(agency_id=POLICE, client_name="careless"))
        e = named.recv_kind("error").error
        assert e.code == pb.RESULT_INVALID_FIELD and "ZMQ_ROUTING_ID" in e.detail, e
        named.send(status=pb.StatusQuery(request_id=1, message_id=mid))
        assert named.recv_kind("error").error.code == pb.RESULT_NOT_IDENTIFIED


def one_agency_cannot_lock_out_others():
    with h.Broker(limits__max_sessions=4, limits__max_sessions_per_agency=2) as b:
        desk, mid = submit(b, POLICE)
        mark = len(b.read_log())
        desk.close()
        wait_log(b, f"session ended agency={DESK}", since=mark)
        # One agency opens its cap of sessions; one more is refused (its
        # sessions are live), never at the cost of another agency.
        schools = [h.Client(b, SCHOOL) for _ in range(2)]
        extra = h.Client(b, key_of=SCHOOL)
        extra.send(hello=pb.Hello(agency_id=SCHOOL, client_name="harness"))
        assert extra.recv_kind("error").error.code == pb.RESULT_BUSY
        # Two agencies fill the table between them.
        hospitals = [h.Client(b, HOSPITAL) for _ in range(2)]
        # A third agency still gets in, and gets its referral.
        police = h.Client(b, POLICE)
        police.credit(10)
        d = police.deliveries(1)[0]
        assert d.message_id == mid and d.attempt == 1, d
        # The newest sessions of the others still work.
        for c in (schools[-1], hospitals[-1]):
            assert c.status(mid).state == pb.MESSAGE_STATE_UNKNOWN
        assert "refused hello: session table full" not in b.read_log()


def oldest_session_of_an_agency_is_evicted():
    """Beyond max_sessions_per_agency, a Hello ends the agency's oldest
    session that has been silent for more than session_idle_ms / 2 (here
    2 s: a crashed client's session whose connection is not yet seen
    closed); its delivery goes back to the queue at once."""
    with h.Broker(limits__max_sessions_per_agency=2, limits__session_idle_ms=4000,
                  delivery__ack_timeout_ms=60000) as b:
        desk, mid = submit(b, POLICE)
        first = h.Client(b, POLICE)
        first.credit(1)
        d1 = first.deliveries(1, ack=False)[0]
        assert d1.message_id == mid and d1.attempt == 1, d1
        second = h.Client(b, POLICE)
        time.sleep(2.3)                      # both silent for over 2 s
        third = h.Client(b, POLICE)          # beyond the cap: the first goes
        e = first.recv_kind("error").error
        assert e.code == pb.RESULT_NOT_IDENTIFIED and "max_sessions_per_agency" in e.detail, e
        first.send(status=pb.StatusQuery(request_id=9, message_id=mid))
        assert first.recv_kind("error").error.code == pb.RESULT_NOT_IDENTIFIED
        assert second.status(mid).state == pb.MESSAGE_STATE_QUEUED
        # Its in-flight delivery went back to the queue at once (the ack
        # timeout is a minute away) and comes to a live session.
        third.credit(1)
        d2 = third.deliveries(1, timeout_s=5, ack=False)[0]
        assert d2.message_id == mid and d2.attempt == 2, d2
        assert third.settle(mid).code == pb.RESULT_OK
        assert f"agency={POLICE}" in b.read_log() and "why=evicted" in b.read_log()


def live_sessions_are_not_evicted_beyond_the_cap():
    """At max_sessions_per_agency live sessions (each heard from within
    session_idle_ms / 2), a further Hello of that agency is refused BUSY and
    nobody is evicted: clients beyond the cap cannot evict each other in
    turn for ever, handing the same deliveries to one desk after another.
    The sessions that were there carry on."""
    with h.Broker(limits__max_sessions_per_agency=2, limits__session_idle_ms=60000) as b:
        first = h.Client(b, POLICE)
        second = h.Client(b, POLICE)
        third = h.Client(b, key_of=POLICE)
        third.send(hello=pb.Hello(agency_id=POLICE, client_name="harness"))
        e = third.recv_kind("error").error
        assert e.code == pb.RESULT_BUSY and "max_sessions_per_agency" in e.detail, e
        for c in (first, second):
            assert round_trip(c).WhichOneof("body") == "pong"
        desk, mid = submit(b, POLICE)
        first.credit(1)
        assert first.deliveries(1)[0].message_id == mid
        assert "why=evicted" not in b.read_log()
        assert "refused hello: the agency holds its cap of live sessions" in b.read_log()


def first_delivery_is_attempt_one():
    with h.Broker(delivery__ack_timeout_ms=60000) as b:
        # Sessions with credit whose connections vanish before anything
        # is queued for them.
        for _ in range(3):
            gone = h.Client(b, POLICE)
            gone.credit(10)
            round_trip(gone)
            gone.close()
        desk = h.Client(b, DESK)
        mids = []
        for _ in range(3):
            env = h.make_envelope(DESK, POLICE, pb.URGENCY_URGENT)
            assert desk.submit(env).code == pb.RESULT_OK
            mids.append(h.header_of(env).message_id)
        live = h.Client(b, POLICE)
        live.credit(10)
        got = live.deliveries(3, timeout_s=10, ack=False)
        assert sorted(d.message_id for d in got) == sorted(mids)
        assert [d.attempt for d in got] == [1, 1, 1], [d.attempt for d in got]
        for m in mids:
            assert desk.status(m).attempts == 1
            assert live.settle(m).code == pb.RESULT_OK


def session_ends_with_its_connection():
    with h.Broker(delivery__ack_timeout_ms=60000) as b:
        desk, mid = submit(b, POLICE)
        first = h.Client(b, POLICE)
        first.credit(1)
        d1 = first.deliveries(1, ack=False)[0]
        assert d1.attempt == 1
        mark = len(b.read_log())
        first.close()                        # gone without settling
        wait_log(b, f"session ended agency={POLICE}", since=mark)
        assert "why=disconnected" in b.read_log()[mark:]
        # Back in the queue at once, not after the minute-long ack timeout.
        second = h.Client(b, POLICE)
        second.credit(1)
        d2 = second.deliveries(1, timeout_s=5, ack=False)[0]
        assert d2.message_id == mid and d2.attempt == 2, d2
        assert second.settle(mid).code == pb.RESULT_OK
        assert desk.status(mid).attempts == 2


def a_paused_broker_does_not_end_sessions_it_could_not_hear():
    """The broker is stopped (SIGSTOP) for 4 s, longer than session_idle_ms
    (3 s), while an agency's session holds a delivery and keeps pinging.
    After SIGCONT the broker reads those pings before it judges anyone
    idle, so the session is still there: its settle is answered OK (not
    NOT_IDENTIFIED) and the session did not end. (It used to end every
    session at once if the stop came in the middle of a turn.)"""
    with h.Broker(limits__session_idle_ms=3000, delivery__ack_timeout_ms=60000) as b:
        desk, mid = submit(b, POLICE)
        police = h.Client(b, POLICE)
        police.credit(1)
        d = police.deliveries(1, ack=False)[0]
        b.proc.send_signal(signal.SIGSTOP)
        try:
            for nonce in range(8):          # the pause under test, not synchronisation
                police.send(ping=pb.Ping(nonce=nonce + 1))
                time.sleep(0.5)
        finally:
            b.proc.send_signal(signal.SIGCONT)
        assert police.settle(d.message_id).code == pb.RESULT_OK
        assert f"session ended agency={POLICE}" not in b.read_log()
        desk.hello(DESK)                    # the desk stayed silent: its session went idle
        assert desk.status(mid).attempts == 1


def a_closed_session_ends_under_sustained_load():
    """Another client keeps more frames waiting than a turn reads
    (max_batch 1), so the broker never finds its socket empty. An agency
    closes its connection holding an unsettled delivery: the session still
    ends within about a second, and the delivery comes to the agency's
    next session long before the minute-long ack timeout."""
    with h.Broker(limits__max_batch=1, delivery__ack_timeout_ms=60000) as b:
        desk, mid = submit(b, POLICE)
        first = h.Client(b, POLICE)
        first.credit(1)
        first.deliveries(1, ack=False)
        flood = h.Client(b, HOSPITAL)
        stop = threading.Event()

        def pings():                         # this thread alone uses flood
            nonce = 0
            while not stop.is_set():
                nonce += 1
                flood.send(ping=pb.Ping(nonce=nonce))

        t = threading.Thread(target=pings, daemon=True)
        t.start()
        try:
            time.sleep(0.5)
            mark = len(b.read_log())
            first.sock.close(linger=0)
            wait_log(b, f"session ended agency={POLICE}", timeout_s=15, since=mark)
        finally:
            stop.set()
            t.join(timeout=10)
        second = h.Client(b, POLICE)
        second.credit(1)
        d2 = second.deliveries(1, timeout_s=10, ack=False)[0]
        assert d2.message_id == mid and d2.attempt == 2, d2


TESTS = [routing_id_takeover_gets_nothing, one_agency_cannot_lock_out_others,
         oldest_session_of_an_agency_is_evicted, live_sessions_are_not_evicted_beyond_the_cap,
         first_delivery_is_attempt_one,
         session_ends_with_its_connection,
         a_paused_broker_does_not_end_sessions_it_could_not_hear,
         a_closed_session_ends_under_sustained_load]

if __name__ == "__main__":
    h.run(TESTS)
