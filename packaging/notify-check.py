#!/usr/bin/env python3
"""Runs a command with NOTIFY_SOCKET set to a datagram socket it reads (a path, or @name
for an abstract socket). Checks: READY=1 arrives, and only after the service printed
"listening on"; SIGTERM brings STOPPING=1 and a clean exit. Exit 0 when all hold."""
import os, signal, socket, subprocess, sys, time

def main():
    where, cmd = sys.argv[1], sys.argv[2:]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + where[1:] if where.startswith("@") else where)
    s.settimeout(60)
    env = dict(os.environ, NOTIFY_SOCKET=where)
    env.pop("JOURNAL_STREAM", None)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        msg = s.recv(4096).decode()
        print("received:", msg.replace("\n", " "))
        if "READY=1" not in msg.split("\n"):
            sys.exit(f"first message is not READY=1: {msg!r}")
        if f"MAINPID={p.pid}" not in msg.split("\n"):
            sys.exit(f"READY=1 without MAINPID={p.pid}: {msg!r}")
        # Ready means bound: the address is already printed.
        line = p.stdout.readline()
        if not line.startswith("listening on "):
            sys.exit(f"READY=1 but stdout says {line!r}")
        p.send_signal(signal.SIGTERM)
        msg = s.recv(4096).decode()
        print("received:", msg.replace("\n", " "))
        if "STOPPING=1" not in msg.split("\n"):
            sys.exit(f"after SIGTERM: {msg!r}")
        rc = p.wait(timeout=60)
        if rc != 0:
            sys.exit(f"exit code {rc}: {p.stderr.read()}")
        err = p.stderr.read()
        if "\x1b[" in err:
            sys.exit("ANSI colour in logs written to a pipe")
    except socket.timeout:
        p.kill()
        sys.exit(f"no notification within 60 s; stderr: {p.stderr.read()}")
    finally:
        if p.poll() is None:
            p.kill()
        if not where.startswith("@"):
            os.unlink(where)

main()
