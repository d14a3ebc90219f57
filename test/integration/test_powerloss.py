"""Power loss, simulated (issue 15, item 3): the broker runs with the
powerloss shim (test/fault/powerloss.c), which keeps a copy of its store
file as it stood at the last completed sync. Each cycle sends referrals,
kills the broker with kill -9 at a random moment, puts the copy in the
store file's place (what a power cut would have left on the disk) and
restarts: every referral the broker answered ACCEPTED must still be
there. A negative control restores an older copy instead (the store just
after start), and the same check must report the losses: the checker can
see loss.
"""

import os
import random
import shutil
import subprocess
import sys
import time

import harness as h
from harness import pb

DESK = "sh.12355.desk"
POLICE = "qd.police"
SHIM = os.environ.get("REFERRAL_POWERLOSS", "")
CYCLES = int(os.environ.get("REFERRAL_POWERLOSS_CYCLES", "20"))


class PowerLoss(h.Preload):
    """The shim preloaded into brokers started inside `with`."""

    def __init__(self, broker):
        if not SHIM or not os.path.exists(SHIM):
            print(f"skipped: the powerloss shim is not built ({SHIM!r})", flush=True)
            sys.exit(77)
        store = os.path.join(broker.dir, "store")
        os.makedirs(store, exist_ok=True)
        self.file = os.path.join(os.path.realpath(store), "data.mdb")
        self.shadow = os.path.join(broker.dir, "data.mdb.synced")
        super().__init__(SHIM, POWERLOSS_FILE=self.file, POWERLOSS_SHADOW=self.shadow)

    def cut(self, copy=None):
        """After kill -9: the file as of its last sync (or of copy)."""
        shutil.copyfile(copy or self.shadow, self.file)


def stored_ids(b, expect):
    """The ids of expect still in the store, read by delivering them all
    (each settled, and its credit granted again: 100 cycles store more
    than one grant of credit)."""
    police = h.Client(b, POLICE)
    got = h.take_all(police, {bytes.fromhex(m) for m in expect}, 30 + len(expect) / 50,
                     quiet_s=3.0)
    police.close()
    return {m.hex() for m in got}


def run_cycles(b, pl, rng, cycles):
    accepted = set()
    for cycle in range(cycles):
        desk = h.Client(b, DESK)
        pending = {}
        for _ in range(rng.randint(5, 30)):
            e = h.make_envelope(DESK, POLICE, trust=b.trust, body_size=128)
            pending[desk.submit(e, wait=False)] = h.header_of(e).message_id.hex()
        stop_after = rng.randint(0, len(pending))
        answered = 0
        while pending and answered < stop_after:
            r = desk.recv_kind("submit_reply", timeout_s=30).submit_reply
            mid = pending.pop(r.request_id)
            if r.code == pb.RESULT_OK:
                accepted.add(mid)
            answered += 1
        b.kill()                          # the rest are in flight: never told OK
        desk.close()
        pl.cut()
        b.start()
    return accepted


def acknowledged_referrals_survive_power_loss():
    rng = random.Random(988)
    b = h.Broker()
    try:
        with PowerLoss(b) as pl:
            b.start()
            accepted = run_cycles(b, pl, rng, CYCLES)
        stored = stored_ids(b, accepted)
        lost = accepted - stored
        print(f"cycles={CYCLES} accepted={len(accepted)} present_after_power_cuts="
              f"{len(accepted & stored)} lost={len(lost)}", flush=True)
        assert accepted and not lost, f"lost {len(lost)} acknowledged referrals"
    finally:
        b.cleanup()


def the_checker_sees_loss_when_a_sync_is_undone():
    """Negative control: restore the store as it stood just after start,
    after acknowledged referrals were stored; the same check reports them
    lost."""
    rng = random.Random(12355)
    b = h.Broker()
    try:
        with PowerLoss(b) as pl:
            b.start()
            early = pl.shadow + ".early"
            shutil.copyfile(pl.shadow, early)
            accepted = run_cycles(b, pl, rng, 3)
            b.kill()
            pl.cut(early)                    # a disk that dropped acknowledged writes
            b.start()
        stored = stored_ids(b, accepted)
        lost = accepted - stored
        print(f"negative control: accepted={len(accepted)} lost={len(lost)}", flush=True)
        assert lost, "the checker did not see the loss it was shown"
    finally:
        b.cleanup()



AGENT = os.path.join(os.environ.get("REFERRAL_BUILD_ROOT", "build"), "test", "integration",
                     "lib_agent")


