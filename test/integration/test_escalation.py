"""Escalation (issue 12, docs/escalation.md): real brokers on 127.0.0.1
with policies of seconds, raw protocol clients as the agencies.

The recipient qd.youth-league has the chain qd.police, qd.school (backups),
qd.league-supervisor (supervisor desk) and qd.regional-centre (regional
centre); the desk's supervisor is sh.12355.supervisor. Every wait is
bounded; brokers are stopped by PID (harness.py).
"""

import os
import re
import time

import harness as h
from harness import pb
from test_metrics import parse, scrape

DESK = "sh.12355.desk"
DESK_SUP = "sh.12355.supervisor"
LEAGUE = "qd.youth-league"
POLICE = "qd.police"
SCHOOL = "qd.school"
SUP = "qd.league-supervisor"
CENTRE = "qd.regional-centre"
HOSPITAL = "qd.hospital"
AGENCIES = [DESK, DESK_SUP, LEAGUE, POLICE, SCHOOL, SUP, CENTRE, HOSPITAL, "qd.nobody"]
CHAINS = {LEAGUE: {"backup_agencies": [POLICE, SCHOOL], "supervisor_desk": SUP,
                   "regional_centre": CENTRE},
          DESK: {"supervisor_desk": DESK_SUP}}

_trust = None


def trust():
    global _trust
    if _trust is None:
        _trust = h.Trust(agencies=AGENCIES, chains=CHAINS)
    return _trust


def policy(name, delivered, received, accepted, steps, default_for="crisis", extra=""):
    lines = [f"[policy.{name}]", "version = 1", f"default_for = {default_for}",
             f"delivered_within_ms = {delivered}", f"received_within_ms = {received}",
             f"accepted_within_ms = {accepted}", *[f"step = {s}" for s in steps]]
    return "\n".join(lines) + "\n" + extra


# Deadlines 1, 2, 2.5 and 3 s after creation: two copies, then the people.
CHAIN = policy("test-chain", 1000, 2000, 3000,
               ["not_delivered copy_next", "not_received copy_next",
                "not_received alert_supervisor 500", "not_accepted alert_centre"])


def crisis(**kw):
    return h.make_envelope(DESK, LEAGUE, urgency=pb.URGENCY_CRISIS, backups=(POLICE, SCHOOL),
                           trust=trust(), **kw)


def drain(client, quiet_s=0.7, timeout_s=10.0, credit=200):
    """Every delivery until the broker has been quiet for quiet_s (acked)."""
    client.credit(credit)
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            f = client.recv_kind("delivery", quiet_s)
        except TimeoutError:
            break
        got.append(f.delivery)
        client.settle(f.delivery.message_id, wait=False)
    return got


def notice_of(d):
    n = pb.Notice()
    n.ParseFromString(d.notice.notice)
    return n


def alerts(deliveries, kind=pb.NOTICE_KIND_ALERT):
    out = []
    for d in deliveries:
        if d.WhichOneof("payload") == "notice":
            n = notice_of(d)
            if n.kind == kind:
                out.append(n)
    return out


def copies(deliveries):
    return [d.copy for d in deliveries if d.WhichOneof("payload") == "copy"]


def wait_until(t_ms):
    left = t_ms / 1000 - time.time()
    if left > 0:
        time.sleep(left)


