//! Quote-anchored checkpoints under attack: honest bundles written by the real agent (kernel
//! model, soft TPM; RFC snapshot and staging trim), whose checkpoint claims, segment
//! files and ranges the fuzzer edits (index deltas, bit flips in the signed quote, the
//! signature and the PCR hints, dropped, swapped and duplicated checkpoints, a flipped
//! record byte). Each case is verified latest-segment and in parallel ranges.
//!
//! Asserted beyond "no panic": whatever verifies ends in the honest state (the same
//! checkpoint index and PCR values as the unedited bundle), and the unedited bundle
//! verifies in both modes.
#![no_main]

use imasnap_agent::{Agent, AgentConfig, Evidence as AgentEvidence, StagingFlavour};
use imasnap_kernel_model::{Config, Kernel};
use imasnap_log::Endian;
use imasnap_tpm::{AkPublic, Quote, SoftTpm};
use imasnap_verifier::dir::BundleDir;
use imasnap_verifier::{
    verify, verify_segmented, Evidence, Input, Mode, Options, SnapshotClaim, SnapshotEvidence, State, TpmQuote,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

#[derive(Arbitrary, Debug)]
enum Edit {
    Index { seg: u8, delta: i8 },
    FlipAttest { seg: u8, at: u16, bit: u8 },
    FlipSignature { seg: u8, at: u16, bit: u8 },
    FlipPcrHint { seg: u8, entry: u8, byte: u8 },
    Drop { seg: u8 },
    Swap { a: u8, b: u8 },
    Duplicate { from: u8, to: u8 },
    FlipRecord { seg: u8, at: u16, bit: u8 },
}

#[derive(Arbitrary, Debug)]
struct Plan {
    staging: bool,
    edits: Vec<Edit>,
}

struct Honest {
    banks: Vec<imasnap_log::HashAlgo>,
    pcr: u32,
    boot: imasnap_verifier::BootClaim,
    snaps: Vec<(SnapshotClaim, Vec<u8>)>,
    live: Vec<u8>,
    live_first: u64,
    quote: Quote,
    ak: AkPublic,
    nonce: Vec<u8>,
    /// The state full history reaches on the unedited bundle.
    full: Option<State>,
}

fn build(staging: bool) -> Honest {
    let tmp = tempfile::tempdir().unwrap();
    let mut k = Kernel::boot(Config::default(), SoftTpm::new(5)).unwrap();
    let cfg = if staging {
        AgentConfig::staging(tmp.path().join("state"), StagingFlavour::Trim)
    } else {
        AgentConfig::new(tmp.path().join("state"))
    };
    let mut n = 0u32;
    let mut measure = |k: &mut Kernel<SoftTpm>, count: u32| {
        for _ in 0..count {
            n += 1;
            k.measure_file(format!("/usr/bin/f{n}").as_bytes(), &[n as u8; 32]).unwrap();
        }
    };
    measure(&mut k, 20);
    let (mut a, _) = Agent::start(k, cfg).unwrap();
    for round in 0..4 {
        measure(a.kernel_mut(), 15 + round);
        a.snapshot_once().unwrap();
        measure(a.kernel_mut(), round % 2);
    }
    measure(a.kernel_mut(), 6);
    let nonce = vec![0x5a; 32];
    let (qf, ak) = imasnap_agent::attest(a.kernel_mut().tpm_mut(), 10, &nonce).unwrap();
    let out = tmp.path().join("bundle");
    a.write_bundle(&out, &AgentEvidence { quote: &qf, nonce: &nonce, ak: &ak }).unwrap();
    let b = BundleDir::open(&out).unwrap();
    let snaps = b
        .manifest
        .snapshots
        .iter()
        .map(|(f, c)| (c.clone(), std::fs::read(out.join("snapshots").join(f)).unwrap()))
        .collect();
    let mut h = Honest {
        banks: b.index.banks.clone(),
        pcr: b.index.pcr,
        boot: b.manifest.boot.clone(),
        snaps,
        live: std::fs::read(out.join("live.bin")).unwrap(),
        live_first: b.index.live_first_index,
        quote: b.quote.clone(),
        ak: b.shipped_ak.clone().unwrap(),
        nonce,
        full: None,
    };
    let o = verify(&Options::new(Mode::FullHistory), evidence(&h, &h.snaps), &tq(&h), &h.nonce, None);
    h.full = Some(o.state.expect("the honest bundle verifies"));
    h
}

fn tq(h: &Honest) -> TpmQuote<'_> {
    TpmQuote { quote: &h.quote, trusted_ak: &h.ak, claimed_ak: None }
}

