"""Shared helpers for the integration, fault and security suites.

Starts real referrald processes on 127.0.0.1 (never another address),
speaks the wire protocol of docs/protocol.md through pyzmq and the
generated referral_pb2, and cleans up every process it started, by PID.
Every wait is bounded: a test that waits forever is a failing test.

Environment (set by meson):
  REFERRALD     path of the referrald binary under test
  PYTHONPATH    includes the directory with the generated referral_pb2.py
"""

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import zmq

import referral_pb2 as pb

REFERRALD = os.environ.get("REFERRALD", "referrald")
V1 = pb.PROTOCOL_VERSION_1

_started = []          # Broker objects to stop at exit


def _cleanup():
    for b in list(_started):
        b.kill()


atexit.register(_cleanup)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def now_ms():
    return int(time.time() * 1000)


def new_id(t_ms=None):
    """A 16-byte time-ordered id (UUIDv7 layout), as docs/protocol.md says."""
    t = now_ms() if t_ms is None else t_ms
    b = bytearray(t.to_bytes(6, "big") + secrets.token_bytes(10))
    b[6] = 0x70 | (b[6] & 0x0F)
    b[8] = 0x80 | (b[8] & 0x3F)
    return bytes(b)


class Broker:
    """One referrald process with its own store directory and port."""

    def __init__(self, broker_id="broker.test", workdir=None, **settings):
        self.id = broker_id
        self.dir = workdir or tempfile.mkdtemp(prefix="referral-it-")
        self.owns_dir = workdir is None
        self.port = free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.settings = settings
        self.proc = None
        self.log_path = os.path.join(self.dir, "referrald.log")
        self.config_path = os.path.join(self.dir, "referrald.ini")
        self.write_config()

    def write_config(self):
        sections = {
            "broker": {"id": self.id, "listen": self.endpoint,
                       "data_dir": os.path.join(self.dir, "store"), "log_level": "info"},
            "limits": {}, "store": {"min_free_disk_bytes": "0"}, "delivery": {},
        }
        for key, value in self.settings.items():
            section, name = key.split("__", 1)
            sections[section][name] = str(value)
        with open(self.config_path, "w") as f:
            for section, values in sections.items():
                f.write(f"[{section}]\n")
                for k, v in values.items():
                    f.write(f"{k} = {v}\n")

    def start(self, timeout_s=15):
        """Start and wait until the log says it listens."""
        self.log = open(self.log_path, "ab")
        self.log_start = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen([REFERRALD, "--config", self.config_path],
                                     stdout=self.log, stderr=self.log)
        _started.append(self)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"referrald exited with {self.proc.returncode}:\n"
                                   + self.read_log())
            if "info main: started" in self.read_log()[self.log_start:]:
                return self
            time.sleep(0.05)
        raise RuntimeError("referrald did not start in time:\n" + self.read_log())

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, timeout_s=15):
        """SIGTERM by PID and wait; returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(timeout=timeout_s)
            raise RuntimeError("referrald did not stop on SIGTERM")
        finally:
            self._forget()
        return rc

    def kill(self):
        """kill -9 by PID, as a power cut would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=15)
        self._forget()

    def _forget(self):
        if self in _started:
            _started.remove(self)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None
        self.check_sanitizers()

    def check_sanitizers(self):
        """Fail the test if the broker reported a sanitizer finding."""
        log = self.read_log()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            if marker in log:
                at = log.index(marker)
                raise AssertionError("referrald sanitizer report:\n" + log[at - 200:at + 3000])

    def cleanup(self):
        self.kill()
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class Client:
    """A raw protocol client: a DEALER speaking ClientFrame/BrokerFrame."""

    def __init__(self, endpoint, agency=None, ctx=None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.request_id = 0
        self.pending = []       # frames received while waiting for something else
        self.unawaited = 0      # settle replies nobody waits for: dropped on arrival
        if agency is not None:
            self.hello(agency)

    def close(self):
        self.sock.close(0)

    def send_raw(self, data):
        self.sock.send(data)

    def send(self, **body):
        f = pb.ClientFrame(version=V1, **body)
        self.sock.send(f.SerializeToString())

    def recv(self, timeout_s=5.0):
        """The next BrokerFrame, or raise TimeoutError."""
        if self.pending:
            return self.pending.pop(0)
        if not self.sock.poll(int(timeout_s * 1000)):
            raise TimeoutError("no frame from broker")
        f = pb.BrokerFrame()
        f.ParseFromString(self.sock.recv())
        return f

    def recv_kind(self, kind, timeout_s=5.0):
        """The next frame whose body is kind; others are kept for later."""
        deadline = time.monotonic() + timeout_s
        skipped = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} frame from broker")
                if self.pending:
                    f = self.pending.pop(0)
                else:
                    if not self.sock.poll(int(left * 1000)):
                        raise TimeoutError(f"no {kind} frame from broker")
                    f = pb.BrokerFrame()
                    f.ParseFromString(self.sock.recv())
                body = f.WhichOneof("body")
                if body == kind:
                    return f
                if body == "settle_reply" and self.unawaited > 0:
                    self.unawaited -= 1
                    assert f.settle_reply.code == pb.RESULT_OK, f
                    continue
                skipped.append(f)
        finally:
            self.pending = skipped + self.pending

    def hello(self, agency):
        self.agency = agency
        self.send(hello=pb.Hello(agency_id=agency, client_name="harness"))
        f = self.recv_kind("welcome")
        assert f.welcome.agency_id == agency, f
        return f.welcome

    def submit(self, envelope, wait=True, timeout_s=10.0):
        self.request_id += 1
        rid = self.request_id
        self.send(submit=pb.Submit(request_id=rid, envelope=envelope))
        if not wait:
            return rid
        return self.wait_reply(rid, timeout_s)

    def wait_reply(self, request_id, timeout_s=10.0):
        deadline = time.monotonic() + timeout_s
        while True:
            f = self.recv_kind("submit_reply", max(0.01, deadline - time.monotonic()))
            if f.submit_reply.request_id == request_id:
                return f.submit_reply

    def credit(self, n):
        self.send(credit=pb.Credit(grant=n))

    def settle(self, message_id, verb=pb.SETTLE_VERB_ACK, delay_ms=0, reason="", wait=True):
        self.send(settle=pb.Settle(message_id=message_id, verb=verb, delay_ms=delay_ms,
                                   reason=reason))
        if wait:
            return self.recv_kind("settle_reply").settle_reply
        self.unawaited += 1
        return None

    def deliveries(self, count, timeout_s=10.0, ack=True):
        """Receive count deliveries (acking each when ack); returns them."""
        got = []
        deadline = time.monotonic() + timeout_s
        while len(got) < count:
            left = deadline - time.monotonic()
            f = self.recv_kind("delivery", max(0.01, left))
            got.append(f.delivery)
            if ack:
                self.settle(f.delivery.message_id, wait=False)
        return got

    def status(self, message_id):
        self.request_id += 1
        self.send(status=pb.StatusQuery(request_id=self.request_id, message_id=message_id))
        return self.recv_kind("status").status


