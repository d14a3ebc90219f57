"""The documentation says what the code does: each claim of
docs/protocol.md and referral-desk --help that an integrator builds on is
checked here against a real referrald on 127.0.0.1, including the Python
example of docs/protocol.md section 7, extracted and run as written."""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import harness as h
from harness import pb

DESK = "sh.12355.desk"
LEAGUE = "qd.youth-league"
POLICE = "qd.police"
SCHOOL = "qd.school"
HOSPITAL = "qd.hospital"
CIVIL = "qd.civil"

SOURCE_ROOT = os.environ.get("REFERRAL_SOURCE_ROOT",
                             os.path.join(os.path.dirname(__file__), "..", ".."))
PROTOCOL_MD = os.path.join(SOURCE_ROOT, "docs", "protocol.md")


def section(text, title):
    """The text of the section of docs/protocol.md that starts with title."""
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:] if end < 0 else text[start:end]


def protocol_example_runs_as_written():
    """Section 7: the protoc command and the Python example, taken from the
    page, generate referral_pb2.py and receive, verify and settle a
    referral from a real broker, with nothing on PYTHONPATH."""
    with open(PROTOCOL_MD) as f:
        example = section(f.read(), "## 7. Example (Python)")
    blocks = re.findall(r"```(\w*)\n(.*?)```", example, re.S)
    command = [b for lang, b in blocks if lang == "" and b.startswith("protoc ")]
    code = [b for lang, b in blocks if lang == "python"]
    assert len(command) == 1 and len(code) == 1, blocks
    work = tempfile.mkdtemp(prefix="referral-example-")
    try:
        os.symlink(os.path.join(os.path.abspath(SOURCE_ROOT), "proto"),
                   os.path.join(work, "proto"))
        r = subprocess.run(command[0].strip(), shell=True, cwd=work, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and os.path.exists(os.path.join(work, "referral_pb2.py")), r
        with open(os.path.join(work, "example.py"), "w") as f:
            f.write(code[0])
        with h.Broker() as b:
            env = h.make_envelope(DESK, LEAGUE, pb.URGENCY_CRISIS, trust=b.trust)
            assert h.Client(b, DESK).submit(env).code == pb.RESULT_OK
            t = b.trust
            run_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            run_env.update(REFERRAL_AGENCY=LEAGUE, REFERRAL_KEYS=t.keydir,
                           REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                           REFERRAL_BROKER=b.id, REFERRAL_ENDPOINT=b.endpoint)
            r = subprocess.run([sys.executable, "example.py"], cwd=work, env=run_env,
                               capture_output=True, text=True, timeout=60)
            mid = h.header_of(env).message_id
            assert r.returncode == 0, (r.stdout, r.stderr)
            assert r.stdout.split() == ["stored", mid.hex(), "from", DESK, "RESULT_OK"], r
            assert h.Client(b, DESK).status(mid).state == pb.MESSAGE_STATE_DELIVERED
    finally:
        shutil.rmtree(work, ignore_errors=True)


def error_reply_names_the_request():
    """ErrorReply carries the request id whenever the frame could be read
    that far (section 2), and 0 when it could not."""
    with h.Broker() as b:
        c = h.Client(b, key_of=DESK)                  # no Hello yet
        c.send(status=pb.StatusQuery(request_id=41, message_id=h.new_id()))
        e = c.recv_kind("error").error
        assert (e.code, e.request_id) == (pb.RESULT_NOT_IDENTIFIED, 41), e
        c.send(trace=pb.TraceQuery(request_id=44, referral_id=h.new_id()))
        e = c.recv_kind("error").error
        assert (e.code, e.request_id) == (pb.RESULT_NOT_IDENTIFIED, 44), e
        c.hello(DESK)
        env = h.make_envelope(DESK, POLICE, trust=b.trust)
        c.send_raw(pb.ClientFrame(version=2, submit=pb.Submit(request_id=42, envelope=env))
                   .SerializeToString())
        e = c.recv_kind("error").error
        assert (e.code, e.request_id) == (pb.RESULT_VERSION_MISMATCH, 42), e
        c.send(trace=pb.TraceQuery(request_id=43, referral_id=b"\x01" * 15))
        e = c.recv_kind("error").error
        assert (e.code, e.request_id) == (pb.RESULT_INVALID_FIELD, 43), e
        c.send_raw(b"\xff\xff not a frame")
        e = c.recv_kind("error").error
        assert (e.code, e.request_id) == (pb.RESULT_MALFORMED, 0), e
        c.send(hello=pb.Hello(agency_id="Not An Id"))
        e = c.recv_kind("error").error
        assert (e.code, e.request_id) == (pb.RESULT_INVALID_FIELD, 0), e
        # A frame the broker can act on is answered in its own reply.
        assert c.submit(env).code == pb.RESULT_OK


def header_version_and_ids_are_checked_as_documented():
    """Section 4: another header_version is RESULT_VERSION_MISMATCH; ids are
    checked for their length only (a 16-byte id without the UUIDv7 layout
    is accepted, 15 bytes are not)."""
    with h.Broker() as b:
        c = h.Client(b, DESK)

        def version_2(hd):
            hd.header_version = 2

        r = c.submit(h.make_envelope(DESK, POLICE, header_edit=version_2, trust=b.trust))
        assert r.code == pb.RESULT_VERSION_MISMATCH and r.request_id == c.request_id, r
        plain = bytes(range(16))                    # no time, version or variant bits
        r = c.submit(h.make_envelope(DESK, POLICE, message_id=plain, referral_id=plain[::-1],
                                     trust=b.trust))
        assert r.code == pb.RESULT_OK, r
        r = c.submit(h.make_envelope(DESK, POLICE, message_id=b"\x07" * 15, trust=b.trust))
        assert r.code == pb.RESULT_INVALID_FIELD and "message_id" in r.detail, r


def settling_a_final_message_answers_as_documented():
    """Section 3: a repeated ACK is OK; any other settle of a final message
    is RESULT_UNKNOWN_MESSAGE and changes nothing."""
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        first = h.make_envelope(DESK, POLICE, trust=b.trust)
        second = h.make_envelope(DESK, POLICE, trust=b.trust)
        assert desk.submit(first).code == pb.RESULT_OK
        assert desk.submit(second).code == pb.RESULT_OK
        police = h.Client(b, POLICE)
        police.credit(2)
        got = police.deliveries(2, ack=False)
        a, r = (d.message_id for d in got)
        assert police.settle(a).code == pb.RESULT_OK
        again = police.settle(a)
        assert again.code == pb.RESULT_OK and again.detail == "already acknowledged", again
        for verb in (pb.SETTLE_VERB_REJECT, pb.SETTLE_VERB_NAK, pb.SETTLE_VERB_IN_PROGRESS):
            assert police.settle(a, verb, reason="late").code == pb.RESULT_UNKNOWN_MESSAGE
        assert police.settle(r, pb.SETTLE_VERB_REJECT, reason="not ours").code == pb.RESULT_OK
        for verb in (pb.SETTLE_VERB_ACK, pb.SETTLE_VERB_REJECT):
            assert police.settle(r, verb, reason="again").code == pb.RESULT_UNKNOWN_MESSAGE
        assert police.status(a).state == pb.MESSAGE_STATE_DELIVERED
        assert police.status(r).state == pb.MESSAGE_STATE_REJECTED


class ChainTrust(h.Trust):
    """The test directory, with an escalation chain for the youth league:
    backups school and an agency the directory does not list, supervisor
    desk the hospital, regional centre civil affairs."""

    def source(self, *args, **kw):
        src = super().source(*args, **kw)
        for e in src["agencies"]:
            if e["id"] == LEAGUE:
                e.update(backup_agencies=[SCHOOL, "qd.unlisted", POLICE],
                         supervisor_desk=HOSPITAL, regional_centre=CIVIL)
        return src


def desk_seals_for_the_escalation_chain():
    """referral-desk send (libreferral) wraps the content key for the
    recipient, the backups named and the recipient's escalation chain from
    the directory, each once; the header names only the backups named, and
    no other agency can open the body."""
    t = ChainTrust()
    try:
        with h.Broker(trust=t) as b:
            desk = h.Desk(b, DESK)
            try:
                sent = desk.events("send", "--to", LEAGUE, "--backup", POLICE, "--urgency",
                                   "crisis", "--category", "protection", "--narrative",
                                   "read along the chain")
                assert sent[0]["event"] == "accepted", sent
            finally:
                desk.cleanup()
            league = h.Client(b, LEAGUE)
            league.credit(1)
            d = league.deliveries(1)[0]
            hdr = h.header_of(d.envelope)
            assert list(hdr.backup_recipients) == [POLICE], hdr
            body = pb.SealedBody()
            body.ParseFromString(d.envelope.sealed_body)
            readers = [k.agency_id for k in body.keys]
            assert readers == [LEAGUE, POLICE, SCHOOL, HOSPITAL, CIVIL], readers
            for who in readers:
                plain = h.open_sealed(d.envelope.sealed_body, d.envelope.header, t.identity(who))
                assert plain.case_file.narrative == "read along the chain"
            try:
                h.open_sealed(d.envelope.sealed_body, d.envelope.header,
                              t.identity("qd.procuratorate"))
                raise AssertionError("an agency outside the chain opened the body")
            except KeyError:
                pass
    finally:
        t.cleanup()


def directory_show_json_lists_every_public_key():
    t = h.default_trust()
    r = h.ctl("directory", "show", "--file", t.directory, "--root", t.root_pub(), "--json")
    d = json.loads(r.stdout)
    brokers = {x["id"]: x for x in d["brokers"]}
    assert sorted(brokers) == sorted(t.brokers), brokers
    for ident, x in brokers.items():
        me = t.identity(ident)
        assert x["sign_public"] == me.sign_public.hex(), x
        assert x["sign_key_id"] == h.key_id(me.sign_public).hex(), x
        assert x["curve_public"] == me.curve_public.decode(), x
    for x in d["agencies"]:
        me = t.identity(x["id"])
        assert x["sign_key_id"] == h.key_id(me.sign_public).hex(), x
        assert x["seal_public"] == me.seal_public.hex(), x
        assert x["curve_public"] == me.curve_public.decode(), x
        assert "supervisor_desk" in x and "regional_centre" in x, x
    assert d["revoked_key_ids"] == [], d
    assert "secret" not in r.stdout


def desk_help_lists_its_json_and_refuses_what_it_does_not_know():
    """--help lists the keys --case accepts and the keys --json prints; a
    case file with another key is refused; a send that fails prints nothing
    on stdout (never "sent" or "ACCEPTED")."""
    r = subprocess.run([h.DESKTOOL, "--help"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r
    for key in ("to", "urgency", "category", "narrative", "requested_action", "case_number",
                "subject", "pseudonym", "age", "location", "ttl_s", "backups",
                "message_id", "referral_id", "in_reply_to", "from", "level", "detail"):
        assert re.search(r"\b%s\b" % key, r.stdout), key
    with h.Broker() as b:
        desk = h.Desk(b, DESK)
        try:
            case = os.path.join(desk.state, "case.json")
            with open(case, "w") as f:
                json.dump({"to": LEAGUE, "urgency": "crisis", "category": "protection",
                           "narative": "misspelt"}, f)
            r = desk.run("send", "--case", case, check=False)
            assert r.returncode == 2 and '"narative"' in r.stderr and not r.stdout, r
            with open(case, "w") as f:
                json.dump({"to": LEAGUE, "urgency": "crisis", "category": "protection",
                           "narrative": "x", "subject": {"name": "a real name"}}, f)
            r = desk.run("send", "--case", case, check=False)
            assert r.returncode == 2 and "subject.name" in r.stderr and not r.stdout, r
            r = desk.run("send", "--case", os.path.join(desk.state, "missing.json"), check=False)
            assert r.returncode == 2 and "missing.json" in r.stderr and not r.stdout, r
            r = desk.run("send", "--to", LEAGUE, "--urgency", "routine", "--category", "other",
                         "--narrative", "x" * 70000, check=False)
            assert r.returncode != 0 and r.stderr and not r.stdout, r
            r = desk.run("send", "--to", "qd.nowhere", "--urgency", "routine", "--category",
                         "other", "--narrative", "x", "--json", check=False)
            assert r.returncode != 0 and not r.stdout, r
        finally:
            desk.cleanup()


TESTS = [protocol_example_runs_as_written, error_reply_names_the_request,
         header_version_and_ids_are_checked_as_documented,
         settling_a_final_message_answers_as_documented, desk_seals_for_the_escalation_chain,
         directory_show_json_lists_every_public_key,
         desk_help_lists_its_json_and_refuses_what_it_does_not_know]

if __name__ == "__main__":
    h.run(TESTS)
