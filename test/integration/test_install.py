"""A Debian-style install (meson install into a temporary DESTDIR): every
file lands where docs/operations.md says, the man pages render and say
what --help says, the systemd unit passes systemd-analyze verify and keeps
referrald's exit-status rules, and a program that knows only pkg-config
builds against the installed library and sends a referral to a real
broker."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import harness as h

BUILD = os.environ["REFERRAL_BUILD_ROOT"]
SOURCE = os.environ["REFERRAL_SOURCE_ROOT"]
SANITIZE = os.environ.get("REFERRAL_SANITIZE", "none")
EXAMPLE = os.path.join(SOURCE, "client-lib", "example", "send_one.c")
OPERATIONS = os.path.join(SOURCE, "docs", "operations.md")
SKIP = 77   # meson counts a test that exits 77 as skipped


def build_options():
    """The build's install directories, as meson resolved them."""
    r = subprocess.run(["meson", "introspect", BUILD, "--buildoptions"], capture_output=True,
                       text=True, check=True, timeout=60)
    return {o["name"]: o["value"] for o in json.loads(r.stdout)}


class Install:
    """meson install into a fresh DESTDIR; removed on exit."""

    def __enter__(self):
        self.dest = tempfile.mkdtemp(prefix="referral-install-")
        r = subprocess.run(["meson", "install", "-C", BUILD, "--destdir", self.dest,
                            "--no-rebuild", "--quiet"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        o = build_options()
        self.prefix = o["prefix"]

        def under(opt):   # an install dir, absolute (sysconfdir may be)
            return os.path.join(self.prefix, o[opt])
        self.bindir, self.libdir = under("bindir"), under("libdir")
        self.includedir, self.mandir = under("includedir"), under("mandir")
        self.sysconfdir, self.datadir = under("sysconfdir"), under("datadir")
        self.unitdir = o.get("systemdsystemunitdir") or os.path.join(self.prefix, "lib",
                                                                      "systemd", "system")
        self.sysusersdir = o.get("sysusersdir") or os.path.join(self.prefix, "lib",
                                                                "sysusers.d")
        self.has_man = o.get("man") != "disabled" and shutil.which("scdoc") is not None
        return self

    def path(self, installed):
        """Where an installed absolute path is inside DESTDIR."""
        return os.path.join(self.dest, installed.lstrip("/"))

    def __exit__(self, *exc):
        shutil.rmtree(self.dest, ignore_errors=True)


def expected_files(i):
    """Every file the install puts down (absolute, as installed), with the
    tail of its path that docs/operations.md names."""
    files = {
        os.path.join(i.bindir, "referrald"): "bin/referrald",
        os.path.join(i.bindir, "referralctl"): "bin/referralctl",
        os.path.join(i.bindir, "referral-desk"): "bin/referral-desk",
        os.path.join(i.bindir, "referral-trace"): "bin/referral-trace",
        os.path.join(i.libdir, "libreferral.so"): "libreferral.so",
        os.path.join(i.libdir, "libreferral.so.0"): "libreferral.so.0",
        os.path.join(i.libdir, "libreferral.so.0.1.0"): "libreferral.so.0.1.0",
        os.path.join(i.libdir, "pkgconfig", "libreferral.pc"): "pkgconfig/libreferral.pc",
        os.path.join(i.includedir, "referral.h"): "include/referral.h",
        os.path.join(i.unitdir, "referrald.service"): "lib/systemd/system/referrald.service",
        os.path.join(i.sysusersdir, "referral.conf"): "lib/sysusers.d/referral.conf",
        os.path.join(i.sysconfdir, "referral", "referrald.ini.example"):
            "referral/referrald.ini.example",
        os.path.join(i.datadir, "doc", "referral", "examples", "directory.example.json"):
            "share/doc/referral/examples/directory.example.json",
    }
    if i.has_man:
        files.update({
            os.path.join(i.mandir, "man8", "referrald.8"): "share/man/man8/referrald.8",
            os.path.join(i.mandir, "man8", "referralctl.8"): "share/man/man8/referralctl.8",
            os.path.join(i.mandir, "man1", "referral-desk.1"): "share/man/man1/referral-desk.1",
            os.path.join(i.mandir, "man1", "referral-trace.1"):
                "share/man/man1/referral-trace.1",
        })
    return files


def install_puts_every_file_where_the_docs_say():
    with open(OPERATIONS) as f:
        docs = f.read()
    with Install() as i:
        want = expected_files(i)
        got = set()
        for root, _, names in os.walk(i.dest):
            for n in names:
                got.add("/" + os.path.relpath(os.path.join(root, n), i.dest))
        missing = sorted(set(want) - got)
        extra = sorted(got - set(want))
        assert not missing, f"not installed: {missing}"
        assert not extra, f"installed but not documented here: {extra}"
        undocumented = sorted(tail for tail in want.values() if tail not in docs)
        assert not undocumented, f"docs/operations.md does not name: {undocumented}"
        # Nothing installed is a real configuration that a reinstall would overwrite.
        assert not any(p.endswith("/referrald.ini") for p in got)
        with open(i.path(os.path.join(i.sysconfdir, "referral", "referrald.ini.example"))) as f, \
             open(os.path.join(SOURCE, "etc", "referrald.example.ini")) as g:
            assert f.read() == g.read()
        # The library carries its soname; the binaries run from where they landed.
        lib = i.path(os.path.join(i.libdir, "libreferral.so.0.1.0"))
        dyn = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True,
                             check=True).stdout
        assert "Library soname: [libreferral.so.0]" in dyn, dyn
        assert os.readlink(i.path(os.path.join(i.libdir, "libreferral.so.0"))) == \
            "libreferral.so.0.1.0"
        env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(lib))
        for tool in ("referrald", "referralctl", "referral-desk", "referral-trace"):
            r = subprocess.run([i.path(os.path.join(i.bindir, tool)), "--help"], env=env,
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and "Usage" in r.stdout, (tool, r.stderr)
        example = i.path(os.path.join(i.sysconfdir, "referral", "referrald.ini.example"))
        r = subprocess.run([i.path(os.path.join(i.bindir, "referrald")), "--check-config",
                            example], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def help_options(tool_path, env):
    r = subprocess.run([tool_path, "--help"], env=env, capture_output=True, text=True,
                       timeout=30, check=True)
    return sorted(set(re.findall(r"--[a-z][a-z-]*[a-z]", r.stdout)))


def man_pages_render_and_name_every_option_of_help():
    with Install() as i:
        if not i.has_man:
            print("scdoc is missing (tools/install-deps.sh installs it): man pages not built")
            sys.exit(SKIP)
        lib = i.path(i.libdir)
        env = dict(os.environ, LD_LIBRARY_PATH=lib, MANWIDTH="80")
        for tool, section in (("referrald", 8), ("referralctl", 8), ("referral-desk", 1),
                              ("referral-trace", 1)):
            page = i.path(os.path.join(i.mandir, f"man{section}", f"{tool}.{section}"))
            # groff warns about anything it cannot typeset; none is allowed.
            r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0 and not r.stderr.strip(), (page, r.stderr)
            if shutil.which("man"):
                r = subprocess.run(["man", "-l", page], env=env, capture_output=True,
                                   text=True, timeout=30)
                assert r.returncode == 0, r.stderr
                text = r.stdout
            else:
                text = subprocess.run(["groff", "-man", "-Tutf8", page], capture_output=True,
                                      text=True, check=True).stdout
            text = re.sub(r".\x08", "", text)   # overstrike bold and underline
            text = re.sub(r"-\n\s+", "-", text)   # a line may break after a hyphen
            assert f"{tool} -" in text and "EXIT STATUS" in text, text[:400]
            # Each option --help lists is in the page: the two say the same.
            for opt in help_options(i.path(os.path.join(i.bindir, tool)), env):
                assert opt in text, f"{tool}({section}) does not mention {opt} from --help"
            # ... and so is each exit status --help lists.
            r = subprocess.run([i.path(os.path.join(i.bindir, tool)), "--help"], env=env,
                               capture_output=True, text=True, check=True)
            status = r.stdout[r.stdout.index("Exit status"):]
            for code in re.findall(r"(?:^|[\s;,])([0-9])(?=\s)", status):
                assert re.search(rf"^\s+{code}\s*$", text, re.M), \
                    f"{tool}({section}) does not list exit status {code}"


def unit_keys(text):
    keys = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def systemd_unit_verifies_and_restarts_only_what_a_restart_fixes():
    with Install() as i:
        unit = i.path(os.path.join(i.unitdir, "referrald.service"))
        with open(unit) as f:
            text = f.read()
        k = unit_keys(text)
        one = {name: v[-1] for name, v in k.items()}
        for name, value in (("ProtectSystem", "strict"), ("StateDirectory", "referral"),
                            ("ConfigurationDirectory", "referral"), ("User", "referral"),
                            ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                            ("Restart", "on-failure")):
            assert one.get(name) == value, f"{name}={one.get(name)}, want {value}"
        assert one["Type"] in ("simple", "notify")
        exe = one["ExecStart"].split()[0]
        assert exe == os.path.join(i.bindir, "referrald"), exe
        assert os.access(i.path(exe), os.X_OK)
        assert "--config %E/referral/referrald.ini" in one["ExecStart"]
        # referrald --help: 2 configuration and 5 trust never fix themselves
        # (no restart loop); 3 store and 4 transport may (restart).
        r = subprocess.run([i.path(exe), "--help"], capture_output=True, text=True, check=True)
        assert re.search(r"^\s+2\s+bad arguments or configuration", r.stdout, re.M)
        assert re.search(r"^\s+5\s+keys or the directory", r.stdout, re.M)
        assert re.search(r"^\s+3\s+the store .*restart recovers", r.stdout, re.M)
        assert sorted(one["RestartPreventExitStatus"].split()) == ["2", "5"]
        sysusers = i.path(os.path.join(i.sysusersdir, "referral.conf"))
        with open(sysusers) as f:
            assert re.search(r"^u\s+referral\s", f.read(), re.M)
        with open(OPERATIONS) as f:
            docs = f.read()
        assert "RestartPreventExitStatus=2 5" in docs
        if not shutil.which("systemd-analyze"):
            print("systemd-analyze is missing: unit checked by its keys only")
            return
        # verify checks that ExecStart exists: point it into DESTDIR.
        with tempfile.TemporaryDirectory() as d:
            copy = os.path.join(d, "referrald.service")
            with open(copy, "w") as f:
                f.write(text.replace(exe + " ", i.path(exe) + " "))
            r = subprocess.run(["systemd-analyze", "verify", "--man=no", copy],
                               capture_output=True, text=True, timeout=60)
            # verify exits 0 on unknown keys and bad values: any line is a finding.
            findings = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
            assert r.returncode == 0 and not findings, "\n".join(findings)
        if shutil.which("systemd-sysusers"):
            with tempfile.TemporaryDirectory() as root:
                r = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={root}", sysusers],
                                   capture_output=True, text=True, timeout=60)
                assert r.returncode == 0 and "referral" in r.stdout + r.stderr, r.stderr


def installed_library_builds_and_runs_an_example():
    with Install() as i:
        dest = i.dest
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


if __name__ == "__main__":
    h.run([install_puts_every_file_where_the_docs_say,
           man_pages_render_and_name_every_option_of_help,
           systemd_unit_verifies_and_restarts_only_what_a_restart_fixes,
           installed_library_builds_and_runs_an_example])
