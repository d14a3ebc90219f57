"""Shared helpers for the integration, fault and security suites.

Starts real referrald processes on 127.0.0.1 (never another address),
speaks the wire protocol of docs/protocol.md through pyzmq and the
generated referral_pb2, and cleans up every process it started, by PID.
Every wait is bounded: a test that waits forever is a failing test.

Everything runs with the real trust machinery: keys made by referralctl,
a directory signed by a test root, CURVE on every connection, envelopes
signed with Ed25519 and sealed (X25519 + HKDF-SHA256 + AES-256-GCM) exactly
as docs/protocol.md specifies, using Debian's python3-cryptography. The
keys are test fixtures made fresh in a temporary directory per test run.

Environment (set by meson):
  REFERRALD     path of the referrald binary under test
  REFERRALCTL   path of referralctl (keys and directory)
  PYTHONPATH    includes the directory with the generated referral_pb2.py
Optional:
  REFERRAL_WRAP words (shell quoting) put before every program of the build
                (REFERRAL_BUILD_ROOT) that a test starts: referrald, the
                tools, the C test agents; tools/valgrind.sh sets it to a
                valgrind command line. Python and system programs run as
                they are. Brokers are then stopped with SIGTERM at cleanup
                (not kill -9), so the wrapper reports at their exit.
"""

import atexit
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import hashlib
import json

import zmq
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import referral_pb2 as pb

REFERRALD = os.environ.get("REFERRALD", "referrald")
REFERRALCTL = os.environ.get("REFERRALCTL", "referralctl")
DESKTOOL = os.environ.get("REFERRAL_DESK", "referral-desk")
V1 = pb.PROTOCOL_VERSION_1

# The agencies every test directory lists (all served by the test broker).
AGENCIES = ["sh.12355.desk", "qd.youth-league", "qd.police", "qd.school", "qd.hospital",
            "qd.civil", "qd.procuratorate", "qd.nobody", "qd.closed-office"]
BUCKETS = [1024, 4096, 16384, 65536, 262144, 786432]

_started = []          # Broker objects to stop at exit

_WRAP = shlex.split(os.environ.get("REFERRAL_WRAP", ""))
if _WRAP:
    _BUILD_ROOT = os.path.realpath(os.environ.get("REFERRAL_BUILD_ROOT", "build")) + os.sep

    class _WrappedPopen(subprocess.Popen):
        """Popen (and so subprocess.run) with REFERRAL_WRAP before a
        program of the build, wherever a test starts it."""

        def __init__(self, args, *rest, **kw):
            # A program of the build is named by its path; a bare name
            # ("meson", "cc") is the system's, whatever the working folder.
            if (isinstance(args, (list, tuple)) and args and isinstance(args[0], str)
                    and os.sep in args[0]
                    and os.path.realpath(args[0]).startswith(_BUILD_ROOT)):
                args = [*_WRAP, *args]
            super().__init__(args, *rest, **kw)

    subprocess.Popen = _WrappedPopen


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


def sha256(b):
    return hashlib.sha256(b).digest()


def key_id(public):
    return sha256(public)[:16]


class Identity:
    """One identity's keys, loaded from the files referralctl keygen wrote."""

    def __init__(self, keydir, ident):
        self.id = ident
        with open(os.path.join(keydir, ident + ".pub.json")) as f:
            pub = json.load(f)
        self.sign_public = bytes.fromhex(pub["sign_public"])
        self.seal_public = bytes.fromhex(pub["seal_public"])
        self.curve_public = pub["curve_public"].encode()
        with open(os.path.join(keydir, ident + ".sign.pem"), "rb") as f:
            self.sign_key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(keydir, ident + ".seal.pem"), "rb") as f:
            self.seal_key = serialization.load_pem_private_key(f.read(), None)
        with open(os.path.join(keydir, ident + ".curve")) as f:
            lines = dict(line.split() for line in f if line.strip())
        self.curve_secret = lines["secret"].encode()


