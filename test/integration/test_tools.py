"""referralctl and the other tools on their own (no broker): what they
write, and what they must never change.

keygen: without --force an existing key file is never changed (every path
is checked before anything is written), nothing half-written is left
behind, and with --force all four files are replaced together so that
ID.pub.json always names the keys on disk."""

import json
import os
import stat
import subprocess
import tempfile

import harness as h

EXTS = ["sign.pem", "seal.pem", "curve", "pub.json"]


def keygen(d, ident, *extra):
    return subprocess.run([h.REFERRALCTL, "keygen", "--id", ident, "--dir", d, *extra],
                          capture_output=True, text=True, timeout=30)


def snapshot(d):
    """Every file in d with its bytes and mode."""
    out = {}
    for name in sorted(os.listdir(d)):
        p = os.path.join(d, name)
        with open(p, "rb") as f:
            out[name] = (f.read(), stat.S_IMODE(os.stat(p).st_mode))
    return out


def summary_matches_curve_file(d, ident):
    with open(os.path.join(d, f"{ident}.pub.json")) as f:
        pub = json.load(f)
    with open(os.path.join(d, f"{ident}.curve")) as f:
        curve = f.read().split()
    return pub["id"] == ident and curve[0] == "public" and curve[1] == pub["curve_public"]


def keygen_never_overwrites_without_force():
    with tempfile.TemporaryDirectory() as d:
        r = keygen(d, "qd.police")
        assert r.returncode == 0, r.stderr
        first = snapshot(d)
        assert sorted(first) == sorted(f"qd.police.{e}" for e in EXTS), first.keys()
        for e in ("sign.pem", "seal.pem", "curve"):
            assert first[f"qd.police.{e}"][1] == 0o600, e
        assert summary_matches_curve_file(d, "qd.police")

        # Again without --force: refused, naming the file; nothing changes.
        r = keygen(d, "qd.police")
        assert r.returncode != 0 and "--force" in r.stderr, r
        assert "qd.police.sign.pem" in r.stderr, r.stderr
        assert snapshot(d) == first

        # Any one file existing is enough, whichever it is, and the
        # missing ones are not created.
        for keep in EXTS:
            with tempfile.TemporaryDirectory() as d2:
                only = os.path.join(d2, f"qd.police.{keep}")
                with open(only, "w") as f:
                    f.write("do not touch\n")
                r = keygen(d2, "qd.police")
                assert r.returncode != 0, (keep, r)
                assert os.listdir(d2) == [f"qd.police.{keep}"], (keep, os.listdir(d2))
                with open(only) as f:
                    assert f.read() == "do not touch\n", keep

        # With --force: all four replaced together, still consistent,
        # secrets still 0600, no temporary files left.
        r = keygen(d, "qd.police", "--force")
        assert r.returncode == 0, r.stderr
        second = snapshot(d)
        assert sorted(second) == sorted(first), second.keys()
        for name in first:
            assert second[name][0] != first[name][0], f"{name} was not replaced"
        for e in ("sign.pem", "seal.pem", "curve"):
            assert second[f"qd.police.{e}"][1] == 0o600, e
        assert summary_matches_curve_file(d, "qd.police")
        with open(os.path.join(d, "qd.police.pub.json")) as f:
            pub = json.load(f)
        assert pub["sign_public"] in r.stdout and pub["seal_public"] in r.stdout


def keygen_refuses_a_bad_id_and_a_missing_directory():
    with tempfile.TemporaryDirectory() as d:
        r = keygen(d, "Not An Id")
        assert r.returncode != 0 and "not a valid id" in r.stderr, r
        r = keygen(os.path.join(d, "missing"), "qd.police")
        assert r.returncode != 0 and "missing" in r.stderr, r
        assert os.listdir(d) == []


TESTS = [keygen_never_overwrites_without_force, keygen_refuses_a_bad_id_and_a_missing_directory]

if __name__ == "__main__":
    h.run(TESTS)
