"""Integration: the operators' socket (docs/operations.md, "The admin
socket") through referralctl and raw AdminRequests, against a real
referrald: every command's JSON shape (golden files, times and ids
masked), actions recorded in the trace with the operator's name, a hold
that survives a restart, an expire that tells the sender, and who may not
reach the socket at all.

REFERRAL_UPDATE_GOLDEN=1 rewrites the golden files from what the broker
answers (review the diff before committing it)."""

import json
import os
import re
import stat
import subprocess
import sys
import time

import zmq

import harness as h
from harness import pb

DESK, POLICE, SCHOOL, HOSPITAL, NOBODY = ("sh.12355.desk", "qd.police", "qd.school",
                                          "qd.hospital", "qd.nobody")
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
OPERATOR = "ops.alice"


def sock_of(b):
    return os.path.join(b.dir, "store", "admin.sock")


def ctl(b, *args, operator=OPERATOR, as_json=True, check=True):
    """referralctl on b's admin socket; returns (exit code, parsed JSON or text)."""
    cmd = [h.REFERRALCTL, "--socket", sock_of(b), "--operator", operator]
    if as_json:
        cmd.append("--json")
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"referralctl {' '.join(args)} exited {r.returncode}: {r.stderr}")
    return r.returncode, (json.loads(r.stdout) if as_json and r.stdout.strip() else r.stdout), \
        r.stderr


def mask(o, key=None):
    """Times, ids, sizes and counters that differ per run, replaced."""
    if isinstance(o, dict):
        return {k: mask(v, k) for k, v in o.items()}
    if isinstance(o, list):
        return [mask(v, key) for v in o]
    if isinstance(o, str) and re.fullmatch(r"[0-9a-f]{32}", o):
        return "<id>"
    if isinstance(o, bool) or o is None:
        return o
    if isinstance(o, int) and key is not None and (
            key.endswith("_ms") or key.endswith("_bytes") or key.endswith("_ms_ago")
            or key in ("seq", "sessions")):
        return "<n>"
    if key == "version":
        return "<version>"
    return o