def ctl(*args, check=True):
    r = subprocess.run([REFERRALCTL, *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RuntimeError(f"referralctl {' '.join(args)} failed: {r.stderr}")
    return r


class Trust:
    """Test fixture keys and a signed directory, made fresh in a temp dir:
    a root, brokers, the AGENCIES, and 'qd.outsider' (keys, not listed)."""

    def __init__(self, brokers=("broker.test", "broker.demo"), agencies=AGENCIES, version=1,
                 valid_days=30, revoked=(), extra_agencies=(), homes=None, chains=None):
        self.dir = tempfile.mkdtemp(prefix="referral-trust-")
        self.keydir = os.path.join(self.dir, "keys")
        os.mkdir(self.keydir)
        self.brokers = list(brokers)
        self.agencies = list(agencies)
        self.homes = dict(homes or {})   # agency -> home broker (default: the first broker)
        # agency -> {"backup_agencies": [...], "supervisor_desk": id, "regional_centre": id}
        self.chains = dict(chains or {})
        for ident in ["root", "qd.outsider", *self.brokers, *self.agencies]:
            ctl("keygen", "--id", ident, "--dir", self.keydir)
        self.ids = {}
        self.directory = os.path.join(self.dir, "directory.signed")
        self.sign_directory(version, valid_days, revoked, extra_agencies)

    def identity(self, ident):
        if ident not in self.ids:
            self.ids[ident] = Identity(self.keydir, ident)
        return self.ids[ident]

    def source(self, version, valid_days, revoked=(), extra_agencies=()):
        home = self.brokers[0]
        agencies = [{"id": a, "kind": "hotline_desk" if "12355" in a else "other",
                     "region": "qingdao", "home_broker": getattr(self, "homes", {}).get(a, home),
                     "keys": f"keys/{a}.pub.json",
                     "emergency_contacts": [{"label": "police", "phone": "110"}],
                     **getattr(self, "chains", {}).get(a, {})}
                    for a in self.agencies]
        agencies += list(extra_agencies)
        brokers = [{"id": b, "endpoint": "tcp://127.0.0.1:0", "keys": f"keys/{b}.pub.json"}
                   for b in self.brokers]
        return {"version": version, "valid_days": valid_days, "agencies": agencies,
                "brokers": brokers, "revoked_key_ids": [k.hex() for k in revoked]}

    def sign_directory(self, version, valid_days=30, revoked=(), extra_agencies=(), out=None,
                       root_key=None, force=False, check=True):
        """Sign a directory source of version into out (default: the
        directory file). force: write even if out holds that version or a
        later one (referralctl refuses otherwise). Returns the result of
        referralctl when check is False."""
        src = os.path.join(self.dir, "directory.json")
        with open(src, "w") as f:
            json.dump(self.source(version, valid_days, revoked, extra_agencies), f)
        r = ctl("directory", "sign", "--in", src,
                "--root-key", root_key or os.path.join(self.keydir, "root.sign.pem"),
                "--out", out or self.directory, *(["--force"] if force else []), check=check)
        return (out or self.directory) if check else r

    def root_pub(self):
        return os.path.join(self.keydir, "root.pub.json")

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


_default_trust = None


def default_trust():
    global _default_trust
    if _default_trust is None:
        _default_trust = Trust()
        atexit.register(_default_trust.cleanup)
    return _default_trust


class Broker:
    """One referrald process with its own store directory and port."""

    def __init__(self, broker_id="broker.test", workdir=None, trust=None, extra_config="",
                 **settings):
        self.id = broker_id
        self.extra_config = extra_config   # raw INI text appended (e.g. [policy.NAME] sections)
        self.trust = trust or default_trust()
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
            "trust": {"directory": self.trust.directory, "trust_root": self.trust.root_pub(),
                      "key_dir": self.trust.keydir},
            "limits": {}, "store": {"min_free_disk_bytes": "0"}, "delivery": {},
        }
        for key, value in self.settings.items():
            section, name = key.split("__", 1)
            sections.setdefault(section, {})[name] = str(value)
        with open(self.config_path, "w") as f:
            for section, values in sections.items():
                f.write(f"[{section}]\n")
                for k, v in values.items():
                    f.write(f"{k} = {v}\n")
            f.write(self.extra_config)

    def start(self, timeout_s=15):
        """Start and wait until the log says it listens."""
        self.write_config()
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
            if self.settings.get("broker__log_level") in ("warn", "error") and self._listening():
                return self
            time.sleep(0.05)
        raise RuntimeError("referrald did not start in time:\n" + self.read_log())

    def _listening(self):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.2)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

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
        if _WRAP and self.proc is not None and self.proc.poll() is None:
            self.stop(timeout_s=120)   # not kill -9: the wrapper reports leaks at exit
        self.kill()
        if os.environ.get("REFERRAL_KEEP_LOGS"):   # debugging aid: keep store and log
            print(f"kept {self.id} in {self.dir}", flush=True)
            return
        if self.owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()


