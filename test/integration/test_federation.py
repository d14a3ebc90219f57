"""Federation: three real brokers on 127.0.0.1 (the Shanghai region, a
national hub, the Qingdao region), each with its own store and keys,
carrying referrals store-and-forward between them (docs/federation.md)."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import harness as h
from harness import pb

SH, HUB, QD = "broker.shanghai", "broker.hub", "broker.qingdao"
DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
POLICE = "qd.police"
NOWHERE = "qd.nobody"            # homed at a broker nobody has a route to
LOST = "broker.unreachable"
AGENT = os.path.join(os.environ.get("REFERRAL_BUILD_ROOT", "build"), "test", "integration",
                     "lib_agent")
FAST = {"federation__heartbeat_ms": 200, "federation__peer_timeout_ms": 1500,
        "federation__stall_ms": 2000}


def trust():
    return h.Trust(brokers=(SH, HUB, QD, LOST), agencies=[DESK, LEAGUE, POLICE, NOWHERE],
                   homes={DESK: SH, LEAGUE: QD, POLICE: QD, NOWHERE: LOST})


class Federation:
    """Three brokers: Shanghai and Qingdao each linked to the hub only, with
    the hub as their default route; the hub linked to both."""

    def __init__(self, t, hub_routes=None, hub_links_qingdao=True, **settings):
        self.trust = t
        self.ports = {b: h.free_port() for b in (SH, HUB, QD)}

        def ep(b):
            return f"tcp://127.0.0.1:{self.ports[b]}"

        common = dict(FAST, **settings)
        self.sh = h.Broker(SH, trust=t, **{"federation__peer_listen": ep(SH),
                                           f"peers__{HUB}": ep(HUB), "routes__default": HUB},
                           **common)
        hub = {"federation__peer_listen": ep(HUB), f"peers__{SH}": ep(SH)}
        if hub_links_qingdao:
            hub[f"peers__{QD}"] = ep(QD)
        hub.update(hub_routes or {})
        self.hub = h.Broker(HUB, trust=t, **hub, **common)
        self.qd = h.Broker(QD, trust=t, **{"federation__peer_listen": ep(QD),
                                           f"peers__{HUB}": ep(HUB), "routes__default": HUB},
                           **common)

    def __enter__(self):
        for b in (self.sh, self.hub, self.qd):
            b.start()
        return self

    def __exit__(self, *exc):
        for b in (self.sh, self.hub, self.qd):
            b.cleanup()
        self.trust.cleanup()


def wait_log(b, text, timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while text not in b.read_log():
        if time.monotonic() > deadline:
            raise AssertionError(f"{b.id} never logged {text!r}:\n{b.read_log()[-3000:]}")
        time.sleep(0.05)


def crisis_referral_crosses_the_hub_and_receipts_come_back():
    """A Shanghai desk refers a crisis case to the Qingdao youth league
    through the hub; the league receives, opens and acknowledges it
    (RECEIVED, ACCEPTED_BY_AGENCY); every receipt reaches the desk; each
    broker logs its hop and the origin's trace shows it RELAYED."""
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        wait_log(f.qd, f"link connected peer={HUB}")
        desk, league = h.Desk(f.sh, DESK), h.Desk(f.qd, LEAGUE)
        try:
            sent = desk.events("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                               "psychological_support", "--narrative",
                               "Caller, 17, in Shibei has a plan for tonight")
            assert sent[0]["event"] == "accepted", sent
            mid, rid = sent[0]["message_id"], sent[0]["referral_id"]
            got = league.events("listen", "--count", "1", "--timeout-s", "20", "--ack",
                                "received", "--person", "Wang Li")
            ref = [e for e in got if e["event"] == "referral"]
            assert ref and ref[0]["message_id"] == mid, got
            assert ref[0]["narrative"] == "Caller, 17, in Shibei has a plan for tonight"
            league.run("ack", mid, "--level", "accepted", "--person", "Wang Li")
            receipts = desk.events("listen", "--count", "3", "--timeout-s", "30")
            levels = sorted(e["level"] for e in receipts if e["event"] == "receipt")
            assert levels == ["accepted", "delivered", "received"], receipts
            assert all(e["in_reply_to"] == mid for e in receipts), receipts
            for b, verb in ((f.hub, "relayed-in"), (f.qd, "relayed-in")):
                assert f"{verb} referral={rid} msg={mid}" in b.read_log(), b.read_log()[-3000:]
            c = h.Client(f.sh, DESK)
            c.send(trace=pb.TraceQuery(request_id=1, referral_id=bytes.fromhex(rid)))
            events = c.recv_kind("trace").trace.events
            c.close()
            assert pb.TRACE_EVENT_KIND_RELAYED in [e.kind for e in events], events
        finally:
            desk.cleanup()
            league.cleanup()