def chain_fires_in_order_each_once():
    """Nobody acknowledges: backups, then supervisor, then regional centre,
    in order, each once; the desk sees every step; each alert names the
    agency and the directory's emergency number; the metrics count each."""
    metrics_port = h.free_port()
    with h.Broker(trust=trust(), extra_config=CHAIN,
                  **{"metrics__listen": f"127.0.0.1:{metrics_port}"}) as b:
        desk = h.Client(b, DESK)
        env = crisis()
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        wait_until(hd.created_at_ms + 4500)
        got = {a: drain(h.Client(b, a)) for a in (POLICE, SCHOOL, SUP, CENTRE)}
        for a in (POLICE, SCHOOL):
            (c,) = copies(got[a])
            assert c.original_recipient == LEAGUE and len(c.attempt_id) == 16, c
            assert c.envelope.header == env.header and c.envelope.signature == env.signature
            ch = h.header_of(c.envelope)
            plain = h.open_sealed(c.envelope.sealed_body, c.envelope.header,
                                  trust().identity(a))
            assert plain is not None and ch.to_agency == LEAGUE
        (sup,) = alerts(got[SUP])
        (centre,) = alerts(got[CENTRE])
        assert sup.alert.kind == pb.ALERT_KIND_NOT_RECEIVED and sup.alert.step == 2, sup
        assert centre.alert.kind == pb.ALERT_KIND_NOT_ACCEPTED and centre.alert.step == 3
        for n in (sup, centre):
            assert n.alert.referral_id == hd.referral_id and n.alert.to_agency
            assert [c.phone for c in n.alert.emergency_contacts] == ["110"], n.alert
            assert n.alert.urgency == pb.URGENCY_CRISIS
        steps = alerts(drain(desk))
        assert [n.alert.step for n in steps] == [0, 1, 2, 3], [n.alert.step for n in steps]
        assert [list(n.alert.copied_to) for n in steps[:2]] == [[POLICE], [SCHOOL]]
        at = [n.alert.at_ms for n in steps]
        assert at == sorted(at)
        due = [1000, 2000, 2500, 3000]
        late = [n.alert.at_ms - hd.created_at_ms - d for n, d in zip(steps, due)]
        assert all(0 <= x < 1000 for x in late), late
        print(f"  steps late by {late} ms")
        time.sleep(1.0)            # nothing fires twice
        for a in (POLICE, SCHOOL, SUP, CENTRE, DESK):
            assert not alerts(drain(h.Client(b, a), quiet_s=0.3)), a
        m = parse(scrape(metrics_port)[1])
        steps = {a: m[("referral_escalation_steps_total", f'{{action="{a}"}}')]
                 for a in ("copy_next", "alert_supervisor", "alert_centre", "skipped")}
        assert steps == {"copy_next": 2, "alert_supervisor": 1, "alert_centre": 1,
                         "skipped": 0}, steps
        # Four alerts to the desk, one each to the supervisor and the centre.
        assert m[("referral_alerts_total", '{kind="not_delivered"}')] == 1
        assert m[("referral_alerts_total", '{kind="not_received"}')] == 3
        assert m[("referral_alerts_total", '{kind="not_accepted"}')] == 2


LATE_ACCEPT = policy("test-received", 1000, 2500, 60000,
                     ["not_delivered copy_next", "not_received copy_next",
                      "not_received alert_supervisor", "not_accepted alert_centre"])


def received_stops_the_chain_and_acceptance_withdraws_copies():
    with h.Broker(trust=trust(), extra_config=LATE_ACCEPT) as b:
        desk = h.Client(b, DESK)
        env = crisis()
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        wait_until(hd.created_at_ms + 1500)       # step 1 copied to the police
        league = h.Client(b, LEAGUE)
        (d,) = drain(league)
        assert d.message_id == hd.message_id
        r = h.receipt_for(LEAGUE, env, pb.ACK_LEVEL_RECEIVED, trust=trust())
        assert league.submit(r).code == pb.RESULT_OK
        wait_until(hd.created_at_ms + 4000)
        assert not drain(h.Client(b, SCHOOL), quiet_s=0.3), "copied after RECEIVED"
        assert not drain(h.Client(b, SUP), quiet_s=0.3), "supervisor alerted after RECEIVED"
        a = h.receipt_for(LEAGUE, env, pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, trust=trust())
        assert league.submit(a).code == pb.RESULT_OK
        # The police copy was never collected: withdrawn, never handed over.
        assert not drain(h.Client(b, POLICE), quiet_s=0.5)
        steps = alerts(drain(desk))
        assert [n.alert.step for n in steps] == [0], [n.alert.step for n in steps]
        assert "WITHDRAWN" in b.read_log() or "withdrawn" in b.read_log()


SLOW = policy("test-slow", 60000, 60000, 60000,
              ["not_delivered copy_next", "not_accepted alert_supervisor"])


