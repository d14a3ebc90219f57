"""Federation: three real brokers on 127.0.0.1 (the Shanghai region, a
national hub, the Qingdao region), each with its own store and keys,
carrying referrals store-and-forward between them (docs/federation.md)."""

import itertools
import multiprocessing
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import harness as h
from harness import pb
from test_metrics import parse, scrape

SH, HUB, QD = "broker.shanghai", "broker.hub", "broker.qingdao"
BJ = "broker.beijing"            # a fourth region, linked to Shanghai directly
DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
BJ_LEAGUE = "bj.youth-league"
POLICE = "qd.police"
DUTY = "sh.duty-supervisor"      # told when a link of the Shanghai broker stalls
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


class CutProxy:
    """A TCP forwarder on 127.0.0.1 that the test controls: one thread
    accepts, two threads per connection copy bytes each way. cut() drops
    every connection and refuses (accepts and closes at once) new ones until
    heal(). stall() holds every byte, connections open (a link that goes
    silent), until unstall(); delay_s holds each chunk that long (a slow
    link). Stops, and joins its threads, on close()."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []                  # open sockets, both sides
        self.is_cut = False
        self.is_closed = False
        self.is_stalled = False
        self.delay_s = 0.0
        self.dropped = 0                 # connections cut or refused
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.is_closed:
            try:
                down, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            with self.lock:
                refuse = self.is_cut or self.is_closed
                if refuse:
                    self.dropped += 1
            if refuse:
                down.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                down.close()              # the hub is not there: as a refusal
                continue
            with self.lock:
                self.conns += [down, up]
            for a, b in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self.threads.append(t)

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.is_stalled and not (self.is_cut or self.is_closed):
                    time.sleep(0.01)      # held: the sender's buffers fill behind it
                if self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            self._close(s)

    def _close(self, s):
        with self.lock:
            if s in self.conns:
                self.conns.remove(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def cut(self):
        with self.lock:
            self.is_cut = True
            conns = list(self.conns)
            self.dropped += len(conns) // 2
        for s in conns:
            try:   # RST rather than FIN: the way a link dies when a router drops it
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass               # its other side closed it a moment ago
            self._close(s)

    def heal(self):
        with self.lock:
            self.is_cut = False

    def stall(self):
        self.is_stalled = True

    def unstall(self):
        self.is_stalled = False

    def close(self):
        self.is_closed = True
        self.cut()
        self.listener.close()
        for t in self.threads:
            t.join(timeout=5)


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
            # DELIVERED: Qingdao's signed notice; then the league's own receipts.
            words = sorted((e["event"], e["level"], e["from"]) for e in receipts)
            assert words == [("notice", "delivered", QD), ("receipt", "accepted", LEAGUE),
                             ("receipt", "received", LEAGUE)], receipts
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


class Agent:
    """lib_agent receiving as agency at broker b: the agency application,
    which appends each referral's message id to a file once it has taken
    it (after libreferral's durable hand-over and dedup)."""

    def __init__(self, b, agency):
        self.state = tempfile.mkdtemp(prefix="referral-fed-")
        self.out = os.path.join(self.state, "taken.txt")
        t = b.trust
        env = dict(os.environ, REFERRAL_AGENCY=agency, REFERRAL_KEYS=t.keydir,
                   REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                   REFERRAL_BROKER=b.id, REFERRAL_ENDPOINT=b.endpoint,
                   REFERRAL_STATE=os.path.join(self.state, "lib"))
        self.proc = subprocess.Popen([AGENT, "receive", self.out, "none", "1", "120000"],
                                     env=env, stderr=subprocess.PIPE, text=True)

    def taken(self):
        """Message ids (hex) taken so far, in order, duplicates included."""
        if not os.path.exists(self.out):
            return []
        with open(self.out) as f:
            return f.read().split()

    def wait_for(self, ids, timeout_s):
        """Wait until every id of ids was taken (bounded); the ids taken."""
        deadline = time.monotonic() + timeout_s
        taken = self.taken()
        while not ids <= set(taken) and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lib_agent exited {self.proc.returncode}: "
                                     f"{self.proc.stderr.read()[-2000:]}")
            time.sleep(0.2)
            taken = self.taken()
        return taken

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stderr.close()
        shutil.rmtree(self.state, ignore_errors=True)


