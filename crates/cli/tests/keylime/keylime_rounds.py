"""Keylime's own IMA processing over a host's measurement list, round after round, as its
verifier does between polls: each round sends only the entries from the verifier's next
entry on (`ima_ml_entry`), and the verifier carries its running PCR value and entry count
in an AgentAttestState. Nothing of Keylime is reimplemented here.

  keylime_rounds.py POLICY ROUNDS_JSON

ROUNDS_JSON: [{"list": PATH, "pcr": SHA1_HEX}, ...]: each round's whole ASCII list (as
the host showed it then: the imasnap view, or an agent's response) and PCR 10 (sha1 bank)
read before it. Prints one JSON object; exit 0 when Keylime accepts every round.
"""

import json
import logging
import sys

logging.disable(logging.CRITICAL)  # Keylime warns about its missing /etc/keylime config

from keylime.agentstates import AgentAttestState  # noqa: E402
from keylime.common import algorithms  # noqa: E402
from keylime.ima import file_signatures, ima  # noqa: E402


def main() -> int:
    policy_path, rounds_path = sys.argv[1], sys.argv[2]
    with open(policy_path, encoding="utf-8") as f:
        raw = f.read()
    policy = ima.deserialize_runtime_policy(raw)
    ima.validate_runtime_policy(policy)
    with open(rounds_path, encoding="utf-8") as f:
        rounds = json.load(f)

    state = AgentAttestState("imasnap-view")
    keyrings = file_signatures.ImaKeyrings()
    keyrings.set_tenant_keyring(file_signatures.ImaKeyring.from_string(policy["verification-keys"] or ""))
    out = {"rounds": []}
    for r in rounds:
        with open(r["list"], encoding="utf-8") as f:
            lines = f.read().split("\n")
        start = state.get_next_ima_ml_entry()
        # What a Keylime agent sends for ima_ml_entry=start: the list from that entry on.
        sent = lines[start:]
        running, failure = ima.process_measurement_list(
            state, sent, policy, pcrval=r["pcr"], ima_keyrings=keyrings, boot_aggregates=None,
            hash_alg=algorithms.Hash.SHA1,
        )
        events = [{"id": e.event_id, "context": json.loads(e.context)} for e in failure.events]
        out["rounds"].append({
            "from": start,
            "entries": sum(1 for line in sent if line),
            "accepted": not failure,
            "next": state.get_next_ima_ml_entry(),
            "running_hash": running,
            "events": events,
        })
    out["accepted"] = all(r["accepted"] for r in out["rounds"])
    print(json.dumps(out, indent=1))
    return 0 if out["accepted"] else 1


if __name__ == "__main__":
    sys.exit(main())
