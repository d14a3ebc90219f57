"""A local demonstration of the referral federation, end to end, on 127.0.0.1.

A hotline desk in Shanghai refers a crisis to the Qingdao youth league
through one broker, using referral-desk (the command-line desk built on
libreferral): the referral is signed and its case file sealed so that only
the youth league can read it; the broker stores it durably (and keeps it
across a restart), delivers the crisis before routine work, and the youth
league's desk receives, opens and acknowledges it. The Shanghai desk sees
every receipt come back, and is told about a referral nobody collected.

It makes its own demo keys and directory (referralctl), starts its own
broker, stops it by PID, and leaves nothing running or on disk. Run it
through tools/demo.sh, which builds first.
"""

import json
import sys

import harness as h

DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
NOBODY = "qd.closed-office"


def say(text):
    print(text, flush=True)


def show(prefix, desk, *args):
    """Run referral-desk and print its output lines."""
    r = desk.run(*args, "--json")
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for e in events:
        if e["event"] == "accepted":
            say(f"{prefix} ACCEPTED by the broker (stored with fsync): message {e['message_id'][-10:]}")
        elif e["event"] == "referral":
            say(f"{prefix} received {e['urgency'].upper()} referral from {e['from']}, "
                f"opened the sealed case file: \"{e['narrative']}\"")
        elif e["event"] == "acknowledged":
            say(f"{prefix} acknowledged {e['message_id'][-10:]} as {e['level'].upper()}")
        elif e["event"] == "receipt":
            say(f"{prefix} receipt from {e['from']}: {e['level'].upper()} "
                f"(for message {e['in_reply_to'][-10:]}; signed by the agency)")
        elif e["event"] == "notice":
            say(f"{prefix} notice from broker {e['from']}: {e['detail']}")
    return events


def main():
    say("[setup]  referralctl keygen: a trust root, the broker and three agencies; "
        "referralctl directory sign")
    trust = h.Trust(brokers=("broker.demo",), agencies=[DESK, LEAGUE, NOBODY])
    broker = h.Broker("broker.demo", trust=trust, delivery__ack_timeout_ms=5000)
    desk = league = None
    try:
        broker.start()
        say(f"[broker] referrald started (pid {broker.proc.pid}) on {broker.endpoint}, "
            "CURVE on every connection")
        desk, league = h.Desk(broker, DESK), h.Desk(broker, LEAGUE)
        show("[desk]  ", desk, "send", "--to", LEAGUE, "--urgency", "routine", "--category",
             "growth_difficulty", "--narrative", "Truancy for three weeks; parents unreachable.")
        sent = show("[desk]  ", desk, "send", "--to", LEAGUE, "--urgency", "crisis",
                    "--category", "psychological_support", "--pseudonym", "caller-7", "--age",
                    "17", "--narrative", "Caller, 17, in Shibei says she has a plan to end her "
                    "life tonight; agreed to a call back.", "--action",
                    "call her back within 15 minutes; police informed")
        show("[desk]  ", desk, "send", "--to", NOBODY, "--urgency", "urgent", "--category",
             "protection", "--narrative", "Neighbour reports a child left alone.", "--ttl-s", "3")
        say(f"[desk]    (the urgent referral to {NOBODY} expires in 3 s: nobody collects it)")

        say("[broker] restarting (SIGTERM, then start): queued referrals must survive")
        assert broker.stop() == 0
        broker.start()

        say(f"[agency] {LEAGUE}: referral-desk listen --ack received --person 'Wang Li'")
        show("[agency]", league, "listen", "--count", "2", "--timeout-s", "15", "--ack",
             "received", "--person", "Wang Li")
        crisis = sent[0]["message_id"]
        league.run("ack", crisis, "--level", "accepted", "--person", "Wang Li")
        say(f"[agency] acknowledged {crisis[-10:]} as ACCEPTED_BY_AGENCY (Wang Li)")

        say(f"[desk]   {DESK}: referral-desk listen (receipts and notices)")
        show("[desk]  ", desk, "listen", "--count", "6", "--timeout-s", "20")
        state = desk.run("status", crisis).stdout.split()[1]
        say(f"[desk]   status of the crisis referral at the broker: {state}")
        say("[broker] stopping")
        rc = broker.stop()
        say(f"[broker] stopped with status {rc}; demo complete")
        return 0
    except Exception as e:  # noqa: BLE001 - show the broker log on any failure
        say(f"demo failed: {e}\n--- broker log ---\n{broker.read_log()[-4000:]}")
        return 1
    finally:
        for d in (desk, league):
            if d is not None:
                d.cleanup()
        broker.cleanup()
        trust.cleanup()


if __name__ == "__main__":
    sys.exit(main())
