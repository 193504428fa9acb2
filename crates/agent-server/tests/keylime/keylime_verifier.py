"""Plays Keylime's verifier against an imasnap agent's Keylime API, with Keylime's own code
(PyPI `keylime`, run from the venv of scripts/keylime-venv.sh). Nothing of Keylime is
reimplemented: the request is the one `cloud_verifier_tornado.invoke_get_quote` sends,
and each answer goes through `cloud_verifier_common.process_quote_response`, the
verifier's own check (quote signature and nonce, PCR 16 binding, IMA list replay against
PCR 10 and the runtime policy), with its incremental state (AgentAttestState, IMA
keyrings, next entry) carried from round to round.

  keylime_verifier.py --url https://localhost:PORT --ca CA --cert CERT --key KEY \
      --ak AK_TPM2B_B64_FILE --policy POLICY.json [--api 2.2] [--mask 0x400]

Reads one JSON command per line on stdin, answers one JSON line each:
  {"op": "round", "fresh": false, "tamper": null | "list" | "nonce", "mask": "0x400",
   "pcrs": {"0": ["<hex>"]}}
  {"op": "identity"}: the tenant's identity check (`Tenant.do_quote` and its
  `validate_tpm_quote`, which is `Tpm.check_quote` with the registrar's AK)
"fresh" starts over as a new verifier would (entry 0), with `tpm_policy` mask "mask" and
PCR values "pcrs"; "tamper" edits the answer in transit ("list": one digest of the last
list line) or checks it against another nonce.
"""

import argparse
import json
import logging
import ssl
import sys
import urllib.request

logging.disable(logging.CRITICAL)  # Keylime warns about its missing /etc/keylime config

from keylime import cloud_verifier_common  # noqa: E402
from keylime.agentstates import AgentAttestState  # noqa: E402
from keylime.common import algorithms  # noqa: E402
from keylime.ima import ima  # noqa: E402
from keylime.mba import mba  # noqa: E402
from keylime.tpm import tpm_util  # noqa: E402
from keylime.tpm.tpm_main import Tpm  # noqa: E402


def new_agent(a, ak_b64, mask, pcrs=None):
    # The fields of the verifier's agent row that process_quote_response reads.
    return {
        "agent_id": "imasnap-keylime-test",
        "ak_tpm": ak_b64,
        "tpm_policy": json.dumps({"mask": mask, **(pcrs or {})}),
        "accept_tpm_hash_algs": ["sha256"],
        "accept_tpm_encryption_algs": ["ecc", "rsa"],
        "accept_tpm_signing_algs": ["ecdsa", "rsassa"],
        "ima_sign_verification_keys": "",
        "supported_version": a.api,
        "attestation_count": 0,
        "public_key": "",
        "tpm_clockinfo": None,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    for k in ("--url", "--ca", "--cert", "--key", "--ak", "--policy"):
        ap.add_argument(k, required=True)
    ap.add_argument("--api", default="2.2")
    ap.add_argument("--mask", default="0x400")
    a = ap.parse_args()
    # What the verifier does at start (keylime/cmd/verifier.py), without the custom
    # policies its missing config file would name.
    mba.load_imports(skip_custom_policies=True)
    with open(a.ak, encoding="ascii") as f:
        ak_b64 = f.read().strip()
    with open(a.policy, encoding="utf-8") as f:
        runtime_policy = ima.deserialize_runtime_policy(f.read())
    ctx = ssl.create_default_context(cafile=a.ca)
    ctx.load_cert_chain(a.cert, a.key)

    agent = new_agent(a, ak_b64, a.mask)
    state = AgentAttestState(agent["agent_id"])
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "identity":
            nonce = tpm_util.random_password(20)
            with urllib.request.urlopen(f"{a.url}/v{a.api}/quotes/identity?nonce={nonce}", context=ctx) as r:
                res = json.loads(r.read())["results"]
            failure = Tpm().check_quote(
                AgentAttestState(agent["agent_id"]), nonce, res["pubkey"], res["quote"], ak_b64,
                hash_alg=algorithms.Hash(res["hash_alg"]), compressed=False,
            )
            out = {"accepted": not failure, "events": [{"id": e.event_id, "context": e.context} for e in failure.events]}
            print(json.dumps(out), flush=True)
            continue
        if cmd.get("fresh"):
            agent = new_agent(a, ak_b64, cmd.get("mask", a.mask), cmd.get("pcrs"))
            state = AgentAttestState(agent["agent_id"])
        # cloud_verifier_common.prepare_get_quote and invoke_get_quote
        agent["nonce"] = tpm_util.random_password(20)
        entry = state.get_next_ima_ml_entry()
        partial = "0" if not agent["public_key"] else "1"
        url = (
            f"{a.url}/v{agent['supported_version']}/quotes/integrity"
            f"?nonce={agent['nonce']}&mask={json.loads(agent['tpm_policy'])['mask']}"
            f"&partial={partial}&ima_ml_entry={entry}"
        )
        out = {"requested_entry": entry, "partial": partial}
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=60) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            out.update(accepted=False, http=e.code, error=e.read().decode(errors="replace"))
            print(json.dumps(out), flush=True)
            continue
        results = body["results"]
        ml = results.get("ima_measurement_list") or ""
        out["returned_entry"] = results.get("ima_measurement_list_entry")
        out["lines"] = len([x for x in ml.split("\n") if x])
        out["has_pubkey"] = "pubkey" in results
        tamper = cmd.get("tamper")
        if tamper == "list":
            lines = ml.split("\n")
            i = max(j for j, x in enumerate(lines) if x)
            f = lines[i].split(" ")
            algo, digest = f[3].split(":", 1)
            f[3] = algo + ":" + ("0" if digest[0] != "0" else "1") + digest[1:]
            lines[i] = " ".join(f)
            results["ima_measurement_list"] = "\n".join(lines)
        elif tamper == "nonce":
            agent["nonce"] = tpm_util.random_password(20)
        failure = cloud_verifier_common.process_quote_response(agent, None, runtime_policy, results, state)
        out["accepted"] = not failure
        out["events"] = [{"id": e.event_id, "context": e.context} for e in failure.events]
        out["next_entry"] = state.get_next_ima_ml_entry()
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