def no_route_and_route_loops_end_in_reported_refusals():
    """A referral for an agency no route leads to is refused where it is
    submitted when that broker has no route, and, when a hub on the way has
    none (or would send it back), the desk is told in a signed notice; it
    never circles between brokers."""
    t = trust()
    # The hub has no link to Qingdao and routes it back to Shanghai, which
    # sends everything through the hub: a misconfigured route table.
    with Federation(t, hub_routes={f"routes__{QD}": SH}, hub_links_qingdao=False) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        # The hub has no route to broker.unreachable: refused there, reported back.
        desk = h.Client(f.sh, DESK)
        desk.credit(10)
        env = h.make_envelope(DESK, NOWHERE, trust=t)
        assert desk.submit(env).code == pb.RESULT_OK
        n = desk.recv_kind("delivery", timeout_s=20).delivery
        notice = pb.Notice()
        notice.ParseFromString(n.notice.notice)
        assert notice.message_id == h.header_of(env).message_id, notice
        assert notice.level == pb.ACK_LEVEL_REJECTED and HUB in notice.detail, notice
        assert "UNKNOWN_RECIPIENT" in notice.detail, notice
        # The hub routes Qingdao back to Shanghai (misconfigured): a loop,
        # refused at the hub instead of circling, and reported.
        env = h.make_envelope(DESK, LEAGUE, trust=t)
        assert desk.submit(env).code == pb.RESULT_OK
        n = desk.recv_kind("delivery", timeout_s=20).delivery
        notice.ParseFromString(n.notice.notice)
        assert notice.message_id == h.header_of(env).message_id, notice
        assert "LOOP" in notice.detail, notice
        desk.close()
        # Qingdao itself has no route to broker.unreachable except through
        # the hub; a broker without any route refuses at once.
        lone = h.Broker("broker.hub", trust=t, **{"federation__peer_listen":
                                                  f"tcp://127.0.0.1:{h.free_port()}",
                                                  f"peers__{SH}": "tcp://127.0.0.1:9"})
        try:
            lone.start()
            c = h.Client(lone, LEAGUE)
            r = c.submit(h.make_envelope(LEAGUE, NOWHERE, trust=t))
            c.close()
            assert r.code == pb.RESULT_UNKNOWN_RECIPIENT and "no route" in r.detail, r
        finally:
            lone.cleanup()


def hub_killed_repeatedly_loses_nothing():
    """Referrals stream from Shanghai to Qingdao while the hub is killed
    with SIGKILL and restarted several times: every referral the desk saw
    ACCEPTED reaches the agency application, each once after its dedup."""
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        state = tempfile.mkdtemp(prefix="referral-fed-")
        out = os.path.join(state, "taken.txt")
        t = f.trust
        env = dict(os.environ, REFERRAL_AGENCY=LEAGUE, REFERRAL_KEYS=t.keydir,
                   REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                   REFERRAL_BROKER=QD, REFERRAL_ENDPOINT=f.qd.endpoint,
                   REFERRAL_STATE=os.path.join(state, "lib"))
        agent = subprocess.Popen([AGENT, "receive", out, "none", "1", "60000"], env=env,
                                 stderr=subprocess.PIPE, text=True)
        desk = h.Client(f.sh, DESK)
        accepted, sent, kills = set(), 0, 0
        try:
            batch = [h.make_envelope(DESK, LEAGUE, trust=t) for _ in range(300)]
            for i, e in enumerate(batch):
                r = desk.submit(e)
                sent += 1
                if r.code == pb.RESULT_OK:
                    accepted.add(h.header_of(e).message_id.hex())
                if i % 75 == 40:
                    f.hub.kill()
                    kills += 1
                    time.sleep(0.3)      # the hub is down for a while: Shanghai holds on
                    f.hub.start()
            deadline = time.monotonic() + 90
            taken = []
            while time.monotonic() < deadline:
                taken = open(out).read().split() if os.path.exists(out) else []
                if accepted <= set(taken):
                    break
                time.sleep(0.2)
            lost = accepted - set(taken)
            dups = len(taken) - len(set(taken))
            print(f"sent={sent} accepted={len(accepted)} delivered={len(set(taken) & accepted)} "
                  f"lost={len(lost)} duplicates={dups} hub_kills={kills}")
            assert kills >= 3
            assert not lost, f"lost {len(lost)} accepted referrals"
            assert dups == 0, "the application saw a referral twice"
        finally:
            desk.close()
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                try:
                    agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
            shutil.rmtree(state, ignore_errors=True)


def peer_socket_admits_brokers_only():
    """An agency key cannot open a peer link, and a broker key cannot act as
    an agency on the client socket."""
    t = trust()
    with Federation(t) as f:
        import zmq
        ctx = zmq.Context.instance()
        for who, endpoint in ((DESK, f"tcp://127.0.0.1:{f.ports[HUB]}"),
                              (SH, f.hub.endpoint)):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            me = t.identity(who)
            s.curve_secretkey = me.curve_secret
            s.curve_publickey = me.curve_public
            s.curve_serverkey = t.identity(HUB).curve_public
            s.connect(endpoint)
            try:
                s.send(b"hello?", zmq.NOBLOCK)
            except zmq.Again:
                pass                     # refused before a send could even queue
            assert not s.poll(800), f"{who} got an answer on {endpoint}"
            s.close(0)
        wait_log(f.hub, "refused peer connection: not a broker's CURVE key")
        wait_log(f.hub, "refused connection: unknown CURVE key")


if __name__ == "__main__":
    h.run([crisis_referral_crosses_the_hub_and_receipts_come_back,
           no_route_and_route_loops_end_in_reported_refusals,
           hub_killed_repeatedly_loses_nothing,
           peer_socket_admits_brokers_only])