class Client:
    """A raw protocol client: a CURVE DEALER speaking ClientFrame/BrokerFrame.
    key_of: whose CURVE keys to connect with (default: the agency's)."""

    def __init__(self, broker, agency=None, ctx=None, key_of=None):
        self.ctx = ctx or zmq.Context.instance()
        self.broker = broker
        self.trust = broker.trust
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        who = self.trust.identity(key_of or agency or "qd.outsider")
        self.sock.curve_secretkey = who.curve_secret
        self.sock.curve_publickey = who.curve_public
        self.sock.curve_serverkey = self.trust.identity(broker.id).curve_public
        self.sock.connect(broker.endpoint)
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


# The largest plaintext that can be sealed (docs/protocol.md, section 4):
# the largest bucket less 16388, so that every length up to it has a bucket.
MAX_PLAINTEXT = BUCKETS[-1] - 16388


def _padding_length(gap):
    """n >= 1 with 1 + len(varint(n)) + n == gap, or None (gap 130, 16387)."""
    for k in (1, 2, 3):
        n = gap - 1 - k
        if n >= 1 and len(_varint(n)) == k:
            return n
    return None


def padded_size(length):
    """The bucket a plaintext of length bytes pads to; None if too large."""
    if length > MAX_PLAINTEXT:
        return None
    for bucket in BUCKETS:
        if bucket - length >= 4 and _padding_length(bucket - length) is not None:
            return bucket
    raise AssertionError(f"no bucket for {length} bytes")   # the rule has no holes


def pad_plaintext(plain):
    """Append BodyPlaintext.padding (field 15) to reach the bucket."""
    bucket = padded_size(len(plain))
    if bucket is None:
        raise ValueError(f"plaintext of {len(plain)} bytes is over {MAX_PLAINTEXT} bytes")
    n = _padding_length(bucket - len(plain))
    return plain + b"\x7a" + _varint(n) + bytes(n)


def _varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def seal(padded, header_digest, recipients):
    """SealedBody bytes: AES-256-GCM under a fresh content key, the key
    wrapped for each (agency_id, seal_public) recipient."""
    content_key = secrets.token_bytes(32)
    nonce = secrets.token_bytes(12)
    body = pb.SealedBody(nonce=nonce,
                         ciphertext=AESGCM(content_key).encrypt(nonce, padded, header_digest))
    for agency, public in recipients:
        eph = X25519PrivateKey.generate()
        eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
        shared = eph.exchange(X25519PublicKey.from_public_bytes(public))
        wrap_key = HKDF(hashes.SHA256(), 32, eph_pub + public, b"referral.v1 wrap").derive(shared)
        wnonce = secrets.token_bytes(12)
        body.keys.add(agency_id=agency, recipient_key_id=key_id(public), ephemeral_public=eph_pub,
                      nonce=wnonce,
                      wrapped_key=AESGCM(wrap_key).encrypt(wnonce, content_key, header_digest))
    return body.SerializeToString()