def rejected_reroutes_and_is_never_a_dead_end():
    with h.Broker(trust=trust(), extra_config=SLOW) as b:
        desk = h.Client(b, DESK)
        env = crisis()
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        league = h.Client(b, LEAGUE)
        assert len(drain(league)) == 1
        rej = h.receipt_for(LEAGUE, env, pb.ACK_LEVEL_REJECTED, trust=trust())
        assert league.submit(rej).code == pb.RESULT_OK
        police = h.Client(b, POLICE)
        (c,) = copies(drain(police))
        assert "rejected" in c.reason, c.reason
        got = drain(desk)
        rr = [n for n in alerts(got) if n.alert.kind == pb.ALERT_KIND_REROUTED]
        assert len(rr) == 1 and list(rr[0].alert.copied_to) == [POLICE], got
        # The police and the school reject too: nobody left, people alerted.
        r2 = h.make_receipt(POLICE, DESK, hd.message_id, hd.referral_id, pb.ACK_LEVEL_REJECTED,
                            trust=trust())
        assert police.submit(r2).code == pb.RESULT_OK
        school = h.Client(b, SCHOOL)
        assert len(copies(drain(school))) == 1
        r3 = h.make_receipt(SCHOOL, DESK, hd.message_id, hd.referral_id, pb.ACK_LEVEL_REJECTED,
                            trust=trust())
        assert school.submit(r3).code == pb.RESULT_OK
        for who in (SUP, CENTRE):
            (n,) = alerts(drain(h.Client(b, who)))
            assert n.alert.kind == pb.ALERT_KIND_REJECTED and "no agency" in n.alert.detail
        final = [n for n in alerts(drain(desk)) if n.alert.kind == pb.ALERT_KIND_REJECTED]
        assert len(final) == 1


def an_agency_that_accepted_then_rejects_is_no_dead_end():
    """The winner gives the case back (REJECTED after ACCEPTED_BY_AGENCY):
    the chain goes on, the next agency gets a copy, the desk is told."""
    with h.Broker(trust=trust(), extra_config=SLOW) as b:
        desk = h.Client(b, DESK)
        env = crisis()
        assert desk.submit(env).code == pb.RESULT_OK
        league = h.Client(b, LEAGUE)
        assert len(drain(league)) == 1
        for level in (pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, pb.ACK_LEVEL_REJECTED):
            r = h.receipt_for(LEAGUE, env, level, trust=trust())
            assert league.submit(r).code == pb.RESULT_OK
        (c,) = copies(drain(h.Client(b, POLICE)))
        assert "rejected" in c.reason, c.reason
        rr = [n for n in alerts(drain(desk)) if n.alert.kind == pb.ALERT_KIND_REROUTED]
        assert len(rr) == 1 and list(rr[0].alert.copied_to) == [POLICE], rr


def expiry_before_the_chain_ends_fires_its_last_step_on_time():
    """A referral delivered but never taken expires before its policy's
    accepted deadline: the last step (an alert) fires at the expiry, not at
    the deadline after it."""
    with h.Broker(trust=trust(), extra_config=SLOW) as b:
        desk = h.Client(b, DESK)
        env = crisis(ttl_ms=3000)
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        league = h.Client(b, LEAGUE)
        assert len(drain(league)) == 1            # delivered: never undeliverable
        wait_until(hd.expires_at_ms + 2500)
        (n,) = alerts(drain(h.Client(b, SUP)))
        assert "expired before any agency accepted" in n.alert.detail, n.alert.detail
        assert n.alert.at_ms - hd.expires_at_ms < 2500, n.alert.at_ms - hd.expires_at_ms


COPY_ALL = policy("test-copy-all", 1000, 60000, 60000,
                  ["not_delivered copy_all", "not_accepted alert_supervisor"])


