"""What a peer broker sends, frame by frame: one real referrald (Qingdao)
and a fake peer (Shanghai) written here in Python from the schema, as a
peer implementation in another language would be."""

import time

import zmq

import harness as h
from harness import pb

SH, QD = "broker.shanghai", "broker.qingdao"
DESK = "qd.12355.desk"          # homed at Qingdao
AGENCY = "sh.youth-league"      # homed at Shanghai
POLICE = "qd.police"            # homed at Qingdao


def signed_notice(trust, signer, about_mid, about_rid, detail):
    n = pb.Notice(notice_id=h.new_id(), kind=pb.NOTICE_KIND_UNDELIVERABLE,
                  referral_id=about_rid, message_id=about_mid, broker_id=signer,
                  about_agency=AGENCY, at_ms=h.now_ms(), code=pb.RESULT_UNDELIVERABLE,
                  detail=detail).SerializeToString()
    key = trust.identity(signer)
    return pb.SignedNotice(notice=n, signer_key_id=h.key_id(key.sign_public),
                           signature=key.sign_key.sign(b"referral.v1 notice\x00" + n))


def a_notice_sent_twice_by_a_peer_is_delivered_once():
    """A peer that sends a notice again (its hop ack was lost) gets "already
    stored" and the sender receives the notice once."""
    t = h.Trust(brokers=(SH, QD), agencies=[DESK, AGENCY], homes={DESK: QD, AGENCY: SH})
    ctx = zmq.Context.instance()
    fake_in = ctx.socket(zmq.ROUTER)          # the fake Shanghai's peer socket
    fake_in.setsockopt(zmq.LINGER, 0)
    me = t.identity(SH)
    fake_in.curve_server = True
    fake_in.curve_secretkey = me.curve_secret
    fake_in.curve_publickey = me.curve_public
    sh_port = fake_in.bind_to_random_port("tcp://127.0.0.1")
    qd_peer_port = h.free_port()
    b = h.Broker(QD, trust=t, **{"federation__peer_listen": f"tcp://127.0.0.1:{qd_peer_port}",
                                 f"peers__{SH}": f"tcp://127.0.0.1:{sh_port}",
                                 "federation__heartbeat_ms": 200})
    out = None
    try:
        b.start()
        desk = h.Client(b, DESK)
        desk.credit(10)
        env = h.make_envelope(DESK, AGENCY, trust=t)
        assert desk.submit(env).code == pb.RESULT_OK
        # Qingdao forwards it to the fake Shanghai; take it (no hop ack: it
        # stays in flight there, which is all this test needs).
        deadline = time.monotonic() + 15
        forwarded = None
        while forwarded is None and time.monotonic() < deadline:
            if not fake_in.poll(200):
                continue
            rid, data = fake_in.recv_multipart()
            f = pb.PeerFrame()
            f.ParseFromString(data)
            if f.WhichOneof("body") == "heartbeat":
                fake_in.send_multipart([rid, pb.PeerFrame(
                    version=h.V1, heartbeat=pb.Heartbeat(now_ms=h.now_ms())).SerializeToString()])
            elif f.WhichOneof("body") == "forward":
                forwarded = f.forward.envelope
        assert forwarded is not None, b.read_log()[-2000:]
        hdr = h.header_of(forwarded)
        assert list(forwarded.hops) == [QD], forwarded.hops
        # The fake Shanghai sends a notice back, twice, as after a lost ack.
        out = ctx.socket(zmq.DEALER)
        out.setsockopt(zmq.LINGER, 0)
        out.curve_secretkey = me.curve_secret
        out.curve_publickey = me.curve_public
        out.curve_serverkey = t.identity(QD).curve_public
        out.connect(f"tcp://127.0.0.1:{qd_peer_port}")
        sn = signed_notice(t, SH, hdr.message_id, hdr.referral_id, "nobody collected it")
        acks = []
        for _ in range(2):
            out.send(pb.PeerFrame(version=h.V1, notice=sn).SerializeToString())
            while True:
                assert out.poll(10000), "no hop ack for the notice"
                f = pb.PeerFrame()
                f.ParseFromString(out.recv())
                if f.WhichOneof("body") == "hop_ack":
                    acks.append(f.hop_ack)
                    break
        assert [a.code for a in acks] == [pb.RESULT_OK, pb.RESULT_OK], acks
        assert acks[1].detail == "already stored", acks[1]
        got = desk.deliveries(1, timeout_s=10)
        inner = pb.Notice()
        inner.ParseFromString(got[0].notice.notice)
        assert inner.message_id == hdr.message_id and inner.broker_id == SH, inner
        try:
            extra = desk.recv_kind("delivery", timeout_s=1.5)
            raise AssertionError(f"the notice came twice: {extra}")
        except TimeoutError:
            pass
        desk.close()
    finally:
        if out is not None:
            out.close(0)
        fake_in.close(0)
        b.cleanup()
        t.cleanup()