fn evidence<'a>(h: &Honest, snaps: &'a [(SnapshotClaim, Vec<u8>)]) -> Evidence<'a> {
    Evidence {
        banks: h.banks.clone(),
        pcr: h.pcr,
        endian: Endian::Little,
        boot: Some(h.boot.clone()),
        snapshots: snaps
            .iter()
            .map(|(c, d)| SnapshotEvidence { claim: c.clone(), data: Some(Input::Bytes(d.as_slice())) })
            .collect(),
        // The live list is shared by every copy; it is not edited.
        live: Input::Reader(Box::new(std::io::Cursor::new(h.live.clone()))),
        live_first_index: h.live_first,
        data_from: None,
    }
}

fn flip(v: &mut [u8], at: u16, bit: u8) {
    if v.is_empty() {
        return;
    }
    let i = at as usize % v.len();
    v[i] ^= 1 << (bit % 8);
}

fn honest(staging: bool) -> &'static Honest {
    static RFC: OnceLock<Honest> = OnceLock::new();
    static STG: OnceLock<Honest> = OnceLock::new();
    if staging {
        STG.get_or_init(|| build(true))
    } else {
        RFC.get_or_init(|| build(false))
    }
}

fuzz_target!(|plan: Plan| {
    let h = honest(plan.staging);
    let full = h.full.as_ref().unwrap();
    let mut snaps = h.snaps.clone();
    let n = snaps.len();
    let pick = |i: u8| i as usize % n;
    for e in plan.edits.iter().take(4) {
        match *e {
            Edit::Index { seg, delta } => {
                if let Some(c) = snaps[pick(seg)].0.checkpoint.as_mut() {
                    c.index = c.index.saturating_add_signed(delta as i64);
                }
            }
            Edit::FlipAttest { seg, at, bit } => {
                if let Some(c) = snaps[pick(seg)].0.checkpoint.as_mut() {
                    flip(&mut c.quote.attest, at, bit);
                }
            }
            Edit::FlipSignature { seg, at, bit } => {
                if let Some(c) = snaps[pick(seg)].0.checkpoint.as_mut() {
                    flip(&mut c.quote.signature, at, bit);
                }
            }
            Edit::FlipPcrHint { seg, entry, byte } => {
                if let Some(c) = snaps[pick(seg)].0.checkpoint.as_mut() {
                    let m = c.quote.pcr_values.len();
                    if m > 0 {
                        let v = &mut c.quote.pcr_values[entry as usize % m].2;
                        let algo = v.algo();
                        let mut b = v.as_bytes().to_vec();
                        let i = byte as usize % b.len();
                        b[i] ^= 1;
                        *v = imasnap_log::PcrValue::from_hex(algo, &hex::encode(b)).unwrap();
                    }
                }
            }
            Edit::Drop { seg } => snaps[pick(seg)].0.checkpoint = None,
            Edit::Swap { a, b } => {
                let (a, b) = (pick(a), pick(b));
                let ca = snaps[a].0.checkpoint.take();
                let cb = std::mem::replace(&mut snaps[b].0.checkpoint, ca);
                snaps[a].0.checkpoint = cb;
            }
            Edit::Duplicate { from, to } => {
                let c = snaps[pick(from)].0.checkpoint.clone();
                snaps[pick(to)].0.checkpoint = c;
            }
            Edit::FlipRecord { seg, at, bit } => flip(&mut snaps[pick(seg)].1, at, bit),
        }
    }
    let q = tq(h);
    let latest = verify(&Options::new(Mode::LatestSegment), evidence(h, &snaps), &q, &h.nonce, None);
    if let Some(st) = &latest.state {
        assert_eq!(st.checkpoint, full.checkpoint, "latest verified at another index");
        assert_eq!(st.pcrs, full.pcrs, "latest verified to other PCRs");
    }
    let make = || evidence(h, &snaps);
    let seg = verify_segmented(&Options::new(Mode::FullHistory), &make, &q, &h.nonce, 2);
    if let Some(st) = &seg.state {
        assert!(seg.verdict.is_verified());
        assert_eq!(st.checkpoint, full.checkpoint, "segmented verified at another index");
        assert_eq!(st.pcrs, full.pcrs, "segmented verified to other PCRs");
    }
    if plan.edits.is_empty() {
        assert!(latest.verdict.is_verified(), "honest latest: {:?}", latest.verdict);
        assert!(seg.verdict.is_verified(), "honest segmented: {:?}", seg.verdict);
    }
});