def make_envelope(sender, recipient, urgency=pb.URGENCY_ROUTINE, body_size=256, ttl_ms=3600_000,
                  created_at_ms=None, message_id=None, hops=(), kind=pb.MESSAGE_KIND_REFERRAL,
                  body=None):
    """A well-formed envelope. The body is opaque random bytes and the
    signature a placeholder: these suites test storage and delivery; the
    security suite tests real signatures and seals."""
    created = now_ms() if created_at_ms is None else created_at_ms
    sealed = body if body is not None else secrets.token_bytes(body_size)
    h = pb.RoutingHeader(
        header_version=1, message_id=message_id or new_id(), referral_id=new_id(),
        attempt_id=new_id(), kind=kind, from_agency=sender, to_agency=recipient,
        urgency=urgency, created_at_ms=created, expires_at_ms=created + ttl_ms, hop_limit=4,
        suite=pb.CIPHER_SUITE_ED25519_X25519_AES256GCM, padded_size=len(sealed))
    return pb.Envelope(header=h.SerializeToString(), sealed_body=sealed,
                       signature=bytes(64), signer_key_id=bytes(16),
                       suite=pb.CIPHER_SUITE_ED25519_X25519_AES256GCM, hops=list(hops))


def header_of(envelope):
    h = pb.RoutingHeader()
    h.ParseFromString(envelope.header)
    return h


def run(tests):
    """Run test functions in order; print one line each; exit 1 on failure.
    With arguments, run only the tests of those names (meson registers each
    test function as its own test this way)."""
    if len(sys.argv) > 1:
        by_name = {t.__name__: t for t in tests}
        unknown = [n for n in sys.argv[1:] if n not in by_name]
        if unknown:
            print(f"no such test: {', '.join(unknown)}")
            sys.exit(2)
        tests = [by_name[n] for n in sys.argv[1:]]
    failed = 0
    for t in tests:
        start = time.monotonic()
        try:
            t()
            print(f"ok   {t.__name__} ({time.monotonic() - start:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure, go on
            failed += 1
            import traceback
            traceback.print_exc()
            print(f"FAIL {t.__name__}: {e}", flush=True)
    print(f"{len(tests) - failed} of {len(tests)} passed")
    sys.exit(1 if failed else 0)