def a_peer_cannot_forge_a_notice_about_what_it_did_not_carry():
    """A peer may carry back only notices about messages forwarded to it: a
    notice from Shanghai about a referral that stayed in Qingdao (desk to
    Qingdao police) is refused with RESULT_NOT_AUTHORIZED and never reaches
    the desk; the referral is still delivered."""
    t = h.Trust(brokers=(SH, QD), agencies=[DESK, AGENCY, POLICE],
                homes={DESK: QD, AGENCY: SH, POLICE: QD})
    ctx = zmq.Context.instance()
    me = t.identity(SH)
    qd_peer_port = h.free_port()
    b = h.Broker(QD, trust=t, **{"federation__peer_listen": f"tcp://127.0.0.1:{qd_peer_port}",
                                 f"peers__{SH}": f"tcp://127.0.0.1:{h.free_port()}"})
    out = None
    try:
        b.start()
        desk = h.Client(b, DESK)
        desk.credit(10)
        env = h.make_envelope(DESK, POLICE, trust=t)
        assert desk.submit(env).code == pb.RESULT_OK
        hdr = h.header_of(env)
        out = ctx.socket(zmq.DEALER)
        out.setsockopt(zmq.LINGER, 0)
        out.curve_secretkey = me.curve_secret
        out.curve_publickey = me.curve_public
        out.curve_serverkey = t.identity(QD).curve_public
        out.connect(f"tcp://127.0.0.1:{qd_peer_port}")
        sn = signed_notice(t, SH, hdr.message_id, hdr.referral_id, "forged: call nobody")
        out.send(pb.PeerFrame(version=h.V1, notice=sn).SerializeToString())
        ack = None
        while ack is None:
            assert out.poll(10000), "no hop ack for the notice"
            f = pb.PeerFrame()
            f.ParseFromString(out.recv())
            if f.WhichOneof("body") == "hop_ack":
                ack = f.hop_ack
        assert ack.code == pb.RESULT_NOT_AUTHORIZED, ack
        try:
            extra = desk.recv_kind("delivery", timeout_s=1.5)
            raise AssertionError(f"a forged notice reached the desk: {extra}")
        except TimeoutError:
            pass
        police = h.Client(b, POLICE)
        police.credit(5)
        assert police.deliveries(1)[0].message_id == hdr.message_id
        police.close()
        desk.close()
    finally:
        if out is not None:
            out.close(0)
        b.cleanup()
        t.cleanup()


def a_forged_notice_never_stands_the_watchdog_down():
    """The origin's watchdog (Qingdao, for a crisis its desk sent to an
    agency homed at Shanghai) alerts when no word comes back. Notices about
    that referral which a peer relays count as word only when signed by the
    recipient's home broker: one with a bad signature, and one properly
    signed by a broker that is not the home, change nothing; a genuine one
    stands the alert down (the control)."""
    other = "broker.beijing"
    t = h.Trust(brokers=(SH, QD, other), agencies=[DESK, AGENCY], homes={DESK: QD, AGENCY: SH})
    ctx = zmq.Context.instance()
    fake_in = ctx.socket(zmq.ROUTER)
    fake_in.setsockopt(zmq.LINGER, 0)
    me = t.identity(SH)
    fake_in.curve_server = True
    fake_in.curve_secretkey = me.curve_secret
    fake_in.curve_publickey = me.curve_public
    sh_port = fake_in.bind_to_random_port("tcp://127.0.0.1")
    qd_peer_port = h.free_port()
    watch = ("[policy.watch]\nversion = 1\ndefault_for = crisis\ndelivered_within_ms = 1000\n"
             "received_within_ms = 60000\naccepted_within_ms = 60000\nwatchdog_grace_ms = 300\n"
             "step = not_accepted alert_supervisor\n")
    b = h.Broker(QD, trust=t, extra_config=watch,
                 **{"federation__peer_listen": f"tcp://127.0.0.1:{qd_peer_port}",
                    f"peers__{SH}": f"tcp://127.0.0.1:{sh_port}", "federation__heartbeat_ms": 200})
    out = None

    def notice(signer, about, level, broker_id=None, bad=False):
        n = pb.Notice(notice_id=h.new_id(), kind=pb.NOTICE_KIND_ACK_LEVEL,
                      referral_id=about.referral_id, message_id=about.message_id,
                      broker_id=broker_id or signer, about_agency=AGENCY, at_ms=h.now_ms(),
                      level=level, code=pb.RESULT_OK).SerializeToString()
        key = t.identity(signer)
        sig = key.sign_key.sign(b"referral.v1 notice\x00" + n)
        if bad:
            sig = bytes([sig[0] ^ 1]) + sig[1:]
        return pb.SignedNotice(notice=n, signer_key_id=h.key_id(key.sign_public), signature=sig)

    def relay(sn):
        out.send(pb.PeerFrame(version=h.V1, notice=sn).SerializeToString())
        while True:
            assert out.poll(10000), "no hop ack for the notice"
            f = pb.PeerFrame()
            f.ParseFromString(out.recv())
            if f.WhichOneof("body") == "hop_ack":
                return f.hop_ack

    def stand_downs(c, wait_s):
        got = []
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                d = c.recv_kind("delivery", timeout_s=0.3).delivery
            except TimeoutError:
                continue
            c.settle(d.message_id, wait=False)
            n = pb.Notice()
            n.ParseFromString(d.notice.notice)
            if n.kind == pb.NOTICE_KIND_STAND_DOWN and n.broker_id == QD:
                got.append(n)
        return got

    try:
        b.start()
        desk = h.Client(b, DESK)
        desk.credit(20)
        env = h.make_envelope(DESK, AGENCY, urgency=pb.URGENCY_CRISIS, trust=t)
        assert desk.submit(env).code == pb.RESULT_OK
        hdr = h.header_of(env)
        deadline = time.monotonic() + 15
        while "kind=6" not in b.read_log():      # the watchdog's PARTITION alert
            assert time.monotonic() < deadline, b.read_log()[-2000:]
            if fake_in.poll(100):                 # keep the link up: answer heartbeats
                rid, data = fake_in.recv_multipart()
                f = pb.PeerFrame()
                f.ParseFromString(data)
                if f.WhichOneof("body") == "heartbeat":
                    fake_in.send_multipart([rid, pb.PeerFrame(
                        version=h.V1, heartbeat=pb.Heartbeat(now_ms=h.now_ms()))
                        .SerializeToString()])
        out = ctx.socket(zmq.DEALER)
        out.setsockopt(zmq.LINGER, 0)
        out.curve_secretkey = me.curve_secret
        out.curve_publickey = me.curve_public
        out.curve_serverkey = t.identity(QD).curve_public
        out.connect(f"tcp://127.0.0.1:{qd_peer_port}")
        relay(notice(SH, hdr, pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, bad=True))
        relay(notice(other, hdr, pb.ACK_LEVEL_ACCEPTED_BY_AGENCY))
        assert b.read_log().count("not counted by the watchdog") == 2, b.read_log()[-2000:]
        assert stand_downs(desk, 1.5) == [], "a forged notice stood the partition alert down"
        relay(notice(SH, hdr, pb.ACK_LEVEL_DELIVERED))              # genuine word
        (sd,) = stand_downs(desk, 5)
        assert sd.alert.kind == pb.ALERT_KIND_PARTITION, sd
        desk.close()
    finally:
        if out is not None:
            out.close(0)
        fake_in.close(0)
        b.cleanup()
        t.cleanup()