def two_backups_accept_and_exactly_one_wins():
    with h.Broker(trust=trust(), extra_config=COPY_ALL) as b:
        desk = h.Client(b, DESK)
        env = crisis()
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        wait_until(hd.created_at_ms + 1600)
        police, school = h.Client(b, POLICE), h.Client(b, SCHOOL)
        assert len(copies(drain(police))) == 1 and len(copies(drain(school))) == 1
        for who, c in ((POLICE, police), (SCHOOL, school)):
            r = h.make_receipt(who, DESK, hd.message_id, hd.referral_id,
                               pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, trust=trust())
            assert c.submit(r).code == pb.RESULT_OK
        police_got = alerts(drain(police), pb.NOTICE_KIND_STAND_DOWN)
        school_got = alerts(drain(school), pb.NOTICE_KIND_STAND_DOWN)
        assert police_got == [], police_got
        (sd,) = school_got
        assert sd.about_agency == POLICE and "stand down" in sd.detail
        # The recipient never collected it: withdrawn from its queue.
        assert desk.status(hd.message_id).state == pb.MESSAGE_STATE_WITHDRAWN
        assert not drain(h.Client(b, LEAGUE), quiet_s=0.3)


def restart_across_a_deadline_fires_it_exactly_once():
    with h.Broker(trust=trust(), extra_config=CHAIN) as b:
        desk = h.Client(b, DESK)
        env = crisis()
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        desk.close()
        b.stop()
        wait_until(hd.created_at_ms + 3500)       # every step passed while down
        b.start()
        time.sleep(1.0)
        b.stop()
        b.start()
        got = {a: drain(h.Client(b, a)) for a in (POLICE, SCHOOL, SUP, CENTRE)}
        assert [len(copies(got[a])) for a in (POLICE, SCHOOL)] == [1, 1]
        assert [len(alerts(got[a])) for a in (SUP, CENTRE)] == [1, 1]
        steps = alerts(drain(h.Client(b, DESK)))
        assert sorted(n.alert.step for n in steps) == [0, 1, 2, 3]


def forged_or_replayed_receipts_never_stop_an_escalation():
    with h.Broker(trust=trust(), extra_config=CHAIN) as b:
        desk = h.Client(b, DESK)
        other = crisis()                            # a referral the league really answers
        assert desk.submit(other).code == pb.RESULT_OK
        env = crisis()
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        league = h.Client(b, LEAGUE)
        # Forged: signed with another key in the league's name.
        forged = h.receipt_for(LEAGUE, env, pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, trust=trust())
        forged.signature = h.sign_envelope(trust().identity("qd.outsider"), forged.header,
                                           forged.sealed_body)
        assert league.submit(forged).code == pb.RESULT_BAD_SIGNATURE
        # From an agency the referral was never addressed to.
        hosp = h.Client(b, HOSPITAL)
        stranger = h.receipt_for(HOSPITAL, env, pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, trust=trust())
        assert hosp.submit(stranger).code == pb.RESULT_RECEIPT_REFUSED
        # Replayed: the league's real receipt for the other referral, sent
        # again, and moved onto this one (its header re-pointed, unsigned).
        real = h.receipt_for(LEAGUE, other, pb.ACK_LEVEL_ACCEPTED_BY_AGENCY, trust=trust())
        assert league.submit(real).code == pb.RESULT_OK
        again = league.submit(real)
        assert again.code == pb.RESULT_OK and again.is_duplicate
        moved = pb.Envelope()
        moved.CopyFrom(real)
        mh = h.header_of(real)
        mh.in_reply_to = hd.message_id
        mh.referral_id = hd.referral_id
        moved.header = mh.SerializeToString()
        assert league.submit(moved).code == pb.RESULT_BAD_SIGNATURE
        wait_until(hd.created_at_ms + 4000)
        steps = [n for n in alerts(drain(desk)) if n.alert.message_id == hd.message_id]
        assert sorted(n.alert.step for n in steps) == [0, 1, 2, 3], steps
        assert len(copies(drain(h.Client(b, POLICE)))) == 1


