"""Feeds an imasnap-made runtime policy to Keylime's own code (PyPI `keylime`, run from
the venv of scripts/keylime-venv.sh). Nothing of Keylime is reimplemented here: each step
is the library call the Keylime verifier or tenant makes.

  keylime_policy.py POLICY [--list ASCII_LIST --pcr HEX]

Prints one JSON object; exit 0 when every step accepts, 1 when Keylime rejects.
"""

import argparse
import json
import logging
import sys

logging.disable(logging.CRITICAL)  # Keylime warns about its missing /etc/keylime config

from keylime.common import algorithms  # noqa: E402
from keylime.ima import file_signatures, ima  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("policy")
    ap.add_argument("--list", help="ASCII measurement list (ascii_runtime_measurements)")
    ap.add_argument("--pcr", help="PCR 10 (sha1 bank) the list must reach, hex")
    a = ap.parse_args()
    with open(a.policy, "rb") as f:
        raw = f.read()
    out = {"keylime": ima.__name__, "steps": []}

    def step(name, fn):
        try:
            r = fn()
            out["steps"].append({"step": name, "ok": True})
            return r
        except Exception as e:  # a rejection, reported with Keylime's own message
            out["steps"].append({"step": name, "ok": False, "error": f"{type(e).__name__}: {e}"})
            return None

    # The tenant's check before upload (JSON, exclude regexes), then what the verifier
    # does when it stores a policy (deserialise, JSON-schema validation, db row).
    step("verify_runtime_policy", lambda: ima.verify_runtime_policy(raw, None, verify_sig=False))
    policy = step("deserialize_runtime_policy", lambda: ima.deserialize_runtime_policy(raw.decode()))
    step("validate_runtime_policy", lambda: ima.validate_runtime_policy(policy))
    step("runtime_policy_db_contents", lambda: ima.runtime_policy_db_contents("imasnap", raw.decode()))
    keyring = step(
        "ImaKeyring.from_string", lambda: file_signatures.ImaKeyring.from_string(policy["verification-keys"] or "")
    )

    if a.list and policy is not None:
        with open(a.list, encoding="utf-8") as f:
            lines = f.read().split("\n")
        keyrings = file_signatures.ImaKeyrings()
        keyrings.set_tenant_keyring(keyring)
        # As the verifier calls it (tpm_main.Tpm.__check_ima), without incremental state.
        running, failure = ima.process_measurement_list(
            None, lines, policy, pcrval=a.pcr, ima_keyrings=keyrings, boot_aggregates=None,
            hash_alg=algorithms.Hash.SHA1,
        )
        events = [{"id": e.event_id, "context": json.loads(e.context)} for e in failure.events]
        out["measurement_list"] = {"running_hash": running, "failed": bool(failure), "events": events}
        out["steps"].append({"step": "process_measurement_list", "ok": not failure})

    out["accepted"] = all(s["ok"] for s in out["steps"])
    print(json.dumps(out, indent=1))
    return 0 if out["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
