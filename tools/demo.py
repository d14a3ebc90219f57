"""A local demonstration of the referral federation, end to end, on 127.0.0.1.

Three brokers, each with its own store and keys: the Shanghai region, a
national hub, and the Qingdao region. A hotline desk in Shanghai refers a
crisis to the Qingdao youth league with referral-desk (the command-line
desk built on libreferral): the referral is signed and its case file
sealed so that only the youth league can read it; the Shanghai broker
stores it durably and forwards it, store-and-forward, through the hub to
Qingdao (each hop acknowledged after its own commit), even though the hub
is killed with kill -9 on the way. The youth league's desk receives the
crisis before the routine referral, opens and acknowledges it; the Shanghai
desk sees the Qingdao broker's signed DELIVERED notices and the league's
receipts come back through the hub, and a signed notice from the Qingdao
broker about a referral nobody collected.

It makes its own demo keys and directory (referralctl), starts its own
brokers, stops them by PID, and leaves nothing running or on disk. Run it
through tools/demo.sh, which builds first.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import harness as h

DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
NOBODY = "qd.closed-office"
NIGHT = "qd.night-desk"           # nobody answers it: escalation
POLICE = "qd.police"
SUPERVISOR = "qd.league-supervisor"
DEMO_POLICY = """[policy.demo-crisis]
version = 1
default_for = crisis
delivered_within_ms = 2000
received_within_ms = 4000
accepted_within_ms = 6000
step = not_delivered copy_next
step = not_received alert_supervisor
step = not_accepted alert_centre
"""
SH, HUB, QD = "broker.shanghai", "broker.hub", "broker.qingdao"
TRACE = os.environ.get("REFERRAL_TRACE", "referral-trace")


def say(text):
    print(text, flush=True)


def show(prefix, desk, *args):
    """Run referral-desk and print its output lines."""
    r = desk.run(*args, "--json")
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for e in events:
        if e["event"] == "accepted":
            say(f"{prefix} ACCEPTED by broker.shanghai (stored with fsync): message "
                f"{e['message_id'][-10:]}")
        elif e["event"] == "referral" and e.get("is_copy"):
            say(f"{prefix} received an ESCALATION COPY of a {e['urgency'].upper()} referral "
                f"for {e['original_recipient']} from {e['from']} ({e['detail']}), opened the "
                f"sealed case file: \"{e['narrative']}\"")
        elif e["event"] == "referral":
            say(f"{prefix} received {e['urgency'].upper()} referral from {e['from']}, "
                f"opened the sealed case file: \"{e['narrative']}\"")
        elif e["event"] == "alert":
            say(f"{prefix} ALERT {e['alert_kind']} from broker {e['from']} about "
                f"{e['about']}: {e['detail']}" + (f" | call: {e['contacts']}"
                                                  if e["contacts"] else ""))
        elif e["event"] == "stand_down":
            say(f"{prefix} STAND-DOWN from broker {e['from']}: {e['detail']}")
        elif e["event"] == "acknowledged":
            say(f"{prefix} acknowledged {e['message_id'][-10:]} as {e['level'].upper()}")
        elif e["event"] == "receipt":
            say(f"{prefix} receipt from {e['from']}: {e['level'].upper()} "
                f"(for message {e['in_reply_to'][-10:]}; signed by the agency)")
        elif e["event"] == "notice" and e["level"] == "delivered":
            say(f"{prefix} notice from broker {e['from']}: DELIVERED (for message "
                f"{e['in_reply_to'][-10:]}; the client of {e['about']} stored it; "
                "signed by the broker)")
        elif e["event"] == "notice":
            say(f"{prefix} notice from broker {e['from']}: {e['detail']}")
    return events


def wait_log(b, text, timeout_s=20):
    deadline = time.monotonic() + timeout_s
    while text not in b.read_log():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{b.id} did not log {text!r}")
        time.sleep(0.05)


def federation(trust):
    """Shanghai and Qingdao each linked to the hub, which links both."""
    ports = {b: h.free_port() for b in (SH, HUB, QD)}

    def ep(b):
        return f"tcp://127.0.0.1:{ports[b]}"

    fast = {"federation__heartbeat_ms": 300, "federation__peer_timeout_ms": 2000,
            "delivery__ack_timeout_ms": 5000}
    sh = h.Broker(SH, trust=trust, **{"federation__peer_listen": ep(SH),
                                      f"peers__{HUB}": ep(HUB), "routes__default": HUB}, **fast)
    hub = h.Broker(HUB, trust=trust, **{"federation__peer_listen": ep(HUB),
                                        f"peers__{SH}": ep(SH), f"peers__{QD}": ep(QD)}, **fast)
    qd = h.Broker(QD, trust=trust, extra_config=DEMO_POLICY,
                  **{"federation__peer_listen": ep(QD),
                                      f"peers__{HUB}": ep(HUB), "routes__default": HUB}, **fast)
    return sh, hub, qd


def hops(b, message_id):
    """The lines of broker b's log about message_id's hop."""
    return [line.split(" ", 3)[-1] for line in b.read_log().splitlines()
            if message_id in line and ("relayed-in" in line or "accepted referral" in line)]


def main():
    say("[setup]  referralctl keygen: a trust root, three brokers and three agencies; "
        "referralctl directory sign (Shanghai desk homed at broker.shanghai, the Qingdao "
        "agencies at broker.qingdao)")
    trust = h.Trust(brokers=(SH, HUB, QD),
                    agencies=[DESK, LEAGUE, NOBODY, NIGHT, POLICE, SUPERVISOR],
                    homes={DESK: SH, LEAGUE: QD, NOBODY: QD, NIGHT: QD, POLICE: QD,
                           SUPERVISOR: QD},
                    chains={NIGHT: {"backup_agencies": [POLICE],
                                    "supervisor_desk": SUPERVISOR}})
    sh, hub, qd = federation(trust)
    desk = league = None
    try:
        for b in (sh, hub, qd):
            b.start()
            say(f"[{b.id}] referrald started (pid {b.proc.pid}), clients on {b.endpoint}, "
                "CURVE on every connection")
        for b, peer in ((sh, HUB), (qd, HUB)):
            wait_log(b, f"link connected peer={peer}")
        say("[links]  broker.shanghai <-> broker.hub <-> broker.qingdao connected")
        desk, league = h.Desk(sh, DESK), h.Desk(qd, LEAGUE)

        say("[hub]    kill -9 of the hub: the Shanghai broker keeps what it accepted")
        hub.kill()
        show("[desk]  ", desk, "send", "--to", LEAGUE, "--urgency", "routine", "--category",
             "growth_difficulty", "--narrative", "Truancy for three weeks; parents unreachable.")
        sent = show("[desk]  ", desk, "send", "--to", LEAGUE, "--urgency", "crisis",
                    "--category", "psychological_support", "--pseudonym", "caller-7", "--age",
                    "17", "--narrative", "Caller, 17, in Shibei says she has a plan to end her "
                    "life tonight; agreed to a call back.", "--action",
                    "call her back within 15 minutes; police informed")
        show("[desk]  ", desk, "send", "--to", NOBODY, "--urgency", "urgent", "--category",
             "protection", "--narrative", "Neighbour reports a child left alone.", "--ttl-s", "4")
        say(f"[desk]    (the urgent referral to {NOBODY} expires in 4 s: nobody collects it)")
        hub.start()
        say(f"[hub]    restarted (pid {hub.proc.pid}): the queued referrals now cross, "
            "each hop acknowledged after its commit")
        crisis = sent[0]["message_id"]
        wait_log(qd, f"msg={crisis}")
        for b in (sh, hub, qd):
            for line in hops(b, crisis):
                say(f"[{b.id}] {line}")

        say(f"[agency] {LEAGUE} at broker.qingdao: referral-desk listen --ack received "
            "--person 'Wang Li'")
        show("[agency]", league, "listen", "--count", "2", "--timeout-s", "20", "--ack",
             "received", "--person", "Wang Li")
        league.run("ack", crisis, "--level", "accepted", "--person", "Wang Li")
        say(f"[agency] acknowledged {crisis[-10:]} as ACCEPTED_BY_AGENCY (Wang Li)")

        say(f"[desk]   {DESK} at broker.shanghai: referral-desk listen (receipts and notices "
            "come back through the hub)")
        show("[desk]  ", desk, "listen", "--count", "6", "--timeout-s", "30")
        state = desk.run("status", crisis).stdout.split()[1]
        say(f"[desk]   state of the crisis referral at broker.shanghai: {state} "
            "(handed on: RELAYED)")

        say(f"[escalation] a crisis for {NIGHT}, which nobody answers tonight; broker.qingdao "
            "runs its crisis policy (demo: copy at 2 s, supervisor at 4 s, centre at 6 s)")
        night = show("[desk]  ", desk, "send", "--to", NIGHT, "--urgency", "crisis",
                     "--category", "protection", "--pseudonym", "child-12", "--age", "9",
                     "--narrative", "Boy, 9, says his stepfather hit him and he is afraid to "
                     "go home tonight.", "--action", "visit tonight; school informed")
        wait_log(qd, "escalate: alert", timeout_s=30)
        time.sleep(2.5)
        police, sup = h.Desk(qd, POLICE), h.Desk(qd, SUPERVISOR)
        try:
            say(f"[agency] {SUPERVISOR}: referral-desk listen")
            show("[agency]", sup, "listen", "--count", "1", "--timeout-s", "20")
            say(f"[agency] {POLICE}: referral-desk listen --ack accepted --person 'Officer "
                "Zhao' (the copy made by escalation)")
            show("[agency]", police, "listen", "--count", "1", "--timeout-s", "20", "--ack",
                 "accepted", "--person", "Officer Zhao")
        finally:
            police.cleanup()
            sup.cleanup()
        wait_log(qd, "escalation stopped", timeout_s=20)
        say(f"[desk]   {DESK}: the escalation steps and the police's receipts come back")
        show("[desk]  ", desk, "listen", "--count", "4", "--timeout-s", "30")
        wait_log(qd, "withdrawn undelivered", timeout_s=10)
        say(f"[{QD}] the police accepted first: {NIGHT}'s own copy, never collected, is "
            "withdrawn from its queue (state WITHDRAWN); the escalation stopped")

        rid = night[0]["referral_id"]
        say(f"[ops]    referral-trace {rid} at broker.shanghai: the events of all three "
            "brokers, gathered over the federation links")
        sock = os.path.join(sh.dir, "store", "admin.sock")
        r = subprocess.run([TRACE, "--socket", sock, "--operator", "duty-officer", rid],
                           capture_output=True, text=True, timeout=60)
        for line in r.stdout.splitlines():
            say(f"[ops]    {line}")
        if r.returncode != 0:
            raise RuntimeError(f"referral-trace failed: {r.stderr}")
        dot = subprocess.run([TRACE, "--socket", sock, "--dot", rid], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        out = os.path.join(os.environ.get("REFERRAL_DEMO_OUT", "."), "demo-trace.dot")
        with open(out, "w") as f:
            f.write(dot)
        png = ""
        if shutil.which("dot"):
            subprocess.run(["dot", "-Tpng", "-o", out[:-4] + ".png", out], check=True,
                           timeout=60)
            png = f" and {out[:-4]}.png"
        say(f"[ops]    referral-trace --dot: wrote {out}{png} (the path, escalation in red)")
        for b in (qd, hub, sh):
            rc = b.stop()
            say(f"[{b.id}] stopped with status {rc}")
        say("demo complete")
        return 0
    except Exception as e:  # noqa: BLE001 - show the brokers' logs on any failure
        say(f"demo failed: {e}")
        for b in (sh, hub, qd):
            say(f"--- {b.id} log ---\n{b.read_log()[-3000:]}")
        return 1
    finally:
        for d in (desk, league):
            if d is not None:
                d.cleanup()
        for b in (sh, hub, qd):
            b.cleanup()
        trust.cleanup()


if __name__ == "__main__":
    sys.exit(main())