def watchdog_alerts_when_the_destination_is_cut_off_and_stands_down():
    SH, QD = "broker.shanghai", "broker.qingdao"
    t = h.Trust(brokers=(SH, QD), agencies=AGENCIES, chains=CHAINS,
                homes={DESK: SH, DESK_SUP: SH, **{a: QD for a in AGENCIES
                                                   if a.startswith("qd.")}})
    ports = {SH: h.free_port(), QD: h.free_port()}
    fast = {"federation__heartbeat_ms": 200, "federation__peer_timeout_ms": 1500,
            "federation__stall_ms": 2000}
    watch = policy("test-watch", 1000, 3000, 60000,
                   ["not_delivered copy_next", "not_accepted alert_supervisor"],
                   extra="watchdog_grace_ms = 500\n")
    sh = h.Broker(SH, trust=t, extra_config=watch,
                  **{"federation__peer_listen": f"tcp://127.0.0.1:{ports[SH]}",
                     f"peers__{QD}": f"tcp://127.0.0.1:{ports[QD]}", "routes__default": QD},
                  **fast)
    qd = h.Broker(QD, trust=t, **{"federation__peer_listen": f"tcp://127.0.0.1:{ports[QD]}",
                                  f"peers__{SH}": f"tcp://127.0.0.1:{ports[SH]}"}, **fast)
    try:
        sh.start()                                  # Qingdao is down
        desk = h.Client(sh, DESK)
        env = h.make_envelope(DESK, LEAGUE, urgency=pb.URGENCY_CRISIS, trust=t)
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        wait_until(hd.created_at_ms + 2000)
        sup = h.Client(sh, DESK_SUP)
        for c in (desk, sup):
            (n,) = alerts(drain(c))
            assert n.alert.kind == pb.ALERT_KIND_PARTITION and n.alert.to_agency == LEAGUE
            assert n.broker_id == SH and "cut off" in n.alert.detail
        qd.start()                                  # the region comes back
        league = h.Client(qd, LEAGUE)
        league.credit(10)
        d = league.recv_kind("delivery", 15).delivery
        assert d.message_id == hd.message_id
        league.settle(d.message_id)     # DELIVERED: Qingdao's signed notice is the word
        for c in (desk, sup):
            deadline = time.monotonic() + 15
            sd = []
            while not sd and time.monotonic() < deadline:
                sd = alerts(drain(c, quiet_s=0.5), pb.NOTICE_KIND_STAND_DOWN)
            assert len(sd) == 1 and sd[0].alert.kind == pb.ALERT_KIND_PARTITION, sd
    finally:
        qd.cleanup()
        sh.cleanup()


PINNED = (policy("slow-default", 60000, 60000, 60000, ["not_accepted alert_supervisor"]) +
          policy("fast", 1000, 1000, 1500, ["not_delivered alert_supervisor",
                                            "not_accepted alert_centre"], default_for=""))


def desk_pins_a_policy_and_listen_shows_the_alert_plainly():
    """referral-desk send --policy pins it in the header; the supervisor's
    referral-desk listen prints the alert with the number to call."""
    with h.Broker(trust=trust(), extra_config=PINNED) as b:
        desk = h.Desk(b, DESK)
        sup = h.Desk(b, SUP)
        try:
            (ev,) = desk.events("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                                "protection", "--narrative", "Child alone at home tonight",
                                "--policy", "fast:1")
            assert ev["event"] == "accepted", ev
            r = sup.run("listen", "--count", "1", "--timeout-s", "15", timeout=40)
            out = r.stdout
            assert "ALERT NOT_DELIVERED" in out and f"about={LEAGUE}" in out, out
            assert "call: police 110" in out, out
            assert "policy fast v1" in b.read_log() or "fast" in out, out
            # A version this broker does not have runs the id's highest, said so.
            desk.events("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                        "protection", "--narrative", "Second call", "--policy", "fast:9")
            deadline = time.monotonic() + 5
            while "fast version 9 is not configured here" not in b.read_log():
                assert time.monotonic() < deadline, b.read_log()[-2000:]
                time.sleep(0.1)
            bad = desk.run("send", "--to", LEAGUE, "--urgency", "crisis", "--category",
                           "protection", "--narrative", "x", "--policy", "fast:v2", check=False)
            assert bad.returncode != 0 and "ID:VERSION" in bad.stderr, bad.stderr
        finally:
            desk.cleanup()
            sup.cleanup()


GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "desk-listen-escalation.txt")


