#!/usr/bin/env bash
# The package test (run by scripts/test.sh): build the .deb, install it with dpkg into a
# scratch root, check what it holds, `systemd-analyze verify` its units, and start the
# installed binary under a NOTIFY_SOCKET this test reads: `agent run` (explicit model
# config) and `verifier run` must send READY=1 once listening and STOPPING=1 on SIGTERM.
#
#   packaging/test-deb.sh          # IMASNAP_BIN: a tpm2 binary to package (else built)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
pass=0
ok() { pass=$((pass + 1)); echo "test-deb: ok: $*"; }

deb="$("$here/build-deb.sh" "$work/out")"
[ -f "$deb" ] || fail "no package built"
ok "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

# Contents, as listed by the package itself.
list="$(dpkg-deb --contents "$deb" | awk '{print $NF}')"
for f in ./usr/bin/imasnap ./lib/systemd/system/imasnap-agent.service ./lib/systemd/system/imasnap-verifier.service \
  ./etc/imasnap/agent.toml ./etc/imasnap/verifier.toml ./usr/lib/sysusers.d/imasnap.conf \
  ./usr/share/man/man1/imasnap.1.gz ./usr/share/man/man1/imasnap-agent-run.1.gz \
  ./usr/share/man/man1/imasnap-verifier-run.1.gz ./usr/share/man/man1/imasnap-verifier-host-add.1.gz \
  ./usr/share/bash-completion/completions/imasnap ./usr/share/zsh/vendor-completions/_imasnap \
  ./usr/share/fish/vendor_completions.d/imasnap.fish ./usr/share/doc/imasnap/OPERATORS.md \
  ./usr/share/doc/imasnap/copyright; do
  grep -qxF "$f" <<<"$list" || fail "$f missing from the package"
done
[ "$(dpkg-deb -f "$deb" Package)" = imasnap ] || fail "Package field"
dpkg-deb -f "$deb" Depends | grep -c libtss2-esys >/dev/null || fail "Depends lacks libtss2-esys: $(dpkg-deb -f "$deb" Depends)"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -cx /etc/imasnap/agent.toml >/dev/null || fail "agent.toml is not a conffile"
ok "contents: binary, units, configs (conffiles), man pages, completions, docs; Depends: $(dpkg-deb -f "$deb" Depends)"

# Install into a scratch root. It has no other packages, hence --force-depends; the
# maintainer scripts run outside a chroot with DPKG_ROOT set (they honour it).
r="$work/root"
mkdir -p "$r/var/lib/dpkg/info" "$r/var/lib/dpkg/updates" "$r/var/log"
touch "$r/var/lib/dpkg/status" "$r/var/lib/dpkg/available"
dpkg --root="$r" --log="$r/var/log/dpkg.log" --force-depends --force-script-chrootless -i "$deb" >"$work/dpkg.log" 2>&1 \
  || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
dpkg --root="$r" -s imasnap | grep -c '^Status: install ok installed' >/dev/null || fail "not installed"
grep -q '^imasnap:' "$r/etc/passwd" || fail "postinst did not create the imasnap user in the scratch root"
ok "dpkg -i into a scratch root; user imasnap created there (systemd-sysusers --root)"

ibin="$r/usr/bin/imasnap"
v="$("$ibin" --version)"
[[ "$v" == "imasnap "* ]] || fail "--version: $v"
zcat "$r/usr/share/man/man1/imasnap-agent-run.1.gz" | grep -c '^\.TH' >/dev/null || fail "man page is not roff"
zcat "$r/usr/share/man/man1/imasnap-agent-run.1.gz" | grep -c 'config' >/dev/null || fail "man page lacks --config"
man -l "$r/usr/share/man/man1/imasnap-verifier-host-add.1.gz" 2>/dev/null | grep -c simulated >/dev/null \
  || zcat "$r/usr/share/man/man1/imasnap-verifier-host-add.1.gz" | grep -c simulated >/dev/null || fail "host add page lacks --simulated"
grep -q 'complete -F' "$r/usr/share/bash-completion/completions/imasnap" || fail "bash completion"
grep -q '#compdef imasnap' "$r/usr/share/zsh/vendor-completions/_imasnap" || fail "zsh completion"
grep -q 'complete -c imasnap' "$r/usr/share/fish/vendor_completions.d/imasnap.fish" || fail "fish completion"
bash -c "source '$r/usr/share/bash-completion/completions/imasnap'" || fail "bash completion does not load"
ok "installed: $v, $(ls "$r/usr/share/man/man1" | wc -l) man pages, bash/zsh/fish completions"

# The units, verified on the installed files without a running systemd: --root makes
# ExecStart's binary and every path resolve inside the scratch root, MANPATH lets the
# Documentation= check find the installed man pages. The scratch root gets a copy of this
# machine's own units (/usr/lib/systemd/system, ~1 MB) so that the default dependencies
# (sysinit.target, …) resolve. Allowed output: none; any warning or error fails.
mkdir -p "$r/usr/lib/systemd"
cp -a /lib/systemd/system "$r/usr/lib/systemd/"
for u in imasnap-agent imasnap-verifier; do
  out="$(MANPATH="$r/usr/share/man" SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root="$r" \
    "/lib/systemd/system/$u.service" 2>&1)" || { echo "$out" >&2; fail "systemd-analyze verify $u"; }
  [ -z "$out" ] || { echo "$out" >&2; fail "systemd-analyze verify $u printed warnings"; }
  grep -q '^Type=notify' "$r/lib/systemd/system/$u.service" || fail "$u is not Type=notify"
done
ok "systemd-analyze verify: both units clean"

# Readiness: start the installed binary under a notify socket this test reads.
pki="$work/pki"
"$ibin" verifier dev-pki --out "$pki" >/dev/null
cat >"$work/agent.toml" <<TOML
backend = "model"
tpm = "soft"
state_dir = "$work/agent-state"
listen = "127.0.0.1:0"
[tls]
cert = "$pki/agent.pem"
key = "$pki/agent.key"
ca = "$pki/ca.pem"
TOML
cat >"$work/verifier.toml" <<TOML
database = "$work/verifier.db"
listen = "127.0.0.1:0"
[tls]
cert = "$pki/verifier.pem"
key = "$pki/verifier.key"
ca = "$pki/ca.pem"
[agent_tls]
cert = "$pki/verifier.pem"
key = "$pki/verifier.key"
ca = "$pki/ca.pem"
TOML
python3 "$here/notify-check.py" "$work/agent-notify" "$ibin" agent run --config "$work/agent.toml" \
  || fail "agent run: readiness protocol"
ok "agent run: READY=1 after listening, STOPPING=1 on SIGTERM, exit 0 (socket path)"
python3 "$here/notify-check.py" "@imasnap-test-deb-$$" "$ibin" verifier run --config "$work/verifier.toml" \
  || fail "verifier run: readiness protocol"
ok "verifier run: READY=1 after listening, STOPPING=1 on SIGTERM, exit 0 (abstract socket)"

dpkg --root="$r" --log="$r/var/log/dpkg.log" --force-script-chrootless -r imasnap >/dev/null 2>&1 || fail "dpkg -r"
[ ! -e "$r/usr/bin/imasnap" ] || fail "binary left after removal"
[ -e "$r/etc/imasnap/agent.toml" ] || fail "a removed (not purged) package keeps its conffiles"
ok "dpkg -r: binary gone, conffiles kept"
echo "test-deb: $pass checks passed"
