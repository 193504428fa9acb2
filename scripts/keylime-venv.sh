#!/usr/bin/env bash
# Prints the python of a venv holding Keylime from PyPI (scripts/keylime/requirements.txt),
# creating it on first use. Tests run Keylime's own code with it (IMASNAP_KEYLIME_PYTHON).
#
#   scripts/keylime-venv.sh                 # /var/cache/imasnap/keylime-venv-<hash>/bin/python
#   IMASNAP_CACHE=~/.cache/imasnap scripts/keylime-venv.sh
#
# Idempotent: the venv's directory is named by a hash of the pinned requirements and the
# system python's version, so a change to either builds a new one next to the old; a
# complete venv is reused without touching the network. Built in a temporary directory
# and renamed, so an interrupted run leaves nothing that looks complete.
# Needs Debian's python3-venv and python3-gpg (Keylime imports `gpg`, which PyPI lacks:
# hence /usr/bin/python3 and --system-site-packages). scripts/install-deps.sh installs them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/keylime/requirements.txt"
py=/usr/bin/python3
cache="${IMASNAP_CACHE:-/var/cache/imasnap}"

key=$({ cat "$req"; "$py" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
venv="$cache/keylime-venv-$key"
check() { "$1/bin/python" -c 'import gpg, keylime.ima.ima, keylime.policy.create_runtime_policy' >/dev/null 2>&1; }

if [ -f "$venv/.complete" ] && check "$venv"; then
  echo "$venv/bin/python"
  exit 0
fi
"$py" -c 'import gpg, venv' 2>/dev/null || {
  echo "keylime-venv: $py lacks the gpg or venv module: apt-get install python3-gpg python3-venv (scripts/install-deps.sh)" >&2
  exit 1
}
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.keylime-venv-$key.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
"$py" -m venv --system-site-packages "$tmp"
# --no-deps: exactly the pinned set, nothing resolved at install time.
"$tmp/bin/python" -m pip install --disable-pip-version-check --no-input -q --no-deps -r "$req" >&2
check "$tmp" || { echo "keylime-venv: keylime does not import in the new venv" >&2; exit 1; }
touch "$tmp/.complete"
rm -rf "$venv"
mv "$tmp" "$venv"
trap - EXIT
echo "keylime-venv: $venv built in $(( $(date +%s) - t0 )) s" >&2
echo "$venv/bin/python"