def golden(name, answer):
    """Compare the masked answer with golden/admin_NAME.json exactly."""
    path = os.path.join(GOLDEN, f"admin_{name}.json")
    text = json.dumps(mask(answer), indent=1, sort_keys=True) + "\n"
    # Arrays of plain values on one line: [1, 0, 0, 0, 0].
    text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]",
                  text)
    if os.environ.get("REFERRAL_UPDATE_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
        return
    with open(path) as f:
        want = f.read()
    assert text == want, f"admin {name} answered another shape than {path}:\n{text}"


def wait_for(what, fn, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def raw_admin(path, command, msg_id=b"", reason="", operator=OPERATOR, timeout_ms=3000,
              ctx=None):
    """One AdminRequest over a plain DEALER; the AdminReply or None."""
    ctx = ctx or zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    try:
        s.connect("ipc://" + path)
        s.send(pb.AdminRequest(version=h.V1, request_id=9, operator_name=operator,
                               command=command, id=msg_id, reason=reason).SerializeToString())
        if not s.poll(timeout_ms):
            return None
        r = pb.AdminReply()
        r.ParseFromString(s.recv())
        return r
    finally:
        s.close(0)


def submit(desk, recipient, urgency=pb.URGENCY_ROUTINE, **kw):
    env = h.make_envelope(DESK, recipient, urgency, **kw)
    r = desk.submit(env)
    assert r.code == pb.RESULT_OK, r
    return h.header_of(env)


def trace_events(client, referral_id):
    client.send(trace=pb.TraceQuery(request_id=77, referral_id=referral_id))
    r = client.recv_kind("trace").trace
    assert r.code == pb.RESULT_OK, r
    return list(r.events)


def notices_for(client, count, timeout_s=10):
    out = []
    for d in client.deliveries(count, timeout_s=timeout_s):
        assert d.WhichOneof("payload") == "notice"
        n = pb.Notice()
        n.ParseFromString(d.notice.notice)
        out.append(n)
    return out


def commands_answer_in_their_documented_shape():
    peer_port = h.free_port()   # a peer nobody runs: its link stays down
    with h.Broker(**{"peers__broker.demo": f"tcp://127.0.0.1:{peer_port}",
                     "federation__peer_listen": f"tcp://127.0.0.1:{h.free_port()}"}) as b:
        desk = h.Client(b, DESK)
        crisis = submit(desk, POLICE, pb.URGENCY_CRISIS)
        routine = submit(desk, SCHOOL)
        urgent = submit(desk, HOSPITAL, pb.URGENCY_URGENT)
        submit(desk, NOBODY, ttl_ms=1000)
        hospital = h.Client(b, HOSPITAL)
        hospital.credit(1)
        assert hospital.deliveries(1, ack=False)[0].message_id == urgent.message_id
        wait_for("the short-lived referral to expire",
                 lambda: ctl(b, "expired")[1]["count"] == 1)

        golden("status", ctl(b, "status")[1])
        golden("queues", ctl(b, "queues")[1])
        golden("oldest", ctl(b, "oldest")[1])
        golden("peers", ctl(b, "peers")[1])
        golden("undeliverable", ctl(b, "undeliverable")[1])
        golden("expired", ctl(b, "expired")[1])
        golden("show", ctl(b, "show", crisis.message_id.hex())[1])
        golden("hold", ctl(b, "hold", routine.message_id.hex(), "--reason", "school asked")[1])
        golden("show_held", ctl(b, "show", routine.message_id.hex())[1])
        golden("release", ctl(b, "release", routine.message_id.hex(), "--reason", "go")[1])
        golden("requeue", ctl(b, "requeue", urgent.message_id.hex(), "--reason", "stuck")[1])
        golden("expire", ctl(b, "expire", routine.message_id.hex(), "--reason", "moot")[1])

        # The human tables fit 80 columns and name what they count.
        for cmd in (["status"], ["queues"], ["oldest"], ["peers"], ["undeliverable"],
                    ["expired"], ["show", crisis.message_id.hex()]):
            rc, text, err = ctl(b, *cmd, as_json=False)
            assert rc == 0 and text.strip(), (cmd, err)
            assert all(len(line) <= 80 for line in text.splitlines()), (cmd, text)
        assert ctl(b, "queues", as_json=False)[1].startswith("RECIPIENT")
        assert "broker.demo" in ctl(b, "peers", as_json=False)[1]
        # Errors: an unknown message, a bad id, a missing reason.
        rc, out, err = ctl(b, "show", h.new_id().hex(), check=False)
        assert rc == 1 and "RESULT_UNKNOWN_MESSAGE" in err, (rc, err)
        assert ctl(b, "show", "xyz", check=False)[0] == 2
        assert ctl(b, "hold", crisis.message_id.hex(), check=False)[0] == 2
        b.stop()


def actions_are_traced_with_the_operator():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        m = submit(desk, SCHOOL)
        ctl(b, "hold", m.message_id.hex(), "--reason", "caller asked to wait",
            operator="ops.bob")
        ctl(b, "release", m.message_id.hex(), "--reason", "caller ready", operator="ops.carol")
        school = h.Client(b, SCHOOL)
        school.credit(1)
        school.deliveries(1, ack=False)
        ctl(b, "requeue", m.message_id.hex(), "--reason", "client wedged", operator="ops.dan")
        events = trace_events(desk, m.referral_id)
        ops = [e.detail for e in events if e.kind == pb.TRACE_EVENT_KIND_OPERATOR]
        assert ops == ["held by operator ops.bob: caller asked to wait",
                       "released by operator ops.carol: caller ready",
                       "requeued by operator ops.dan: client wedged"], ops
        assert any(e.kind == pb.TRACE_EVENT_KIND_REDELIVERED for e in events)
        log = b.read_log()
        assert re.search(r"held by operator msg=%s .*operator=ops.bob reason=\"caller asked to "
                         r"wait\"" % m.message_id.hex(), log), log[-2000:]
        # The admin trace command sees the same events.
        r = raw_admin(sock_of(b), "trace", m.referral_id)
        assert r is not None and r.code == pb.RESULT_OK, r
        assert "ops.carol" in r.json
        # A final message is refused clearly.
        school.credit(1)   # the first delivery's credit stays spent until it is settled
        again = school.deliveries(1, ack=True, timeout_s=10)
        assert again[0].message_id == m.message_id
        wait_for("the ack", lambda: ctl(b, "show", m.message_id.hex())[1]["message"]["state"]
                 == "delivered")
        for verb in ("hold", "release", "requeue", "expire"):
            rc, out, err = ctl(b, verb, m.message_id.hex(), "--reason", "late", check=False)
            assert rc == 1 and "already final (delivered)" in err, (verb, rc, err)


def hold_survives_a_restart_and_release_delivers_it():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        m = submit(desk, SCHOOL, pb.URGENCY_CRISIS)
        ctl(b, "hold", m.message_id.hex(), "--reason", "verify the callback number")
        desk.close()
        assert b.stop() == 0
        b.start()
        shown = ctl(b, "show", m.message_id.hex())[1]
        assert shown["message"]["is_held"] and shown["held"]["operator"] == OPERATOR, shown
        assert shown["held"]["reason"] == "verify the callback number"
        assert ctl(b, "queues")[1]["total"]["held"] == 1
        school = h.Client(b, SCHOOL)
        school.credit(5)
        try:
            school.recv_kind("delivery", timeout_s=1.0)
            raise AssertionError("a held message was delivered")
        except TimeoutError:
            pass
        ctl(b, "release", m.message_id.hex(), "--reason", "number checked")
        d = school.deliveries(1, timeout_s=10)[0]
        assert d.message_id == m.message_id


def hold_of_a_delivery_in_flight_returns_it_first():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        m = submit(desk, SCHOOL)
        school = h.Client(b, SCHOOL)
        school.credit(1)
        assert school.deliveries(1, ack=False)[0].message_id == m.message_id
        _, out, _ = ctl(b, "hold", m.message_id.hex(), "--reason", "wrong desk")
        assert out["before"] == "in_flight" and out["message"]["state"] == "queued"
        assert out["message"]["is_held"], out
        school.credit(5)
        try:
            school.recv_kind("delivery", timeout_s=1.0)
            raise AssertionError("a held message was delivered again")
        except TimeoutError:
            pass
        # The client's late acknowledgement of the earlier delivery counts.
        assert school.settle(m.message_id).code == pb.RESULT_OK
        shown = ctl(b, "show", m.message_id.hex())[1]
        assert shown["message"]["state"] == "delivered" and "held" not in shown, shown
        assert ctl(b, "queues")[1]["total"]["held"] == 0


def held_message_still_expires():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        m = submit(desk, SCHOOL, ttl_ms=1500)
        ctl(b, "hold", m.message_id.hex(), "--reason", "pause")
        desk.credit(5)
        n = notices_for(desk, 1)[0]
        assert n.kind == pb.NOTICE_KIND_UNDELIVERABLE and n.message_id == m.message_id, n
        shown = ctl(b, "show", m.message_id.hex())[1]
        assert shown["message"]["state"] == "undeliverable" and not shown["message"]["is_held"]
        assert ctl(b, "expired")[1]["messages"][0]["message_id"] == m.message_id.hex()


def expire_tells_the_sender():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        m = submit(desk, SCHOOL)
        _, out, _ = ctl(b, "expire", m.message_id.hex(), "--reason", "school closed today")
        assert out["before"] == "queued" and out["message"]["state"] == "undeliverable", out
        desk.credit(5)
        n = notices_for(desk, 1)[0]
        assert n.kind == pb.NOTICE_KIND_UNDELIVERABLE and n.code == pb.RESULT_UNDELIVERABLE
        assert "school closed today" in n.detail and "call the agency" in n.detail, n.detail
        assert desk.status(m.message_id).state == pb.MESSAGE_STATE_UNDELIVERABLE
        rows = ctl(b, "undeliverable")[1]["messages"]
        assert rows[0]["message_id"] == m.message_id.hex() and rows[0]["cause"] == "ended_early"
        kinds = [e.kind for e in trace_events(desk, m.referral_id)]
        assert pb.TRACE_EVENT_KIND_OPERATOR in kinds and pb.TRACE_EVENT_KIND_EXPIRED in kinds


def agency_client_cannot_reach_admin_commands():
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        m = submit(desk, SCHOOL)
        # An AdminRequest on the client socket is not a client frame.
        desk.send_raw(pb.AdminRequest(version=h.V1, request_id=1, operator_name="x",
                                      command="expire", id=m.message_id,
                                      reason="r").SerializeToString())
        err = desk.recv_kind("error", timeout_s=5).error
        assert err.code in (pb.RESULT_MALFORMED, pb.RESULT_INVALID_FIELD), err
        # A CURVE client on the admin socket never gets an answer.
        ctx = zmq.Context()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        who = b.trust.identity(DESK)
        s.curve_secretkey, s.curve_publickey = who.curve_secret, who.curve_public
        s.curve_serverkey = b.trust.identity(b.id).curve_public
        s.connect("ipc://" + sock_of(b))
        s.send(pb.AdminRequest(version=h.V1, request_id=2, operator_name="x", command="expire",
                               id=m.message_id, reason="r").SerializeToString())
        assert not s.poll(1500), "a CURVE client got an answer on the admin socket"
        s.close(0)
        ctx.term()
        assert ctl(b, "show", m.message_id.hex())[1]["message"]["state"] == "queued"


CHILD = """
import sys, zmq
sys.path[:0] = %r
import referral_pb2 as pb
ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.setsockopt(zmq.LINGER, 0)
s.connect("ipc://" + sys.argv[1])
s.send(pb.AdminRequest(version=pb.PROTOCOL_VERSION_1, request_id=1, operator_name="x",
                       command="status").SerializeToString())
sys.exit(1 if s.poll(1500) else 0)
"""


def admin_socket_is_the_brokers_users_alone():
    with h.Broker() as b:
        path = sock_of(b)
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode == 0o600, oct(mode)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        r = subprocess.run(nobody + [h.REFERRALCTL, "--socket", path, "status"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 3 and ("permission" in r.stderr.lower()), (r.returncode, r.stderr)
        # A raw connection from another uid gets no answer either (the store
        # directory and the socket file keep it out).
        r = subprocess.run(nobody + [sys.executable, "-c", CHILD % (sys.path,), path],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, ("another uid got an answer", r.stdout, r.stderr)
        assert raw_admin(path, "status").code == pb.RESULT_OK


if __name__ == "__main__":
    h.run([commands_answer_in_their_documented_shape, actions_are_traced_with_the_operator,
           hold_survives_a_restart_and_release_delivers_it,
           hold_of_a_delivery_in_flight_returns_it_first, held_message_still_expires,
           expire_tells_the_sender, agency_client_cannot_reach_admin_commands,
           admin_socket_is_the_brokers_users_alone])