# How many referrals hub_killed_repeatedly_loses_nothing sends: issue 11's
# 5,000, about 35 s under the sanitizers on 2 cores; REFERRAL_FED_KILL_COUNT
# changes it for a longer or a quicker run (docs/testing.md).
KILL_COUNT = int(os.environ.get("REFERRAL_FED_KILL_COUNT", "5000"))
HUB_KILLS = 4
SUBMIT_WINDOW = 200              # submissions outstanding at once
_maker_trust = None              # the helper process's Trust (inherited at fork)


def _make_envelopes(n):
    """n envelopes from the desk to the Qingdao league, serialised (runs in
    the helper process)."""
    return [h.make_envelope(DESK, LEAGUE, trust=_maker_trust).SerializeToString()
            for _ in range(n)]


def envelopes_made_aside(t, count, chunk=250):
    """Yield count envelopes (pb.Envelope) made by a helper process, so that
    signing and sealing in Python (about 1.2 ms each) overlaps sending."""
    global _maker_trust
    _maker_trust = t
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as ex:
        jobs = [ex.submit(_make_envelopes, min(chunk, count - i)) for i in range(0, count, chunk)]
        for j in jobs:
            for raw in j.result(timeout=600):
                yield pb.Envelope.FromString(raw)


def hub_killed_repeatedly_loses_nothing():
    """KILL_COUNT referrals stream from Shanghai to Qingdao (pipelined,
    SUBMIT_WINDOW outstanding) while the hub is killed with SIGKILL and
    restarted HUB_KILLS times: every referral the desk saw ACCEPTED reaches
    the agency application, each once after its dedup."""
    with Federation(trust()) as f:
        wait_log(f.sh, f"link connected peer={HUB}")
        t = f.trust
        made = envelopes_made_aside(t, KILL_COUNT)   # the helper forks before any socket
        first = next(made)
        agent = Agent(f.qd, LEAGUE)
        desk = h.Client(f.sh, DESK)
        accepted, outstanding, sent, kills = set(), {}, 0, 0
        kill_at = {KILL_COUNT * (k + 1) // (HUB_KILLS + 1) for k in range(HUB_KILLS)}
        started = time.monotonic()

        def collect(block):
            r = desk.recv_kind("submit_reply", timeout_s=30 if block else 0.001).submit_reply
            mid = outstanding.pop(r.request_id)
            if r.code == pb.RESULT_OK:
                accepted.add(mid)

        try:
            for e in itertools.chain([first], made):
                outstanding[desk.submit(e, wait=False)] = h.header_of(e).message_id.hex()
                sent += 1
                while len(outstanding) >= SUBMIT_WINDOW:
                    collect(block=True)
                if sent in kill_at:
                    f.hub.kill()
                    kills += 1
                    time.sleep(0.3)      # the hub is down for a while: Shanghai holds on
                    f.hub.start()
            while outstanding:
                collect(block=True)
            submitted_s = time.monotonic() - started
            taken = agent.wait_for(accepted, 60 + KILL_COUNT * 0.02)
            lost = accepted - set(taken)
            dups = len(taken) - len(set(taken))
            print(f"sent={sent} accepted={len(accepted)} delivered={len(set(taken) & accepted)} "
                  f"lost={len(lost)} duplicates={dups} hub_kills={kills} "
                  f"submitted_s={submitted_s:.1f} delivered_s={time.monotonic() - started:.1f}",
                  flush=True)
            assert kills == HUB_KILLS
            assert not lost, f"lost {len(lost)} accepted referrals"
            assert dups == 0, "the application saw a referral twice"
        finally:
            desk.close()
            agent.cleanup()


CRASH_CYCLES = int(os.environ.get("REFERRAL_CRASH_CYCLES", "20"))
CRASH_BATCH = 25
SUPERVISOR = "qd.league-supervisor"
ALERT_EACH = """[policy.alert-each]
version = 1
default_for = routine
delivered_within_ms = 2000
received_within_ms = 2000
accepted_within_ms = 2000
step = not_accepted alert_supervisor
"""


def crash_loop_across_the_federation_with_escalation():
    """CRASH_CYCLES cycles (20 in CI; REFERRAL_CRASH_CYCLES=1000 by hand):
    a batch of referrals from Shanghai to Qingdao, then kill -9 at a random
    moment of, in turn, the Shanghai broker, the hub, the Qingdao broker and
    the agency's process, and a restart. Qingdao runs a policy whose one
    step alerts the supervisor 2 s after each referral's creation (nobody
    accepts). At the end every referral the desk saw ACCEPTED reached the
    agency application (duplicates only of ids it deduplicates), and every
    escalation deadline fired exactly once: one distinct alert per referral
    (issue 15, item 1)."""
    t = h.Trust(brokers=(SH, HUB, QD, LOST), agencies=[DESK, LEAGUE, POLICE, NOWHERE, SUPERVISOR],
                homes={DESK: SH, LEAGUE: QD, POLICE: QD, NOWHERE: LOST, SUPERVISOR: QD},
                chains={LEAGUE: {"supervisor_desk": SUPERVISOR}})
    f = Federation(t)
    f.qd.extra_config = ALERT_EACH
    rng = random.Random(12355)
    with f:
        wait_log(f.sh, f"link connected peer={HUB}")
        wait_log(f.qd, f"link connected peer={HUB}")
        made = envelopes_made_aside(t, CRASH_CYCLES * CRASH_BATCH)
        agent = Agent(f.qd, LEAGUE)
        agent_args = agent.proc.args
        agent_env = dict(os.environ, REFERRAL_AGENCY=LEAGUE, REFERRAL_KEYS=t.keydir,
                         REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                         REFERRAL_BROKER=QD, REFERRAL_ENDPOINT=f.qd.endpoint,
                         REFERRAL_STATE=os.path.join(agent.state, "lib"))
        accepted, sent, kills = set(), 0, {}
        victims = ("shanghai", "hub", "qingdao", "agent")
        try:
            for cycle in range(CRASH_CYCLES):
                desk = h.Client(f.sh, DESK)
                outstanding = {}
                for _ in range(CRASH_BATCH):
                    e = next(made)
                    outstanding[desk.submit(e, wait=False)] = h.header_of(e).message_id.hex()
                    sent += 1
                while outstanding:
                    r = desk.recv_kind("submit_reply", timeout_s=30).submit_reply
                    mid = outstanding.pop(r.request_id)
                    if r.code == pb.RESULT_OK:
                        accepted.add(mid)
                desk.close()
                time.sleep(rng.uniform(0.0, 0.4))     # a random moment downstream
                victim = victims[cycle % len(victims)]
                kills[victim] = kills.get(victim, 0) + 1
                if victim == "agent":
                    agent.proc.kill()
                    agent.proc.wait(timeout=10)
                    agent.proc = subprocess.Popen(agent_args, env=agent_env,
                                                  stderr=subprocess.PIPE, text=True)
                else:
                    b = {"shanghai": f.sh, "hub": f.hub, "qingdao": f.qd}[victim]
                    b.kill()
                    b.start()
            taken = agent.wait_for(accepted, 120)
            lost = accepted - set(taken)
            dups = len(taken) - len(set(taken))
            # Every deadline passed: each referral's one alert, counted once
            # by its notice id however often it was delivered.
            time.sleep(2.5)
            sup = h.Client(f.qd, SUPERVISOR)
            sup.credit(1000)
            alerts = {}
            deadline = time.monotonic() + 60 + len(accepted) / 50
            while time.monotonic() < deadline:
                try:
                    d = sup.recv_kind("delivery", timeout_s=2.0).delivery
                except TimeoutError:
                    if accepted <= set(alerts):
                        break
                    continue
                sup.settle(d.message_id, wait=False)
                sup.credit(1)                         # one more as each is settled
                n = pb.Notice()
                n.ParseFromString(d.notice.notice)
                alerts.setdefault(n.alert.message_id.hex(), set()).add(n.notice_id)
            twice = [m for m, ids in alerts.items() if len(ids) != 1]
            print(f"cycles={CRASH_CYCLES} kills={kills} sent={sent} accepted={len(accepted)} "
                  f"delivered={len(set(taken) & accepted)} lost={len(lost)} "
                  f"duplicates={dups} (deduplicated by id) alerts={len(alerts)} "
                  f"alerted_twice={len(twice)}", flush=True)
            assert not lost, f"lost {len(lost)} accepted referrals"
            assert accepted <= set(alerts), f"{len(accepted - set(alerts))} deadlines never fired"
            assert not twice, f"{len(twice)} deadlines fired twice"
        finally:
            agent.cleanup()


def stalled_then_slow_link_delivers_everything():
    """The Shanghai-hub link, through a proxy the test controls, first goes
    silent for 4 s (every byte held, connections open: longer than the
    peer timeout and the stall time), then runs slow (each chunk held
    50 ms) for 3 s, while the desk keeps referring cases to Qingdao
    (issue 15, item 2). Shanghai's stall detector fires during the silence;
    afterwards every referral Shanghai accepted reaches the league, once."""
    t = trust()
    ports = {b: h.free_port() for b in (SH, HUB, QD)}

    def ep(b, port=None):
        return f"tcp://127.0.0.1:{port or ports[b]}"

    proxy = CutProxy(ports[HUB])
    sh = h.Broker(SH, trust=t, **{"federation__peer_listen": ep(SH),
                                  f"peers__{HUB}": ep(HUB, proxy.port),
                                  "routes__default": HUB}, **FAST)
    hub = h.Broker(HUB, trust=t, **{"federation__peer_listen": ep(HUB), f"peers__{SH}": ep(SH),
                                    f"peers__{QD}": ep(QD)}, **FAST)
    qd = h.Broker(QD, trust=t, **{"federation__peer_listen": ep(QD), f"peers__{HUB}": ep(HUB),
                                  "routes__default": HUB}, **FAST)
    brokers = (hub, qd, sh)
    try:
        for b in brokers:
            b.start()
        wait_log(sh, f"link connected peer={HUB}")
        desk = h.Client(sh, DESK)
        accepted = set()

        def refer(seconds):
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                env = h.make_envelope(DESK, LEAGUE, trust=t, body_size=256)
                if desk.submit(env).code == pb.RESULT_OK:
                    accepted.add(h.header_of(env).message_id)
                time.sleep(0.1)

        refer(1.0)
        proxy.stall()
        try:
            refer(4.0)                     # the silence under test
        finally:
            proxy.unstall()
        proxy.delay_s = 0.05
        refer(3.0)                         # the slow link under test
        proxy.delay_s = 0.0
        league = h.Client(qd, LEAGUE)
        got = h.take_all(league, accepted, 60)
        lost = accepted - set(got)
        twice = [m for m, n in got.items() if n > 1]
        print(f"accepted={len(accepted)} delivered={len(accepted & set(got))} lost={len(lost)} "
              f"delivered_twice={len(twice)}", flush=True)
        assert f"link stalled peer={HUB}" in sh.read_log(), "the stall detector never fired"
        assert not lost, f"{len(lost)} accepted referrals lost"
        assert not twice, f"{len(twice)} referrals delivered twice to a settling agency"
    finally:
        proxy.close()
        for b in brokers:
            b.cleanup()
        t.cleanup()


CUT_S = 6.0                      # how long the Shanghai-hub link is cut
TICK_S = 0.1                     # one referral on each route per tick


class DirectReceiver:
    """An agency client at broker b that takes every delivery as it comes
    (credit, ack) on a thread of its own and notes when each arrived."""

    def __init__(self, b, agency):
        self.client = h.Client(b, agency)
        self.client.credit(1000)
        self.arrived = {}                # message id hex -> time.monotonic()
        self.stop = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            while not self.stop.is_set():
                try:
                    d = self.client.recv_kind("delivery", timeout_s=0.2).delivery
                except TimeoutError:
                    continue
                self.arrived.setdefault(d.message_id.hex(), time.monotonic())
                self.client.settle(d.message_id, wait=False)
        except Exception as e:  # noqa: BLE001 - reported by close()
            self.error = e

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        self.client.close()
        assert self.error is None, f"receiver failed: {self.error!r}"


def link_cut_heals_and_other_route_keeps_moving():
    """The Shanghai-hub link is cut (a forwarding proxy the test controls
    drops every connection and refuses new ones) for CUT_S while a desk
    keeps referring cases to Qingdao (through the hub) and to Beijing (a
    direct link). During the cut nothing reaches Qingdao, Shanghai logs
    the hub link stalled, and Beijing's referrals keep arriving as fast as
    before; after the heal every referral Shanghai accepted reaches the
    Qingdao agency application, once. Shanghai's metrics count it all: the
    hub link down and stalled during the cut, up after; one stall; every
    forward settled by an ok hop ack."""
    t = h.Trust(brokers=(SH, HUB, QD, BJ), agencies=[DESK, LEAGUE, BJ_LEAGUE, DUTY],
                homes={DESK: SH, LEAGUE: QD, BJ_LEAGUE: BJ, DUTY: SH})
    ports = {b: h.free_port() for b in (SH, HUB, QD, BJ)}

    def ep(b, port=None):
        return f"tcp://127.0.0.1:{port or ports[b]}"

    proxy = CutProxy(ports[HUB])
    metrics_port = h.free_port()
    sh = h.Broker(SH, trust=t, **{"federation__peer_listen": ep(SH),
                                  f"peers__{HUB}": ep(HUB, proxy.port),
                                  f"peers__{BJ}": ep(BJ), "routes__default": HUB,
                                  "metrics__listen": f"127.0.0.1:{metrics_port}",
                                  "federation__stall_alert_to": DUTY}, **FAST)
    hub = h.Broker(HUB, trust=t, **{"federation__peer_listen": ep(HUB), f"peers__{SH}": ep(SH),
                                    f"peers__{QD}": ep(QD)}, **FAST)
    qd = h.Broker(QD, trust=t, **{"federation__peer_listen": ep(QD), f"peers__{HUB}": ep(HUB),
                                  "routes__default": HUB}, **FAST)
    bj = h.Broker(BJ, trust=t, **{"federation__peer_listen": ep(BJ), f"peers__{SH}": ep(SH)},
                  **FAST)
    brokers = (hub, qd, bj, sh)
    agent = receiver = desk = None
    try:
        for b in brokers:
            b.start()
        wait_log(sh, f"link connected peer={HUB}")
        wait_log(sh, f"link connected peer={BJ}")
        agent = Agent(qd, LEAGUE)
        receiver = DirectReceiver(bj, BJ_LEAGUE)
        desk = h.Client(sh, DESK)
        sent = {LEAGUE: {}, BJ_LEAGUE: {}}        # message id hex -> (phase, submitted at)
        accepted = {LEAGUE: set(), BJ_LEAGUE: set()}
        marks = {}

        def refer(seconds, phase):
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                tick = time.monotonic()
                for to in (LEAGUE, BJ_LEAGUE):
                    env = h.make_envelope(DESK, to, trust=t)
                    mid = h.header_of(env).message_id.hex()
                    sent[to][mid] = (phase, time.monotonic())
                    if desk.submit(env).code == pb.RESULT_OK:
                        accepted[to].add(mid)
                if phase == "cut" and "stalled" not in marks and \
                        f"link stalled peer={HUB}" in sh.read_log():
                    marks["stalled"] = time.monotonic()
                time.sleep(max(0.0, TICK_S - (time.monotonic() - tick)))

        refer(1.5, "before")
        assert f"link stalled peer={HUB}" not in sh.read_log()
        marks["cut"] = time.monotonic()
        proxy.cut()
        refer(CUT_S, "cut")
        in_cut = parse(scrape(metrics_port)[1])
        marks["heal"] = time.monotonic()
        qd_during_cut = set(agent.taken())
        proxy.heal()
        refer(1.0, "after")

        taken = agent.wait_for(accepted[LEAGUE], 60)
        deadline = time.monotonic() + 30
        while not accepted[BJ_LEAGUE] <= set(receiver.arrived) and time.monotonic() < deadline:
            time.sleep(0.1)

        def lat_ms(phase):
            return sorted((receiver.arrived[m] - at) * 1000 for m, (p, at) in
                          sent[BJ_LEAGUE].items() if p == phase and m in receiver.arrived)

        def cut_ids(to):
            return {m for m, (p, _) in sent[to].items() if p == "cut"}

        lost = accepted[LEAGUE] - set(taken)
        dups = len(taken) - len(set(taken))
        before, during = lat_ms("before"), lat_ms("cut")
        # Beijing referrals sent during the cut, early enough to arrive before the heal.
        bj_cut_early = {m for m in cut_ids(BJ_LEAGUE) if sent[BJ_LEAGUE][m][1] <
                        marks["heal"] - 1.0}
        bj_before_heal = {m for m in bj_cut_early if receiver.arrived.get(m, 1e18) <
                          marks["heal"]}
        stalled_s = marks.get("stalled", float("nan")) - marks["cut"]
        print(f"cut_s={CUT_S} stall_logged_after_s={stalled_s:.1f} | via hub: "
              f"sent={len(sent[LEAGUE])} accepted={len(accepted[LEAGUE])} "
              f"delivered={len(set(taken) & accepted[LEAGUE])} lost={len(lost)} "
              f"duplicates={dups} sent_during_cut={len(cut_ids(LEAGUE))} "
              f"arrived_during_cut={len(qd_during_cut & cut_ids(LEAGUE))} | direct: "
              f"sent_during_cut={len(cut_ids(BJ_LEAGUE))} "
              f"arrived_before_heal={len(bj_before_heal)}/{len(bj_cut_early)} "
              f"latency_ms before p50={before[len(before) // 2]:.0f} max={before[-1]:.0f}, "
              f"during p50={during[len(during) // 2]:.0f} max={during[-1]:.0f}", flush=True)
        assert len(cut_ids(LEAGUE)) >= 10, "too few referrals during the cut to show anything"
        assert not qd_during_cut & cut_ids(LEAGUE), "the cut did not cut"
        assert not lost, f"lost {len(lost)} accepted referrals"
        assert dups == 0, "the application saw a referral twice"
        assert accepted[LEAGUE] == set(sent[LEAGUE]), "Shanghai refused work during the cut"
        assert "stalled" in marks, "no `link stalled` during the cut"
        assert f"link stalled peer={BJ}" not in sh.read_log()
        assert accepted[BJ_LEAGUE] <= set(receiver.arrived), "a direct referral never arrived"
        assert bj_before_heal == bj_cut_early, "the direct route waited for the heal"
        # Not slowed: during the cut a direct referral arrives within a
        # second (the cut lasts CUT_S), as before it.
        assert during[-1] < 1000, f"direct route slowed during the cut: {during[-1]:.0f} ms"
        wait_log(sh, f"link moving again peer={HUB}")

        def fig(m, name, peer, code=None):
            labels = f'{{peer="{peer}"' + (f',code="{code}"' if code else "") + "}"
            return m[(name, labels)]

        assert fig(in_cut, "referral_peer_up", HUB) == 0, in_cut
        assert fig(in_cut, "referral_peer_up", BJ) == 1
        assert fig(in_cut, "referral_peer_stalled", HUB) == 1
        assert fig(in_cut, "referral_peer_stalls_total", HUB) == 1
        assert fig(in_cut, "referral_peer_downs_total", HUB) >= 1
        assert fig(in_cut, "referral_peer_in_flight", HUB) == 0   # returned to the queue
        deadline = time.monotonic() + 10
        while True:
            end = parse(scrape(metrics_port)[1])
            if fig(end, "referral_peer_in_flight", HUB) == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        print(" ".join(f"{name}{{peer={peer}}}={fig(end, name, peer):.0f}"
                       for peer in (HUB, BJ) for name in
                       ("referral_peer_up", "referral_peer_downs_total",
                        "referral_peer_stalls_total", "referral_peer_forwards_total"))
              + f" hop_acks_ok{{hub}}={fig(end, 'referral_peer_hop_acks_total', HUB, 'ok'):.0f}",
              flush=True)
        assert fig(end, "referral_peer_up", HUB) == 1
        assert fig(end, "referral_peer_stalled", HUB) == 0
        assert fig(end, "referral_peer_in_flight", HUB) == 0
        assert fig(end, "referral_peer_stalls_total", HUB) == 1
        # The stall was announced to the duty desk by a signed alert, and its
        # end by a stand-down naming the same incident.
        duty = h.Client(sh, DUTY)
        duty.credit(10)
        got = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            try:
                d = duty.recv_kind("delivery", 1.0).delivery
            except TimeoutError:
                continue
            duty.settle(d.message_id)
            n = pb.Notice()
            n.ParseFromString(d.notice.notice)
            t.identity(SH).sign_key.public_key().verify(
                d.notice.signature, b"referral.v1 notice\x00" + d.notice.notice)
            got.append(n)
        assert [n.kind for n in got] == [pb.NOTICE_KIND_ALERT, pb.NOTICE_KIND_STAND_DOWN], got
        assert all(n.alert.kind == pb.ALERT_KIND_PARTITION and HUB in n.alert.detail
                   for n in got), got
        assert got[0].alert.message_id == got[1].alert.message_id
        assert fig(end, "referral_peer_hop_acks_total", HUB, "ok") == len(accepted[LEAGUE])
        assert fig(end, "referral_peer_forwards_total", HUB) >= len(accepted[LEAGUE])
        for name, want in (("referral_peer_stalls_total", 0), ("referral_peer_downs_total", 0),
                           ("referral_peer_forwards_total", len(accepted[BJ_LEAGUE])),
                           ("referral_peer_in_flight", 0)):
            assert fig(end, name, BJ) == want, (name, fig(end, name, BJ))
        assert fig(end, "referral_peer_hop_acks_total", BJ, "ok") == len(accepted[BJ_LEAGUE])
    finally:
        for x in (desk, receiver):
            if x is not None:
                x.close()
        if agent is not None:
            agent.cleanup()
        for b in brokers:
            b.cleanup()
        proxy.close()
        t.cleanup()


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



def paused_hub_is_alerted_and_everything_arrives_after():
    """The hub is stopped with SIGSTOP for longer than the peer timeout and
    the stall time: Shanghai's duty desk gets a signed stall alert, the
    origin's watchdog alerts the desk and its supervisor (PARTITION); after
    SIGCONT every referral reaches Qingdao once, and each alert is stood
    down (issue 15, item 2, in part)."""
    sup = "sh.12355.supervisor"
    t = h.Trust(brokers=(SH, HUB, QD, LOST), agencies=[DESK, LEAGUE, POLICE, NOWHERE, DUTY, sup],
                homes={DESK: SH, LEAGUE: QD, POLICE: QD, NOWHERE: LOST, DUTY: SH, sup: SH},
                chains={DESK: {"supervisor_desk": sup}})
    watch = ("[policy.watch]\nversion = 1\ndefault_for = crisis\ndelivered_within_ms = 2000\n"
             "received_within_ms = 60000\naccepted_within_ms = 60000\nwatchdog_grace_ms = 500\n"
             "step = not_accepted alert_supervisor\n")
    with Federation(t, federation__stall_alert_to=DUTY) as f:
        f.sh.extra_config = watch
        f.sh.stop()
        f.sh.start()
        wait_log(f.sh, f"link connected peer={HUB}")
        wait_log(f.qd, f"link connected peer={HUB}")
        f.hub.proc.send_signal(signal.SIGSTOP)
        try:
            desk = h.Client(f.sh, DESK)
            sent = [h.make_envelope(DESK, LEAGUE, urgency=pb.URGENCY_CRISIS, trust=t)
                    for _ in range(10)]
            for env in sent:
                assert desk.submit(env).code == pb.RESULT_OK
            wait_log(f.sh, f"link stalled peer={HUB}", timeout_s=15)
            wait_log(f.sh, "stall alert sent", timeout_s=10)
            deadline = time.monotonic() + 15
            while f.sh.read_log().count("kind=6") < 10 and time.monotonic() < deadline:
                time.sleep(0.1)            # the watchdog's partition alerts (AlertKind 6)
        finally:
            f.hub.proc.send_signal(signal.SIGCONT)
        league = h.Client(f.qd, LEAGUE)
        league.credit(20)
        got = {}
        deadline = time.monotonic() + 30
        while len(got) < 10 and time.monotonic() < deadline:
            try:
                d = league.recv_kind("delivery", 1.0).delivery
            except TimeoutError:
                continue
            league.settle(d.message_id, wait=False)
            got[d.message_id] = got.get(d.message_id, 0) + 1
        want = {h.header_of(e).message_id for e in sent}
        assert set(got) == want and all(n == 1 for n in got.values()), (len(got), got)
        # Word comes back (Qingdao's signed DELIVERED notices for the settles):
        # the watchdog stands down.

        def notices(agency, want_stand_downs):
            c = h.Client(f.sh, agency)
            c.credit(100)
            kinds = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    d = c.recv_kind("delivery", 1.0).delivery
                except TimeoutError:
                    if kinds.count(pb.NOTICE_KIND_STAND_DOWN) >= want_stand_downs:
                        break
                    continue
                c.settle(d.message_id, wait=False)
                if d.WhichOneof("payload") == "notice":
                    n = pb.Notice()
                    n.ParseFromString(d.notice.notice)
                    if n.alert.kind == pb.ALERT_KIND_PARTITION:
                        kinds.append(n.kind)
            return kinds

        duty = notices(DUTY, 1)
        assert duty.count(pb.NOTICE_KIND_ALERT) == 1 and \
            duty.count(pb.NOTICE_KIND_STAND_DOWN) == 1, duty
        for who in (DESK, sup):
            k = notices(who, 10)
            assert k.count(pb.NOTICE_KIND_ALERT) == 10 and \
                k.count(pb.NOTICE_KIND_STAND_DOWN) == 10, (who, k)
        print(f"hub paused; delivered={len(got)} duplicates=0 stall alerts={len(duty)} "
              f"partition alerts and stand-downs per desk=10+10", flush=True)

if __name__ == "__main__":
    h.run([crisis_referral_crosses_the_hub_and_receipts_come_back,
           no_route_and_route_loops_end_in_reported_refusals,
           hub_killed_repeatedly_loses_nothing,
           link_cut_heals_and_other_route_keeps_moving,
           peer_socket_admits_brokers_only,
           paused_hub_is_alerted_and_everything_arrives_after,
           stalled_then_slow_link_delivers_everything,
           crash_loop_across_the_federation_with_escalation])
