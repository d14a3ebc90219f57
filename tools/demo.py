"""A local demonstration of referrald, end to end, on 127.0.0.1.

A hotline desk in Shanghai refers cases to agencies in Qingdao through one
broker: a crisis overtakes routine work already queued, the agency
acknowledges, a referral nobody collects ends UNDELIVERABLE and the desk is
told, and the broker keeps everything across a restart. It starts its own
broker, stops it by PID, and leaves nothing running or on disk.

Every step uses the real trust machinery: keys made with referralctl, a
directory signed by a (demo) trust root, CURVE on every connection,
envelopes signed with Ed25519 and case files sealed for the recipient only
(docs/security.md). Run it through tools/demo.sh, which builds first.
"""

import sys
import time

import harness as h
from harness import pb

DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
NOBODY = "qd.closed-office"
URGENCY = {v: k.replace("URGENCY_", "").lower() for k, v in pb.Urgency.items()}


def say(text):
    print(text, flush=True)


def main():
    say("[setup]  referralctl keygen: a trust root, the broker, three agencies; "
        "referralctl directory sign")
    trust = h.Trust(brokers=("broker.demo",), agencies=[DESK, LEAGUE, NOBODY])
    broker = h.Broker("broker.demo", trust=trust, delivery__ack_timeout_ms=2000)
    try:
        broker.start()
        say(f"[broker] referrald started, pid {broker.proc.pid}, listening on {broker.endpoint}")
        desk = h.Client(broker, DESK)
        say(f"[desk]   {DESK} connected")

        routine = [h.make_envelope(DESK, LEAGUE, pb.URGENCY_ROUTINE, trust=trust)
                   for _ in range(3)]
        for env in routine:
            r = desk.submit(env)
            say(f"[desk]   routine referral {h.header_of(env).message_id.hex()[-10:]}: "
                f"{pb.ResultCode.Name(r.code)} ({r.detail})")
        case = h.case_file("Caller, 17, in Qingdao says she has a plan to end her life "
                           "tonight; at a friend's flat in Shibei; agreed to a call back.")
        crisis = h.make_envelope(DESK, LEAGUE, pb.URGENCY_CRISIS, trust=trust, case=case)
        r = desk.submit(crisis)
        say(f"[desk]   CRISIS referral  {h.header_of(crisis).message_id.hex()[-10:]}: "
            f"{pb.ResultCode.Name(r.code)} - stored with fsync before this answer")
        lost = h.make_envelope(DESK, NOBODY, pb.URGENCY_URGENT, ttl_ms=3000, trust=trust)
        desk.submit(lost)
        say(f"[desk]   urgent referral to {NOBODY} (expires in 3 s; nobody will collect it)")

        say("[broker] restarting (SIGTERM, then start): queued referrals must survive")
        desk.close()
        assert broker.stop() == 0
        broker.start()

        league = h.Client(broker, LEAGUE)
        league.credit(10)
        say(f"[agency] {LEAGUE} connected and granted credit 10")
        for d in league.deliveries(4, ack=False):
            plain = h.open_sealed(d.envelope.sealed_body, d.envelope.header,
                                  trust.identity(LEAGUE))
            say(f"[agency] received {d.message_id.hex()[-10:]} urgency="
                f"{URGENCY[d.urgency]} attempt={d.attempt}; opened the sealed case file: "
                f"\"{plain.case_file.narrative[:60]}...\"")
            s = league.settle(d.message_id)
            say(f"[agency] acknowledged: {pb.ResultCode.Name(s.code)}")

        desk = h.Client(broker, DESK)
        st = desk.status(h.header_of(crisis).message_id)
        say(f"[desk]   status of the crisis referral: {pb.MessageState.Name(st.state)}")
        desk.credit(5)
        say("[desk]   waiting for the broker's notice about the referral nobody collected...")
        d = desk.deliveries(1, timeout_s=15)[0]
        notice = pb.Notice()
        notice.ParseFromString(d.notice.notice)
        say(f"[desk]   notice from {notice.broker_id}: {pb.NoticeKind.Name(notice.kind)} "
            f"for {notice.about_agency}: {notice.detail}")
        say("[broker] stopping")
        rc = broker.stop()
        say(f"[broker] stopped with status {rc}; demo complete")
        return 0
    except Exception as e:  # noqa: BLE001 - show the broker log on any failure
        say(f"demo failed: {e}\n--- broker log ---\n{broker.read_log()}")
        return 1
    finally:
        broker.cleanup()
        trust.cleanup()


if __name__ == "__main__":
    sys.exit(main())