def sealed_size(padded_len, recipients):
    """The exact length seal() will produce (sizes are fixed per field)."""
    body = pb.SealedBody(nonce=bytes(12), ciphertext=bytes(padded_len + 16))
    for agency, public in recipients:
        body.keys.add(agency_id=agency, recipient_key_id=bytes(16), ephemeral_public=bytes(32),
                      nonce=bytes(12), wrapped_key=bytes(48))
    return len(body.SerializeToString())


def open_padded(sealed, digest, agency_id, seal_key, seal_public):
    """The padded plaintext bytes of a sealed body, opened as agency_id
    with its X25519 key pair; digest is SHA-256 of the header bytes."""
    body = pb.SealedBody()
    body.ParseFromString(sealed)
    for k in body.keys:
        if k.agency_id == agency_id:
            shared = seal_key.exchange(X25519PublicKey.from_public_bytes(k.ephemeral_public))
            wrap_key = HKDF(hashes.SHA256(), 32, k.ephemeral_public + seal_public,
                            b"referral.v1 wrap").derive(shared)
            content_key = AESGCM(wrap_key).decrypt(k.nonce, k.wrapped_key, digest)
            return AESGCM(content_key).decrypt(body.nonce, body.ciphertext, digest)
    raise KeyError(f"no wrapped key for {agency_id}")


def open_sealed(sealed, header_bytes, identity):
    """Open a sealed body as identity; returns the BodyPlaintext."""
    plain = open_padded(sealed, sha256(header_bytes), identity.id, identity.seal_key,
                        identity.seal_public)
    p = pb.BodyPlaintext()
    p.ParseFromString(plain)
    return p


def sign_envelope(identity, header, sealed):
    data = b"referral.v1 envelope\x00" + len(header).to_bytes(4, "big") + header + sha256(sealed)
    return identity.sign_key.sign(data)


def case_file(narrative="A 17-year-old caller in Qingdao at risk; school counsellor informed.",
              size=0):
    """A CaseFile for tests; size pads the narrative to about that many bytes."""
    if size > len(narrative):
        narrative += "." * (size - len(narrative))
    return pb.CaseFile(category=pb.CASE_CATEGORY_PSYCHOLOGICAL_SUPPORT,
                       subject=pb.Subject(pseudonym="caller-7", age_years=17,
                                          location="Qingdao, Shibei"),
                       risk=pb.RiskAssessment(level=pb.RISK_LEVEL_HIGH),
                       narrative=narrative, requested_action="contact within the hour")


def take_all(client, expected, timeout_s, verb=pb.SETTLE_VERB_ACK, quiet_s=None):
    """Deliveries to client until every message id in expected (bytes) has
    come, timeout_s has passed, or (with quiet_s) nothing came for quiet_s;
    each is settled with verb and its credit granted again (a long run
    outlasts any single grant). Returns {message id: times delivered}."""
    client.credit(1000)
    got = {}
    deadline = time.monotonic() + timeout_s
    while not expected.issubset(got) and time.monotonic() < deadline:
        try:
            d = client.recv_kind("delivery", timeout_s=quiet_s or 1.0).delivery
        except TimeoutError:
            if quiet_s is not None:
                break
            continue
        client.settle(d.message_id, wait=False, verb=verb)
        client.credit(1)
        got[d.message_id] = got.get(d.message_id, 0) + 1
    return got


