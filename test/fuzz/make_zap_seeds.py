#!/usr/bin/env python3
"""Write the seed corpus of the zap-request fuzz target.

Usage: make_zap_seeds.py OUT_DIR (test/fuzz/corpus). Writes ZAP requests
(RFC 27: version, request id, domain, address, routing id, mechanism,
credentials) to OUT_DIR/zap-request/, each frame as fuzz_zap_request.c
reads it: a length byte, then that many bytes. The CURVE keys are those of
the target's fixed directory: 32 x 0xA1 for agency qd.police, 0xA2 for
qd.school (revoked), 0xB1 for broker broker.qingdao, 0xB2 for broker.old
(revoked). The first three seeds are admitted; the others are refused, each
for another reason, so that the fuzzer starts next to every branch.
"""
import os
import sys

POLICE, SCHOOL, BROKER, OLD_BROKER = (bytes([b] * 32) for b in (0xA1, 0xA2, 0xB1, 0xB2))
PEERS, ADMIN = b"referral.peers", b"referral.admin"


def frames(*parts):
    out = b""
    for p in parts:
        assert len(p) < 256
        out += bytes([len(p)]) + p
    return out


def curve(domain, key, version=b"1.0", mechanism=b"CURVE"):
    return frames(version, b"1", domain, b"127.0.0.1", b"", mechanism, key)


SEEDS = {
    "curve-agency": curve(b"", POLICE),
    "curve-broker": curve(PEERS, BROKER),
    "null-admin": frames(b"1.0", b"7", ADMIN, b"", b"", b"NULL"),
    "curve-agency-revoked": curve(b"", SCHOOL),
    "curve-agency-unknown": curve(b"", bytes(range(32))),
    "curve-broker-revoked": curve(PEERS, OLD_BROKER),
    "agency-key-on-peers": curve(PEERS, POLICE),
    "broker-key-on-clients": curve(b"", BROKER),
    "curve-on-admin": curve(ADMIN, POLICE),
    "null-admin-extra-frame": frames(b"1.0", b"8", ADMIN, b"", b"", b"NULL", b""),
    "null-on-clients": frames(b"1.0", b"2", b"", b"127.0.0.1", b"", b"NULL"),
    "plain-mechanism": frames(b"1.0", b"3", b"", b"127.0.0.1", b"", b"PLAIN", b"u", b"p"),
    "version-2": curve(b"", POLICE, version=b"2.0"),
    "short-key": curve(b"", POLICE[:31]),
    "one-frame": frames(b"1.0"),
    "two-frames": frames(b"1.0", b"4"),
    "nine-frames": curve(b"", POLICE) + frames(b"x", b"y"),
    "cut-short": curve(b"", POLICE)[:-5],
}


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_zap_seeds.py OUT_DIR")
    folder = os.path.join(sys.argv[1], "zap-request")
    os.makedirs(folder, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(SEEDS)} ZAP request seeds under {folder}")


if __name__ == "__main__":
    main()