def desk_listen_prints_the_golden_blocks():
    """referral-desk listen's text, with ids masked, for what an escalation
    brings: the copy at the backup, the alert at the supervisor, the
    stand-down at an agency that accepted second (golden file)."""
    with h.Broker(trust=trust(), extra_config=COPY_ALL) as b:
        desk = h.Client(b, DESK)
        env = crisis(case=h.case_file(narrative="Girl, 12, afraid to go home tonight",
                                      size=64))
        hd = h.header_of(env)
        assert desk.submit(env).code == pb.RESULT_OK
        wait_until(hd.created_at_ms + 1600)
        police, school = h.Desk(b, POLICE), h.Desk(b, SCHOOL)
        try:
            outputs = [d.run("listen", "--count", "1", "--timeout-s", "15").stdout
                       for d in (police, school)]
            mid = hd.message_id.hex()
            for d in (police, school):      # both accept; the police were first
                d.run("ack", mid, "--level", "accepted", "--person", "Officer Li")
            outputs.append(school.run("listen", "--count", "1", "--timeout-s", "15").stdout)
        finally:
            police.cleanup()
            school.cleanup()
        text = "".join(outputs)
        text = re.sub(r"[0-9a-f]{32}", "<id>", text)
        with open(GOLDEN) as g:
            want = g.read()
        assert text == want, f"got:\n{text}\nwant:\n{want}"


ONE_STEP = policy("test-load", 3000, 3000, 3000, ["not_accepted alert_supervisor"])


def thousand_crisis_deadlines_fire_on_time_behind_a_routine_backlog():
    """1,000 crisis deadlines due while 5,000 routine referrals sit queued
    and more arrive: every one fires, and the worst lateness is printed."""
    with h.Broker(trust=trust(), extra_config=ONE_STEP) as b:
        desk = h.Client(b, DESK)
        backlog = [h.make_envelope(DESK, "qd.nobody", trust=trust(), body_size=64)
                   for _ in range(5000)]
        rids = [desk.submit(e, wait=False) for e in backlog]
        for rid in rids:
            assert desk.wait_reply(rid, 60).code == pb.RESULT_OK
        created = {}
        rids = []
        for _ in range(1000):
            e = crisis(body_size=64)
            hd = h.header_of(e)
            created[hd.message_id] = hd.created_at_ms
            rids.append(desk.submit(e, wait=False))
        more = [desk.submit(h.make_envelope(DESK, "qd.nobody", trust=trust(), body_size=64),
                            wait=False) for _ in range(2000)]   # routine traffic meanwhile
        for rid in rids + more:
            assert desk.wait_reply(rid, 60).code == pb.RESULT_OK
        sup = h.Client(b, SUP)
        got = []
        deadline = time.monotonic() + 60
        sup.credit(1000)
        while len(got) < 1000 and time.monotonic() < deadline:
            got += alerts(drain(sup, quiet_s=1.0, credit=0))
        assert len(got) == 1000, len(got)
        late = sorted(n.alert.at_ms - created[n.alert.message_id] - 3000 for n in got)
        p99 = late[int(len(late) * 0.99) - 1]
        print(f"  1000 crisis deadlines: worst lateness {late[-1]} ms, p99 {p99} ms, "
              f"median {late[len(late) // 2]} ms")
        assert late[0] >= 0 and late[-1] < 1000, late[-1]


if __name__ == "__main__":
    h.run([chain_fires_in_order_each_once,
           received_stops_the_chain_and_acceptance_withdraws_copies,
           rejected_reroutes_and_is_never_a_dead_end,
           two_backups_accept_and_exactly_one_wins,
           an_agency_that_accepted_then_rejects_is_no_dead_end,
           expiry_before_the_chain_ends_fires_its_last_step_on_time,
           restart_across_a_deadline_fires_it_exactly_once,
           forged_or_replayed_receipts_never_stop_an_escalation,
           watchdog_alerts_when_the_destination_is_cut_off_and_stands_down,
           desk_pins_a_policy_and_listen_shows_the_alert_plainly,
           desk_listen_prints_the_golden_blocks,
           thousand_crisis_deadlines_fire_on_time_behind_a_routine_backlog])
