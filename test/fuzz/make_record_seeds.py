#!/usr/bin/env python3
"""Write the seed corpora of the stored-record fuzz targets.

Usage: make_record_seeds.py OUT_DIR (test/fuzz/corpus). Writes valid
records, built here from the layouts the decoders document, to
OUT_DIR/store-msg/ (broker/store.c, message records), OUT_DIR/escalation-
record/ (broker/escalate.c, version 1) and OUT_DIR/client-state/
(client-lib/state.c; the first byte picks the record kind as
fuzz_client_state.c reads it). Written independently of the C encoders, as
a second reading of the layouts. Every seed decodes: a seed that did not
would leave the fuzzer to find the valid records by itself.
"""
import os
import struct
import sys


def name(s):
    b = s.encode()
    return bytes([len(b)]) + b


def be64(v):
    return struct.pack(">Q", v)


def le(v, n):
    return v.to_bytes(n, "little")


T0 = 1800000000000


def store_msg(state, urgency, kind, recipient, sender, seq):
    rec = bytes([1, state, urgency, kind])
    rec += bytes([0x11] * 16) + bytes([0x22] * 16) + bytes([0x33] * 32)
    rec += struct.pack(">I", 2) + be64(seq)
    rec += be64(T0) + be64(T0 + 3600000) + be64(T0 + 1000) + be64(0)
    assert len(rec) == 112
    return rec + name(recipient) + name(sender)


def escalation(role, state, steps, chain, attempts, alerted, winner=0xFF):
    rec = bytes([1, role, state, 4, 1, 0, 0, winner, 3])
    rec += be64(T0) + be64(T0 + 86400000) + be64(T0 + 60000) + be64(T0 + 5000) + be64(0)
    rec += bytes([0x44] * 16) + bytes([0x55] * 16)
    rec += name("") + name("sh.12355.desk") + name("qd.police.shibei")
    rec += name("builtin-crisis") + be64(1)
    rec += be64(60000) + be64(300000) + be64(900000) + be64(30000)
    rec += bytes([2]) + be64(900000)                       # rounds, round_ms
    rec += bytes([len(steps)])
    for cond, action, delay in steps:
        rec += bytes([cond, action]) + be64(delay)
    rec += bytes([len(chain)]) + b"".join(name(c) for c in chain)
    rec += bytes([len(attempts)])
    for i, (agency, level, att_state) in enumerate(attempts):
        rec += name(agency) + bytes([0x60 + i] * 16) + bytes([0x70 + i] * 16)
        rec += bytes([level, att_state]) + be64(T0 + i)
    rec += bytes([len(alerted)]) + b"".join(name(a) for a in alerted)
    return rec


def seen(frm):
    b = frm.encode()
    return bytes([1]) + le(T0, 8) + bytes([0x12] * 16) + bytes([4, len(b)]) + b


def seen_legacy(frm):
    b = frm.encode()
    return le(T0, 8) + bytes([0x12] * 16) + b.ljust(65, b"\0") + bytes([4]) + bytes(6)


def sent(agencies):
    rec = bytes([1]) + le(T0, 8) + bytes([len(agencies)])
    return rec + b"".join(name(a) for a in agencies)


def inbox(kind, payload, copy=None):
    if copy is None:
        return bytes([2, kind, 4]) + le(1, 4) + bytes([0]) + payload
    orig, reason = copy[0].encode(), copy[1].encode()
    labels = bytes([0x13] * 16) + le(2, 4) + le(1, 4) + bytes([len(orig)]) + orig
    labels += le(len(reason), 2) + reason
    return bytes([2, kind, 4]) + le(1, 4) + bytes([1]) + labels + payload


def copy_ref():
    return bytes([1]) + le(T0, 8) + bytes([0x14] * 16) + bytes([0x15] * 16)


SEEDS = {
    "store-msg": {
        "queued-envelope": store_msg(1, 4, 1, "qd.police.shibei", "sh.12355.desk", 7),
        "notice-no-sender": store_msg(3, 1, 2, "sh.12355.desk", "", 8),
        "escalation-copy": store_msg(2, 2, 3, "qd.youth-league", "sh.12355.desk", 9),
    },
    "escalation-record": {
        "home-watching": escalation(
            1, 1, [(1, 1, 0), (2, 3, 0), (3, 4, 60000)],
            ["qd.youth-league", "qd.school.no7"],
            [("qd.police.shibei", 3, 1), ("qd.youth-league", 0, 1)], []),
        "home-won": escalation(
            1, 2, [(3, 3, 0), (4, 2, 0)], [],
            [("qd.police.shibei", 5, 1)], ["sh.duty-supervisor"], winner=0),
        "watchdog-alerted": escalation(2, 4, [(3, 4, 0)], [],
                                       [("qd.police.shibei", 0, 1)],
                                       ["sh.12355.desk", "sh.duty-supervisor"]),
    },
    "client-state": {
        "seen": bytes([0]) + seen("sh.12355.desk"),
        "seen-format-1": bytes([1]) + seen_legacy("sh.12355.desk"),
        "sent": bytes([2]) + sent(["qd.police.shibei", "qd.youth-league"]),
        "inbox-envelope": bytes([3]) + inbox(1, b"\x0a\x02\x08\x01"),
        "inbox-copy": bytes([3]) + inbox(1, b"\x0a\x02\x08\x01",
                                         ("qd.police.shibei", "not accepted in time")),
        "inbox-local-v1": bytes([3]) + bytes([1, 3, 2]) + le(0, 4) + b"link stalled",
        "copies": bytes([4]) + copy_ref(),
    },
}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_record_seeds.py OUT_DIR")
    n = 0
    for target, seeds in SEEDS.items():
        folder = os.path.join(sys.argv[1], target)
        os.makedirs(folder, exist_ok=True)
        for seed_name, data in seeds.items():
            with open(os.path.join(folder, seed_name), "wb") as f:
                f.write(data)
            n += 1
    print(f"wrote {n} record seeds under {sys.argv[1]}")


if __name__ == "__main__":
    main()