def a_peer_forward_with_forged_hops_is_refused():
    """A forward is accepted only when its hops start at the sender's home
    broker and end with the peer that sends it; anything else is refused
    with RESULT_NOT_AUTHORIZED and never reaches the recipient. The genuine
    forward is stored and delivered."""
    t = h.Trust(brokers=(SH, QD, "broker.beijing"), agencies=[DESK, AGENCY],
                homes={DESK: QD, AGENCY: SH})
    ctx = zmq.Context.instance()
    me = t.identity(SH)
    qd_peer_port = h.free_port()
    b = h.Broker(QD, trust=t, **{"federation__peer_listen": f"tcp://127.0.0.1:{qd_peer_port}",
                                 f"peers__{SH}": f"tcp://127.0.0.1:{h.free_port()}"})
    out = None
    try:
        b.start()
        out = ctx.socket(zmq.DEALER)
        out.setsockopt(zmq.LINGER, 0)
        out.curve_secretkey = me.curve_secret
        out.curve_publickey = me.curve_public
        out.curve_serverkey = t.identity(QD).curve_public
        out.connect(f"tcp://127.0.0.1:{qd_peer_port}")

        def forward(hops):
            env = h.make_envelope(AGENCY, DESK, trust=t, hops=hops)
            out.send(pb.PeerFrame(version=h.V1, forward=pb.Forward(
                sequence=1, envelope=env)).SerializeToString())
            while True:
                assert out.poll(10000), "no hop ack"
                f = pb.PeerFrame()
                f.ParseFromString(out.recv())
                if f.WhichOneof("body") == "hop_ack":
                    return env, f.hop_ack

        for hops in (["broker.beijing"], [SH, "broker.beijing"], [QD, SH], []):
            _, ack = forward(hops)
            assert ack.code == pb.RESULT_NOT_AUTHORIZED, (hops, ack)
            assert ack.detail, ack
        genuine, ack = forward([SH])
        assert ack.code == pb.RESULT_OK, ack
        desk = h.Client(b, DESK)
        desk.credit(10)
        got = desk.deliveries(1, timeout_s=10)
        assert got[0].message_id == h.header_of(genuine).message_id
        assert list(got[0].envelope.hops) == [SH, QD], got[0].envelope.hops
        try:
            extra = desk.recv_kind("delivery", timeout_s=1.5)
            raise AssertionError(f"a forged forward was delivered: {extra}")
        except TimeoutError:
            pass
        desk.close()
    finally:
        if out is not None:
            out.close(0)
        b.cleanup()
        t.cleanup()


if __name__ == "__main__":
    h.run([a_notice_sent_twice_by_a_peer_is_delivered_once,
           a_peer_cannot_forge_a_notice_about_what_it_did_not_carry,
           a_peer_forward_with_forged_hops_is_refused,
           a_forged_notice_never_stands_the_watchdog_down])
