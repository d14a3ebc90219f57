"""libreferral installs (meson install), and a program that knows only
pkg-config builds against the installed copy and sends a referral to a real
broker."""

import glob
import os
import shutil
import subprocess
import tempfile

import harness as h

BUILD = os.environ["REFERRAL_BUILD_ROOT"]
SANITIZE = os.environ.get("REFERRAL_SANITIZE", "none")
EXAMPLE = os.path.join(os.environ["REFERRAL_SOURCE_ROOT"], "client-lib", "example", "send_one.c")


def installed_library_builds_and_runs_an_example():
    dest = tempfile.mkdtemp(prefix="referral-install-")
    try:
        r = subprocess.run(["meson", "install", "-C", BUILD, "--destdir", dest, "--no-rebuild",
                            "--quiet"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        pcs = glob.glob(os.path.join(dest, "**", "libreferral.pc"), recursive=True)
        assert pcs, "libreferral.pc was not installed"
        assert glob.glob(os.path.join(dest, "**", "include", "referral.h"), recursive=True)
        libs = glob.glob(os.path.join(dest, "**", "libreferral.so.0*"), recursive=True)
        assert libs, "no versioned shared library (soname libreferral.so.0)"
        env = dict(os.environ, PKG_CONFIG_PATH=os.path.dirname(pcs[0]),
                   PKG_CONFIG_SYSROOT_DIR=dest)
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libreferral"], env=env,
                               capture_output=True, text=True, check=True).stdout.split()
        exe = os.path.join(dest, "send_one")
        extra = [f"-fsanitize={SANITIZE}"] if SANITIZE not in ("", "none") else []
        r = subprocess.run(["cc", "-std=c11", "-Wall", "-Werror", *extra, EXAMPLE, *flags,
                            "-o", exe], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        with h.Broker() as b:
            t = b.trust
            state = os.path.join(dest, "state")
            run_env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(libs[0]))
            r = subprocess.run([exe, "sh.12355.desk", t.keydir, t.directory, t.root_pub(), b.id,
                                state, "qd.police", b.endpoint], env=run_env,
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr
            mid = r.stdout.strip()
            assert len(mid) == 32
            police = h.Client(b, "qd.police")
            police.credit(2)
            d = police.deliveries(1)[0]
            assert d.message_id.hex() == mid
    finally:
        shutil.rmtree(dest, ignore_errors=True)


if __name__ == "__main__":
    h.run([installed_library_builds_and_runs_an_example])