def the_agency_library_loses_nothing_across_power_cuts():
    """The agency's software (lib_agent on libreferral) runs with the shim
    on its state directory's store and is killed with kill -9 at random
    moments, its store put back as of its last sync each time: every
    referral the broker accepted still reaches the application (taken once
    or, when its confirmation was not yet synced, again: deduplicated by
    id). CYCLES // 2 kills (10 in CI, 50 with -Dproof=long), 12 referrals
    per kill."""
    if not SHIM or not os.path.exists(SHIM):
        print(f"skipped: the powerloss shim is not built ({SHIM!r})", flush=True)
        sys.exit(77)
    rng = random.Random(77)
    kills = max(10, CYCLES // 2)
    with h.Broker() as b:
        desk = h.Client(b, DESK)
        accepted = set()
        for _ in range(12 * kills):
            e = h.make_envelope(DESK, POLICE, trust=b.trust, body_size=128)
            assert desk.submit(e).code == pb.RESULT_OK
            accepted.add(h.header_of(e).message_id.hex())
        work = os.path.join(b.dir, "agency")
        os.makedirs(work)
        out = os.path.join(work, "taken.txt")
        lib_file = os.path.join(os.path.realpath(work), "lib", "data.mdb")
        shadow = os.path.join(work, "lib-data.mdb.synced")
        t = b.trust
        env = dict(os.environ, REFERRAL_AGENCY=POLICE, REFERRAL_KEYS=t.keydir,
                   REFERRAL_DIRECTORY=t.directory, REFERRAL_ROOT=t.root_pub(),
                   REFERRAL_BROKER=b.id, REFERRAL_ENDPOINT=b.endpoint,
                   REFERRAL_STATE=os.path.join(work, "lib"), LD_PRELOAD=SHIM,
                   POWERLOSS_FILE=lib_file, POWERLOSS_SHADOW=shadow,
                   ASAN_OPTIONS=":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""),
                                                     "verify_asan_link_order=0") if x))
        cuts = 0
        for _ in range(kills):
            p = subprocess.Popen([AGENT, "receive", out, "none", "1", "60000"], env=env,
                                 stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, 0.8))
            p.kill()
            p.wait(timeout=10)
            if os.path.exists(shadow):
                shutil.copyfile(shadow, lib_file)     # the power cut
                cuts += 1
        p = subprocess.Popen([AGENT, "receive", out, "none", "1", "3000"], env=env,
                             stderr=subprocess.DEVNULL)
        p.wait(timeout=120)
        with open(out) as f:
            taken = f.read().split()
        lost = accepted - set(taken)
        print(f"power cuts={cuts} accepted={len(accepted)} taken={len(set(taken))} "
              f"handed_again={len(taken) - len(set(taken))} lost={len(lost)}", flush=True)
        assert cuts >= 5, "the shim made no copies: nothing was tested"
        assert not lost, f"{len(lost)} accepted referrals never reached the application"


def the_federation_loses_nothing_across_power_cuts():
    """Shanghai, the hub and Qingdao each run with the shim. CYCLES times,
    while a Shanghai desk streams referrals for the Qingdao youth league,
    all three lose power at once (kill -9, each store file put back as of
    its last sync) and start again. At the end every referral Shanghai
    answered ACCEPTED reaches the league: a broker acknowledges a hop only
    after its own commit, so no cut loses what a peer was told is stored."""
    import test_federation as fed
    rng = random.Random(4410)
    f = fed.Federation(fed.trust())
    brokers = (f.sh, f.hub, f.qd)
    cuts = {b: PowerLoss(b) for b in brokers}

    def power_on():
        for b in brokers:
            with cuts[b]:
                b.start()

    accepted = set()
    try:
        power_on()
        for cycle in range(CYCLES):
            desk = h.Client(f.sh, fed.DESK)
            pending = {}
            for _ in range(rng.randint(5, 25)):
                e = h.make_envelope(fed.DESK, fed.LEAGUE, trust=f.trust, body_size=128)
                pending[desk.submit(e, wait=False)] = h.header_of(e).message_id.hex()
            deadline = time.monotonic() + rng.uniform(0.05, 0.6)
            while pending and time.monotonic() < deadline:
                try:
                    r = desk.recv_kind("submit_reply", timeout_s=0.05).submit_reply
                except TimeoutError:
                    continue
                mid = pending.pop(r.request_id)
                if r.code == pb.RESULT_OK:
                    accepted.add(mid)
            for b in brokers:                  # the power goes, everywhere at once
                b.kill()
            desk.close()
            for b in brokers:
                if os.path.exists(cuts[b].shadow):
                    cuts[b].cut()
            power_on()
        league = h.Client(f.qd, fed.LEAGUE)
        got = {m.hex() for m in h.take_all(league, {bytes.fromhex(m) for m in accepted},
                                           60 + len(accepted) / 50)}
        lost = accepted - got
        print(f"cycles={CYCLES} accepted={len(accepted)} delivered={len(accepted & got)} "
              f"lost={len(lost)}", flush=True)
        assert accepted and not lost, f"lost {len(lost)} acknowledged referrals"
    finally:
        for b in brokers:
            b.cleanup()
        f.trust.cleanup()

if __name__ == "__main__":
    h.run([acknowledged_referrals_survive_power_loss, the_checker_sees_loss_when_a_sync_is_undone,
           the_agency_library_loses_nothing_across_power_cuts,
           the_federation_loses_nothing_across_power_cuts])
