#!/usr/bin/env bash
# Starts or stops a TPM 2.0 simulator (swtpm) on 127.0.0.1 for imasnap's tests and tools.
#
#   scripts/swtpm.sh start DIR PORT   # fresh state in DIR; TPM on PORT, control on PORT+1
#   scripts/swtpm.sh stop DIR
#
# start wipes DIR, runs `swtpm socket --tpm2 ... --flags not-need-init,startup-clear`
# in the background (pid in DIR/swtpm.pid, log in DIR/swtpm.log), waits until it
# listens, and prints the TCTI to use: swtpm:host=127.0.0.1,port=PORT
# (for tpm2-tools: TPM2TOOLS_TCTI=...; for imasnap: --tpm ... or IMASNAP_SWTPM=...).
# The TPM is manufactured on first start with swtpm's default PCR banks
# (0.7: SHA-1, SHA-256, SHA-384, SHA-512); PCRs start as after TPM2_Startup(CLEAR).
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2

case $cmd in
start)
  [ $# -eq 3 ] || usage
  port=$3
  command -v swtpm >/dev/null || { echo "swtpm.sh: swtpm not installed (scripts/install-deps.sh)" >&2; exit 1; }
  if [ -f "$dir/swtpm.pid" ]; then "$0" stop "$dir"; fi
  rm -rf "$dir"
  mkdir -p "$dir"
  swtpm socket --tpm2 --tpmstate dir="$dir" \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear \
    --pid file="$dir/swtpm.pid" --log file="$dir/swtpm.log" --daemon
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "swtpm:host=127.0.0.1,port=$port"
      exit 0
    fi
    sleep 0.05
  done
  echo "swtpm.sh: swtpm did not listen on 127.0.0.1:$port; log:" >&2
  cat "$dir/swtpm.log" >&2 || true
  exit 1
  ;;
stop)
  if [ -f "$dir/swtpm.pid" ]; then
    pid=$(cat "$dir/swtpm.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    rm -f "$dir/swtpm.pid"
  fi
  ;;
*) usage ;;
esac