def make_envelope(sender, recipient, urgency=pb.URGENCY_ROUTINE, body_size=256, ttl_ms=3600_000,
                  created_at_ms=None, message_id=None, hops=(), kind=pb.MESSAGE_KIND_REFERRAL,
                  case=None, trust=None, signer=None, backups=(), header_edit=None, body=None,
                  referral_id=None, in_reply_to=b"", receipt_level=0):
    """A signed, sealed envelope from sender to recipient (and backups),
    with a case file of about body_size bytes. signer: sign with another
    identity's key (attacks); header_edit(h): change the header before it is
    sealed and signed."""
    trust = trust or default_trust()
    created = now_ms() if created_at_ms is None else created_at_ms
    plain = (body or pb.BodyPlaintext(case_file=case or case_file(size=body_size))) \
        .SerializeToString()
    padded = pad_plaintext(plain)
    recipients = [(a, trust.identity(a).seal_public) for a in [recipient, *backups]]
    h = pb.RoutingHeader(
        header_version=1, message_id=message_id or new_id(), referral_id=referral_id or new_id(),
        attempt_id=new_id(), kind=kind, in_reply_to=in_reply_to, receipt_level=receipt_level,
        from_agency=sender, to_agency=recipient,
        backup_recipients=list(backups), urgency=urgency, created_at_ms=created,
        expires_at_ms=created + ttl_ms, hop_limit=4,
        suite=pb.CIPHER_SUITE_ED25519_X25519_AES256GCM,
        padded_size=sealed_size(len(padded), recipients))
    if header_edit is not None:
        header_edit(h)
    header = h.SerializeToString()
    sealed = seal(padded, sha256(header), recipients)
    signing = trust.identity(signer or sender)
    return pb.Envelope(header=header, sealed_body=sealed,
                       signature=sign_envelope(signing, header, sealed),
                       signer_key_id=key_id(signing.sign_public),
                       suite=pb.CIPHER_SUITE_ED25519_X25519_AES256GCM, hops=list(hops))


class Desk:
    """referral-desk as one agency, with its own state directory."""

    def __init__(self, broker, agency, endpoint=None):
        self.state = tempfile.mkdtemp(prefix="referral-desk-")
        t = broker.trust
        self.env = dict(os.environ, REFERRAL_AGENCY=agency, REFERRAL_KEYS=t.keydir,
                        REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                        REFERRAL_BROKER=broker.id, REFERRAL_ENDPOINT=endpoint or broker.endpoint,
                        REFERRAL_STATE=self.state)

    def run(self, *args, timeout=30, check=True):
        r = subprocess.run([DESKTOOL, "--timeout-ms", "5000", *args], env=self.env,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"referral-desk {' '.join(args)} exited {r.returncode}: "
                                 f"{r.stderr}")
        return r

    def popen(self, *args):
        return subprocess.Popen([DESKTOOL, "--timeout-ms", "60000", *args], env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def events(self, *args, **kw):
        r = self.run(*args, "--json", **kw)
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

    def cleanup(self):
        shutil.rmtree(self.state, ignore_errors=True)


def make_receipt(signer, to, in_reply_to, referral_id, level, agency_id=None, body_level=None,
                 trust=None):
    """A receipt signed by signer, addressed to `to`, answering message
    in_reply_to of referral referral_id (bytes), asserting level in its
    header and body_level (default: level) in its body; agency_id: the
    agency the body claims (default: the signer)."""
    r = pb.Receipt(referral_id=referral_id, message_id=in_reply_to,
                   level=body_level or level, at_ms=now_ms(), agency_id=agency_id or signer,
                   person="Wang Li")
    return make_envelope(signer, to, kind=pb.MESSAGE_KIND_RECEIPT,
                         body=pb.BodyPlaintext(receipt=r), referral_id=referral_id,
                         in_reply_to=in_reply_to, receipt_level=level, trust=trust)


def receipt_for(signer, referral, level, **kw):
    """make_receipt for the referral envelope `referral`, back to its sender."""
    rh = header_of(referral)
    return make_receipt(signer, kw.pop("to", rh.from_agency), rh.message_id, rh.referral_id,
                        level, **kw)


def header_of(envelope):
    h = pb.RoutingHeader()
    h.ParseFromString(envelope.header)
    return h


class Preload:
    """A fault shim (test/fault/) preloaded, with its settings, into every
    process started inside `with`: the environment is set on entry and put
    back on exit. The shim comes ahead of the ASan runtime in the preload
    order, hence verify_asan_link_order=0."""

    def __init__(self, shim, **settings):
        self.env = dict(settings, LD_PRELOAD=shim, ASAN_OPTIONS=":".join(
            x for x in (os.environ.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0") if x))
        self.saved = {}

    def __enter__(self):
        for k, v in self.env.items():
            self.saved[k] = os.environ.get(k)
            os.environ[k] = v
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
