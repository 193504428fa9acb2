//! The real TPM 2.0 back end, through `tss-esapi` (the TSS2 Enhanced System API).
//!
//! One [`EsapiTpm`] owns one ESYS context on one TCTI (`swtpm:host=…,port=…`,
//! `device:/dev/tpmrm0`, `tabrmd`, `mssim:…`) and one loaded attestation key.
//! Every transient object it creates is flushed: the parent of a loaded AK right
//! after the load, the AK when the `EsapiTpm` is dropped, helper keys after their
//! one command. swtpm and `/dev/tpm0` have no resource manager, so a leaked
//! handle would stay until the TPM restarts (libtpms holds only 3 objects).
//!
//! Authorisation is the empty password (`TPM_RS_PW`), except for the EK's policy
//! session in credential activation, which is flushed after its one command.

use crate::attest::ClockInfo;
use crate::public::{attrs, AkPublic, EccCurve, PublicArea, PublicKeyParams};
use crate::quote::{verify_quote, Quote};
use crate::selection::PcrSelection;
use crate::signature::{SigAlg, SigScheme};
use crate::wire::{put_tpm2b, Reader};
use crate::{PcrBanks, Tpm, TpmError, MAX_NONCE, NUM_PCRS};
use imasnap_log::{HashAlgo, PcrValue};
use std::path::Path;
use std::str::FromStr as _;
use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PcrHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    CapabilityData, Data, Digest, DigestValues, PcrSelectionList, Private, Public, SignatureScheme,
};
use tss_esapi::traits::{Marshall as _, UnMarshall as _};
use tss_esapi::tss2_esys::{TPML_PCR_SELECTION, TPMS_PCR_SELECTION};
use tss_esapi::{Context, TctiNameConf};

// The endorsement key and credential activation (AK enrolment).
mod ek;

/// TPM2_PCR_Read returns at most 8 digests per call (TPML_DIGEST holds 8).
const PCRS_PER_READ: usize = 8;
/// How often a multi-command PCR read or a quote is retried when an extend slipped in.
pub const MAX_RACE_RETRIES: usize = 16;
/// TPM_RH_OWNER / TPM_RH_ENDORSEMENT, for Qualified Names of primaries.
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000b;
/// First transient handle (TPM_HT_TRANSIENT << 24).
const TRANSIENT_FIRST: u32 = 0x8000_0000;

/// Key type and signing scheme of an attestation key. All use SHA-256 as name and
/// scheme hash, as `tpm2_createak` does by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AkAlg {
    /// ECC NIST P-256, ECDSA-SHA256. Fast to create; the default.
    EccP256,
    /// RSA-2048, RSASSA-PKCS1-v1_5-SHA256.
    Rsa2048,
    /// RSA-2048, RSA-PSS-SHA256.
    Rsa2048Pss,
}

/// Hierarchy the AK (or the parent it is created under) belongs to.
///
/// Quotes and clock reads signed by keys of the owner hierarchy carry *obfuscated*
/// resetCount, restartCount and firmwareVersion (TPM 2.0 Part 3, FillInAttestInfo),
/// so boot identity from quotes needs an endorsement AK. [`EsapiTpm::clock_info`] is
/// always unobfuscated (it signs with an endorsement-hierarchy helper key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AkHierarchy {
    Endorsement,
    Owner,
}

impl AkHierarchy {
    fn tss(self) -> Hierarchy {
        match self {
            Self::Endorsement => Hierarchy::Endorsement,
            Self::Owner => Hierarchy::Owner,
        }
    }
    fn handle(self) -> u32 {
        match self {
            Self::Endorsement => TPM_RH_ENDORSEMENT,
            Self::Owner => TPM_RH_OWNER,
        }
    }
    fn code(self) -> u8 {
        match self {
            Self::Endorsement => 0,
            Self::Owner => 1,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        [Self::Endorsement, Self::Owner].into_iter().find(|h| h.code() == c)
    }
}

/// Where the AK of an [`EsapiTpm`] comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AkSource {
    /// TPM2_CreatePrimary from a fixed template: the same key every time on the same
    /// TPM (it is derived from the hierarchy seed), so nothing needs to be stored.
    Primary(AkAlg, AkHierarchy),
    /// TPM2_Create of a fresh random key under a storage primary (ECC P-256 SRK
    /// template) of the hierarchy; save it with [`EsapiTpm::save_ak`].
    Create(AkAlg, AkHierarchy),
    /// A key file written by [`EsapiTpm::save_ak`].
    File(std::path::PathBuf),
}

impl Default for AkSource {
    fn default() -> Self {
        Self::Primary(AkAlg::EccP256, AkHierarchy::Endorsement)
    }
}

/// The AK template (unique empty): restricted signing, fixedTPM/fixedParent,
/// sensitiveDataOrigin, userWithAuth (what `tpm2_createak` builds), SHA-256 names.
pub fn ak_template(alg: AkAlg) -> PublicArea {
    let (scheme, params) = match alg {
        AkAlg::EccP256 => (
            SigScheme { alg: SigAlg::Ecdsa, hash: HashAlgo::Sha256 },
            PublicKeyParams::Ecc { curve: EccCurve::P256, x: vec![], y: vec![] },
        ),
        AkAlg::Rsa2048 | AkAlg::Rsa2048Pss => (
            SigScheme {
                alg: if alg == AkAlg::Rsa2048 { SigAlg::RsaSsa } else { SigAlg::RsaPss },
                hash: HashAlgo::Sha256,
            },
            PublicKeyParams::Rsa { key_bits: 2048, exponent: 0, modulus: vec![] },
        ),
    };
    PublicArea {
        name_alg: HashAlgo::Sha256,
        object_attributes: attrs::AK_DEFAULT,
        auth_policy: vec![],
        scheme: Some(scheme),
        params,
    }
}

/// TPMT_PUBLIC of the storage parent: the `tpm2_createprimary -G ecc` template
/// (ECC P-256, AES-128-CFB, restricted decrypt, noDA), so AK files stay loadable
/// on the same TPM for as long as its hierarchy seed lives.
fn srk_template() -> Vec<u8> {
    let mut o = Vec::new();
    let attrs = attrs::FIXED_TPM
        | attrs::FIXED_PARENT
        | attrs::SENSITIVE_DATA_ORIGIN
        | attrs::USER_WITH_AUTH
        | (1 << 10) // noDA
        | attrs::RESTRICTED
        | attrs::DECRYPT;
    for v in [0x0023u16, 0x000b] {
        o.extend_from_slice(&v.to_be_bytes());
    }
    o.extend_from_slice(&attrs.to_be_bytes());
    // authPolicy empty; symmetric AES-128-CFB; scheme NULL; curve P-256; kdf NULL; unique empty.
    for v in [0u16, 0x0006, 128, 0x0043, 0x0010, 0x0003, 0x0010, 0, 0] {
        o.extend_from_slice(&v.to_be_bytes());
    }
    o
}

/// A TPM 2.0 reached through tss-esapi. See the module documentation.
pub struct EsapiTpm {
    ctx: SendContext,
    tcti: String,
    banks: Vec<HashAlgo>,
    ak: LoadedAk,
}

struct LoadedAk {
    handle: KeyHandle,
    public: AkPublic,
    /// Marshalled TPMT_PUBLIC as the TPM returned it.
    area: Vec<u8>,
    hierarchy: AkHierarchy,
    /// TPM2B_PRIVATE contents of a created key; `None` for a primary.
    private: Option<Vec<u8>>,
}

/// `tss_esapi::Context` holds raw pointers and is therefore not `Send`. ESYS keeps
/// no thread-local state: a context may move between threads as long as it is used
/// by one at a time, which `&mut self` on every [`Tpm`] command guarantees.
struct SendContext(Context);
// SAFETY: see above; the context is never shared (no `Sync`), only moved.
#[allow(unsafe_code)] // one of the two allowed `unsafe` sites (docs/ARCHITECTURE.md)
unsafe impl Send for SendContext {}

fn be<E: std::fmt::Display + 'static>(what: &str) -> impl FnOnce(E) -> TpmError + '_ {
    move |e| {
        let text = match (&e as &dyn std::any::Any).downcast_ref::<tss_esapi::Error>() {
            Some(t) => tss_text(t),
            None => e.to_string(),
        };
        TpmError::Backend(format!("{what}: {text}"))
    }
}

/// tss-esapi names TPM response codes but prints "response code not recognized" for the
/// TSS's own layers (TCTI, ESAPI, ...): give those their layer, code and meaning.
fn tss_text(e: &tss_esapi::Error) -> String {
    use tss_esapi::constants::response_code::Tss2ResponseCode as Rc;
    let text = e.to_string();
    // The raw code is only reachable through the Display of the format-zero/one wrappers.
    let raw = match e {
        tss_esapi::Error::Tss2Error(Rc::FormatZero(rc)) if text == "response code not recognized" => rc.to_string(),
        tss_esapi::Error::Tss2Error(Rc::FormatOne(rc)) if text == "response code not recognized" => rc.to_string(),
        _ => return text,
    };
    let Some(code) = raw.rsplit("0x").next().and_then(|h| u32::from_str_radix(h.trim(), 16).ok()) else {
        return text;
    };
    let layer = match code >> 16 {
        6 => "TSS feature API",
        7 => "ESAPI",
        8 => "SAPI",
        9 => "marshalling",
        10 => "TCTI (the connection to the TPM)",
        11 => "resource manager",
        12 => "resource manager (TPM)",
        _ => "TSS",
    };
    // The TSS2_BASE_RC_* values shared by every TSS layer.
    let what = match code & 0xffff {
        1 => "general failure",
        2 => "not implemented",
        3 => "bad context",
        4 => "ABI mismatch",
        5 => "bad reference",
        6 => "insufficient buffer",
        7 => "bad sequence",
        8 => "no connection",
        9 => "try again",
        10 => "I/O error (is the TPM or swtpm running and reachable?)",
        11 => "bad value",
        12 => "not permitted",
        16 => "bad size",
        17 => "malformed response",
        20 => "incompatible TCTI",
        21 => "not supported",
        22 => "bad TCTI structure",
        23 => "out of memory",
        27 => "response authorisation failed",
        28 => "no configuration",
        29 => "bad path",
        _ => "unknown error",
    };
    format!("{layer}: {what} (TSS response code {code:#010x})")
}

/// libtss2 prints its own log lines (`WARNING:tcti:…`) on stderr before returning an
/// error we report anyway. Silence it once, before the first context, unless the user
/// set TSS2_LOG to debug the TSS.
fn quiet_tss_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", "all+none");
        }
    });
}

fn hash_alg(b: HashAlgo) -> Result<HashingAlgorithm, TpmError> {
    HashingAlgorithm::try_from(b.tpm_alg_id()).map_err(be("hash algorithm"))
}

/// A TPML_PCR_SELECTION in exactly the given order (tss-esapi's builder would
/// reorder banks through a HashMap).
fn tpml(sel: &[(HashAlgo, &[u32])]) -> Result<PcrSelectionList, TpmError> {
    let mut t = TPML_PCR_SELECTION::default();
    if sel.len() > t.pcrSelections.len() {
        return Err(TpmError::Backend(format!("{} banks in one selection", sel.len())));
    }
    for (i, (bank, pcrs)) in sel.iter().enumerate() {
        let mut map = [0u8; 4];
        for &p in pcrs.iter() {
            if p as usize >= NUM_PCRS {
                return Err(TpmError::PcrOutOfRange(p));
            }
            map[p as usize / 8] |= 1 << (p % 8);
        }
        t.pcrSelections[i] = TPMS_PCR_SELECTION { hash: bank.tpm_alg_id(), sizeofSelect: 3, pcrSelect: map };
    }
    t.count = sel.len() as u32;
    PcrSelectionList::try_from(t).map_err(be("PCR selection"))
}

/// (bank, ascending PCRs) of a selection list, in its order. Unknown banks are kept
/// out (`None`), so a caller can tell.
fn from_tpml(list: PcrSelectionList) -> Vec<(Option<HashAlgo>, Vec<u32>)> {
    let t = TPML_PCR_SELECTION::from(list);
    t.pcrSelections
        .iter()
        .take(t.count as usize)
        .map(|s| {
            let pcrs = (0..(s.sizeofSelect as u32 * 8).min(32))
                .filter(|&i| s.pcrSelect[i as usize / 8] & (1 << (i % 8)) != 0)
                .collect();
            (HashAlgo::from_tpm_alg_id(s.hash), pcrs)
        })
        .collect()
}

impl EsapiTpm {
    /// Connects through `tcti` (`swtpm:host=127.0.0.1,port=2321`, `device:/dev/tpmrm0`,
    /// `tabrmd`, `mssim:…`) and loads or creates the AK.
    pub fn open(tcti: &str, ak: AkSource) -> Result<Self, TpmError> {
        quiet_tss_log();
        let conf =
            TctiNameConf::from_str(tcti).map_err(|e| TpmError::Backend(format!("TCTI {tcti:?}: {}", tss_text(&e))))?;
        let ctx =
            Context::new(conf).map_err(|e| TpmError::Backend(format!("connecting to {tcti}: {}", tss_text(&e))))?;
        let mut ctx = SendContext(ctx);
        if tcti.starts_with("swtpm") || tcti.starts_with("mssim") {
            flush_leftovers(&mut ctx.0)?;
        }
        let banks = allocated_banks(&mut ctx.0)?;
        let ak = match ak {
            AkSource::Primary(alg, h) => create_primary_ak(&mut ctx.0, alg, h)?,
            AkSource::Create(alg, h) => {
                let t = ak_template(alg).to_bytes();
                let (private, public) = with_parent(&mut ctx.0, h, |ctx, parent| {
                    let t = unmarshal_public(&t)?;
                    let r = pw(ctx, |ctx| ctx.create(parent, t, None, None, None, None))
                        .map_err(be("TPM2_Create of the AK"))?;
                    Ok((r.out_private.value().to_vec(), r.out_public))
                })?;
                load_child_ak(&mut ctx.0, h, private, &public.marshall().map_err(be("AK public"))?)?
            }
            AkSource::File(path) => {
                let b = std::fs::read(&path).map_err(|e| TpmError::Backend(format!("{}: {e}", path.display())))?;
                let f = AkFile::from_bytes(&b).map_err(|e| TpmError::Backend(format!("{}: {e}", path.display())))?;
                match f.private {
                    Some(p) => load_child_ak(&mut ctx.0, f.hierarchy, p, &f.public)?,
                    None => {
                        let area = PublicArea::from_bytes(&f.public).map_err(be("AK file public area"))?;
                        let mut t = area.clone();
                        t.params = match t.params {
                            PublicKeyParams::Ecc { curve, .. } => PublicKeyParams::Ecc { curve, x: vec![], y: vec![] },
                            PublicKeyParams::Rsa { key_bits, exponent, .. } => {
                                PublicKeyParams::Rsa { key_bits, exponent, modulus: vec![] }
                            }
                        };
                        let ak = create_primary_from(&mut ctx.0, &t.to_bytes(), f.hierarchy)?;
                        if ak.area != f.public {
                            let _ = ctx.0.flush_context(ak.handle.into());
                            return Err(TpmError::Backend(format!(
                                "{}: this TPM derives another key from the AK template (other TPM or hierarchy seed changed)",
                                path.display()
                            )));
                        }
                        ak
                    }
                }
            }
        };
        Ok(Self { ctx, tcti: tcti.to_string(), banks, ak })
    }

    /// The TCTI this TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The AK's hierarchy.
    pub fn ak_hierarchy(&self) -> AkHierarchy {
        self.ak.hierarchy
    }

    /// The AK's TPM2B_PUBLIC, as `tpm2_createak -u` writes it.
    pub fn ak_tpm2b_public(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(self.ak.area.len() + 2);
        put_tpm2b(&mut o, &self.ak.area);
        o
    }

    /// Writes the AK to `path` so [`AkSource::File`] loads the same key again:
    /// the public area and, for a created key, the TPM-wrapped private part
    /// (useless on any other TPM). Written to a temporary file then renamed.
    pub fn save_ak(&self, path: &Path) -> Result<(), TpmError> {
        let f = AkFile { hierarchy: self.ak.hierarchy, public: self.ak.area.clone(), private: self.ak.private.clone() };
        let tmp = path.with_extension("tmp");
        let io = |e: std::io::Error| TpmError::Backend(format!("{}: {e}", path.display()));
        std::fs::write(&tmp, f.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// PCR reads of `sel` (bank, ascending PCRs) all under one pcrUpdateCounter.
    fn read_consistent(&mut self, sel: &[(HashAlgo, Vec<u32>)]) -> Result<Vec<Vec<PcrValue>>, TpmError> {
        read_consistent_with(&mut self.ctx.0, sel, |ctx, bank, chunk| {
            let (c, read, digests) = ctx.pcr_read(tpml(&[(bank, chunk)])?).map_err(be("TPM2_PCR_Read"))?;
            let got = from_tpml(read).into_iter().filter(|(b, _)| *b == Some(bank)).flat_map(|x| x.1).collect();
            let vals = digests
                .value()
                .iter()
                .map(|d| PcrValue::new(bank, d.value()).map_err(be("PCR value")))
                .collect::<Result<_, _>>()?;
            Ok((c, got, vals))
        })
    }

    fn check_bank(&self, bank: HashAlgo) -> Result<(), TpmError> {
        if self.banks.contains(&bank) {
            Ok(())
        } else {
            Err(TpmError::BankNotAllocated(bank))
        }
    }

    /// TPM2_GetTime signed by an endorsement-hierarchy key (the AK, or a helper
    /// primary when the AK is in the owner hierarchy), so nothing is obfuscated.
    fn get_time(&mut self) -> Result<ClockInfo, TpmError> {
        let helper = match self.ak.hierarchy {
            AkHierarchy::Endorsement => None,
            AkHierarchy::Owner => Some(create_primary_from(
                &mut self.ctx.0,
                &ak_template(AkAlg::EccP256).to_bytes(),
                AkHierarchy::Endorsement,
            )?),
        };
        let key = helper.as_ref().map_or(self.ak.handle, |h| h.handle);
        let ctx = &mut self.ctx.0;
        ctx.set_sessions((Some(AuthSession::Password), Some(AuthSession::Password), None));
        let r = ctx.get_time(key, Data::default(), SignatureScheme::Null);
        ctx.clear_sessions();
        if let Some(h) = helper {
            ctx.flush_context(h.handle.into()).map_err(be("flushing the clock key"))?;
        }
        let (attest, _sig) = r.map_err(be("TPM2_GetTime"))?;
        let bytes = attest.marshall().map_err(be("TPMS_ATTEST"))?;
        // magic, type, qualifiedSigner, extraData, then TPMS_CLOCK_INFO.
        let mut r = Reader::new(&bytes, "TPMS_ATTEST");
        let parse = |r: &mut Reader<'_>| -> Result<ClockInfo, crate::WireError> {
            r.u32("magic")?;
            r.u16("type")?;
            r.tpm2b(usize::from(u16::MAX), "qualifiedSigner")?;
            r.tpm2b(usize::from(u16::MAX), "extraData")?;
            ClockInfo::unmarshal(r)
        };
        parse(&mut r).map_err(be("GetTime attest"))
    }
}

impl Drop for EsapiTpm {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; the TPM frees the slot at its next restart.
        let _ = self.ctx.0.flush_context(self.ak.handle.into());
    }
}

impl std::fmt::Debug for EsapiTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsapiTpm")
            .field("tcti", &self.tcti)
            .field("banks", &self.banks)
            .field("ak", &self.ak.public.kind())
            .field("hierarchy", &self.ak.hierarchy)
            .finish_non_exhaustive()
    }
}

/// Reads `sel` with `read` (one TPM2_PCR_Read of one bank: pcrUpdateCounter, the PCRs
/// read, their values), at most 8 PCRs a call, until all are read; starts again when
/// the counter changed between calls, i.e. an extend slipped in (PCRs the platform
/// marks no-increment, 16 and 23 on PC Clients, do not move the counter).
pub(crate) fn read_consistent_with<S>(
    s: &mut S,
    sel: &[(HashAlgo, Vec<u32>)],
    mut read: impl FnMut(&mut S, HashAlgo, &[u32]) -> Result<(u32, Vec<u32>, Vec<PcrValue>), TpmError>,
) -> Result<Vec<Vec<PcrValue>>, TpmError> {
    'retry: for _ in 0..MAX_RACE_RETRIES {
        let mut counter = None;
        let mut out = Vec::with_capacity(sel.len());
        for (bank, pcrs) in sel {
            let mut vals = Vec::with_capacity(pcrs.len());
            let mut rest: &[u32] = pcrs;
            while !rest.is_empty() {
                let chunk = &rest[..rest.len().min(PCRS_PER_READ)];
                let (c, got, digests) = read(s, *bank, chunk)?;
                if counter.is_some_and(|k| k != c) {
                    continue 'retry;
                }
                counter = Some(c);
                if got.is_empty() || got.len() != digests.len() || !chunk.starts_with(&got) {
                    return Err(TpmError::Backend(format!(
                        "TPM2_PCR_Read of {bank} {chunk:?} returned PCRs {got:?} with {} digests",
                        digests.len()
                    )));
                }
                vals.extend(digests);
                rest = &rest[got.len()..];
            }
            out.push(vals);
        }
        return Ok(out);
    }
    Err(TpmError::Backend(format!("PCRs changed during each of {MAX_RACE_RETRIES} reads")))
}

/// Quotes with `quote` (attest and signature bytes), reads the quoted PCRs with `read`,
/// and returns once our own verifier accepts the quote under `ak` and the values hash
/// to its pcrDigest. A verification failure is an error at once (bad marshalling);
/// a digest mismatch means an extend raced the quote, and both are done again.
pub(crate) fn quote_retrying<S>(
    s: &mut S,
    ak: &AkPublic,
    nonce: &[u8],
    selection: &PcrSelection,
    mut quote: impl FnMut(&mut S) -> Result<(Vec<u8>, Vec<u8>), TpmError>,
    mut read: impl FnMut(&mut S, &[(HashAlgo, Vec<u32>)]) -> Result<Vec<Vec<PcrValue>>, TpmError>,
) -> Result<Quote, TpmError> {
    let banks = selection.banks().to_vec();
    for _ in 0..MAX_RACE_RETRIES {
        let (attest, signature) = quote(s)?;
        let values = read(s, &banks)?;
        let pcr_values: Vec<(HashAlgo, u32, PcrValue)> = banks
            .iter()
            .zip(values)
            .flat_map(|((b, pcrs), vals)| pcrs.iter().zip(vals).map(move |(&p, v)| (*b, p, v)))
            .collect();
        let q = Quote { attest, signature, pcr_values };
        let vq = verify_quote(&q, ak, nonce)
            .map_err(|e| TpmError::Backend(format!("TPM quote does not verify after marshalling: {e}")))?;
        if vq.check_pcrs(|b, p| q.pcr_value(b, p)).is_ok() {
            return Ok(q);
        }
    }
    Err(TpmError::Backend(format!("PCRs changed between quote and read {MAX_RACE_RETRIES} times")))
}

/// Runs one command authorised by the empty password (TPM_RS_PW), the only
/// authorisation used; commands without an auth area must run with none.
fn pw<T>(ctx: &mut Context, f: impl FnOnce(&mut Context) -> tss_esapi::Result<T>) -> tss_esapi::Result<T> {
    ctx.execute_with_session(Some(AuthSession::Password), f)
}

fn unmarshal_public(b: &[u8]) -> Result<Public, TpmError> {
    Public::unmarshall(b).map_err(be("TPMT_PUBLIC"))
}

/// Flushes transient objects a crashed earlier process left in a TPM without a
/// resource manager (swtpm): libtpms has only 3 object slots.
fn flush_leftovers(ctx: &mut Context) -> Result<(), TpmError> {
    let (data, _) =
        ctx.get_capability(CapabilityType::Handles, TRANSIENT_FIRST, 16).map_err(be("GetCapability(handles)"))?;
    let CapabilityData::Handles(list) = data else { return Ok(()) };
    for h in list.into_inner() {
        if let TpmHandle::Transient(_) = h {
            let o = ctx.tr_from_tpm_public(h).map_err(be("TR_FromTPMPublic"))?;
            ctx.flush_context(o).map_err(be("flushing a leftover transient object"))?;
        }
    }
    Ok(())
}

/// Banks with at least one PCR allocated, in the TPM's order.
fn allocated_banks(ctx: &mut Context) -> Result<Vec<HashAlgo>, TpmError> {
    let (data, _) = ctx.get_capability(CapabilityType::AssignedPcr, 0, 16).map_err(be("GetCapability(PCRs)"))?;
    let CapabilityData::AssignedPcr(list) = data else {
        return Err(TpmError::Backend("GetCapability(PCRs) returned other data".into()));
    };
    let banks: Vec<HashAlgo> =
        from_tpml(list).into_iter().filter(|(_, p)| !p.is_empty()).filter_map(|(b, _)| b).collect();
    if banks.is_empty() {
        return Err(TpmError::NoBanks);
    }
    Ok(banks)
}

fn ak_from_area(area: &[u8]) -> Result<AkPublic, TpmError> {
    let a = PublicArea::from_bytes(area).map_err(be("AK public area"))?;
    AkPublic::from_public_area(a).map_err(be("AK public area"))
}

fn create_primary_from(ctx: &mut Context, template: &[u8], h: AkHierarchy) -> Result<LoadedAk, TpmError> {
    let t = unmarshal_public(template)?;
    let r = pw(ctx, |ctx| ctx.create_primary(h.tss(), t, None, None, None, None)).map_err(be("TPM2_CreatePrimary"))?;
    let built = (|| {
        let area = r.out_public.marshall().map_err(be("AK public"))?;
        Ok::<_, TpmError>((ak_from_area(&area)?, area))
    })();
    match built {
        Ok((public, area)) => Ok(LoadedAk { handle: r.key_handle, public, area, hierarchy: h, private: None }),
        Err(e) => {
            let _ = ctx.flush_context(r.key_handle.into());
            Err(e)
        }
    }
}

fn create_primary_ak(ctx: &mut Context, alg: AkAlg, h: AkHierarchy) -> Result<LoadedAk, TpmError> {
    create_primary_from(ctx, &ak_template(alg).to_bytes(), h)
}

/// Runs `f` with a storage primary of `h` loaded, and flushes it afterwards.
fn with_parent<T>(
    ctx: &mut Context,
    h: AkHierarchy,
    f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
) -> Result<T, TpmError> {
    let t = unmarshal_public(&srk_template())?;
    let parent = pw(ctx, |ctx| ctx.create_primary(h.tss(), t, None, None, None, None))
        .map_err(be("TPM2_CreatePrimary of the storage parent"))?
        .key_handle;
    let r = f(ctx, parent);
    let flushed = ctx.flush_context(ObjectHandle::from(parent)).map_err(be("flushing the storage parent"));
    let v = r?;
    flushed?;
    Ok(v)
}

fn load_child_ak(ctx: &mut Context, h: AkHierarchy, private: Vec<u8>, area: &[u8]) -> Result<LoadedAk, TpmError> {
    let public = ak_from_area(area)?;
    let handle = with_parent(ctx, h, |ctx, parent| {
        let p = Private::try_from(private.clone()).map_err(be("TPM2B_PRIVATE"))?;
        let public = unmarshal_public(area)?;
        pw(ctx, |ctx| ctx.load(parent, p, public)).map_err(be("TPM2_Load of the AK"))
    })?;
    Ok(LoadedAk { handle, public, area: area.to_vec(), hierarchy: h, private: Some(private) })
}

impl Tpm for EsapiTpm {
    fn banks(&self) -> Vec<HashAlgo> {
        self.banks.clone()
    }

    fn pcr_read(&mut self, bank: HashAlgo, pcrs: &[u32]) -> Result<Vec<PcrValue>, TpmError> {
        self.check_bank(bank)?;
        if let Some(&p) = pcrs.iter().find(|&&p| p as usize >= NUM_PCRS) {
            return Err(TpmError::PcrOutOfRange(p));
        }
        let mut uniq = pcrs.to_vec();
        uniq.sort_unstable();
        uniq.dedup();
        let vals = self.read_consistent(&[(bank, uniq.clone())])?.pop().unwrap_or_default();
        pcrs.iter()
            .map(|p| uniq.binary_search(p).ok().and_then(|i| vals.get(i).copied()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| TpmError::Backend("PCR read returned too few values".into()))
    }

    fn pcr_read_all(&mut self) -> Result<PcrBanks, TpmError> {
        let all: Vec<u32> = (0..NUM_PCRS as u32).collect();
        let sel: Vec<(HashAlgo, Vec<u32>)> = self.banks.iter().map(|&b| (b, all.clone())).collect();
        let vals = self.read_consistent(&sel)?;
        let mut out = PcrBanks::new(&self.banks);
        for ((bank, _), vals) in sel.iter().zip(vals) {
            for (i, v) in vals.into_iter().enumerate() {
                if v.algo() != *bank || !out.set(i, v) {
                    return Err(TpmError::Backend(format!("bad {bank} value for PCR {i}")));
                }
            }
        }
        Ok(out)
    }

    fn pcr_extend(&mut self, pcr: u32, digests: &[PcrValue]) -> Result<(), TpmError> {
        if pcr as usize >= NUM_PCRS {
            return Err(TpmError::PcrOutOfRange(pcr));
        }
        let mut vals = DigestValues::new();
        for (i, d) in digests.iter().enumerate() {
            if digests[..i].iter().any(|e| e.algo() == d.algo()) {
                return Err(TpmError::DuplicateBank(d.algo()));
            }
            self.check_bank(d.algo())?;
            vals.set(hash_alg(d.algo())?, Digest::try_from(d.as_bytes()).map_err(be("digest"))?);
        }
        let handle = PcrHandle::try_from(pcr).map_err(be("PCR handle"))?;
        pw(&mut self.ctx.0, |ctx| ctx.pcr_extend(handle, vals)).map_err(be("TPM2_PCR_Extend"))
    }

    fn pcr_reset(&mut self, pcr: u32) -> Result<(), TpmError> {
        if !crate::RESETTABLE_PCRS.contains(&pcr) {
            return Err(TpmError::Backend(format!("TPM2_PCR_Reset: PCR {pcr} is not resettable at locality 0")));
        }
        let handle = PcrHandle::try_from(pcr).map_err(be("PCR handle"))?;
        pw(&mut self.ctx.0, |ctx| ctx.pcr_reset(handle)).map_err(be("TPM2_PCR_Reset"))
    }

    /// TPM2_Quote, then the quoted PCR values are read and checked against the signed
    /// pcrDigest; when an extend raced the quote, both are done again.
    fn quote(&mut self, nonce: &[u8], selection: &PcrSelection) -> Result<Quote, TpmError> {
        if nonce.len() > MAX_NONCE {
            return Err(TpmError::NonceTooLong { len: nonce.len(), max: MAX_NONCE });
        }
        for (b, _) in selection.banks() {
            self.check_bank(*b)?;
        }
        let sel: Vec<(HashAlgo, &[u32])> = selection.banks().iter().map(|(b, p)| (*b, p.as_slice())).collect();
        let data = Data::try_from(nonce.to_vec()).map_err(be("nonce"))?;
        let list = tpml(&sel)?;
        let ak = self.ak.public.clone();
        let handle = self.ak.handle;
        quote_retrying(
            self,
            &ak,
            nonce,
            selection,
            |t| {
                let (attest, sig) =
                    pw(&mut t.ctx.0, |ctx| ctx.quote(handle, data.clone(), SignatureScheme::Null, list.clone()))
                        .map_err(be("TPM2_Quote"))?;
                Ok((attest.marshall().map_err(be("TPMS_ATTEST"))?, sig.marshall().map_err(be("TPMT_SIGNATURE"))?))
            },
            |t, banks| t.read_consistent(banks),
        )
    }

    fn clock_info(&mut self) -> Result<ClockInfo, TpmError> {
        self.get_time()
    }

    fn ak_public(&self) -> AkPublic {
        self.ak.public.clone()
    }

    fn endorsement_key(&mut self) -> Result<crate::EkInfo, TpmError> {
        self.esapi_endorsement_key()
    }

    fn activate_credential(&mut self, cred: &crate::Credential) -> Result<Vec<u8>, TpmError> {
        self.esapi_activate_credential(cred)
    }
}

/// The AK file: `IMASNAPAK` 0x01, hierarchy (0 endorsement, 1 owner), kind
/// (0 primary, 1 created), TPM2B_PUBLIC, and for a created key its TPM2B_PRIVATE.
struct AkFile {
    hierarchy: AkHierarchy,
    public: Vec<u8>,
    private: Option<Vec<u8>>,
}

const AK_MAGIC: &[u8; 10] = b"IMASNAPAK\x01";

impl AkFile {
    fn to_bytes(&self) -> Vec<u8> {
        let mut o = AK_MAGIC.to_vec();
        o.push(self.hierarchy.code());
        o.push(self.private.is_some() as u8);
        put_tpm2b(&mut o, &self.public);
        if let Some(p) = &self.private {
            put_tpm2b(&mut o, p);
        }
        o
    }

    fn from_bytes(b: &[u8]) -> Result<Self, crate::WireError> {
        let mut r = Reader::new(b, "AK file");
        let at = r.pos();
        if r.take(AK_MAGIC.len(), "magic")? != AK_MAGIC {
            return Err(r.err(at, "not an imasnap AK file"));
        }
        let at = r.pos();
        let hierarchy = AkHierarchy::from_code(r.u8("hierarchy")?).ok_or_else(|| r.err(at, "unknown hierarchy"))?;
        let at = r.pos();
        let kind = r.u8("kind")?;
        if kind > 1 {
            return Err(r.err(at, "unknown key kind"));
        }
        let public = r.tpm2b(usize::from(u16::MAX), "public")?.to_vec();
        let private = if kind == 1 { Some(r.tpm2b(usize::from(u16::MAX), "private")?.to_vec()) } else { None };
        r.finish()?;
        Ok(Self { hierarchy, public, private })
    }
}

/// The Qualified Name a primary AK of `h` has (what its quotes carry as qualifiedSigner).
pub fn primary_qualified_name(area: &PublicArea, h: AkHierarchy) -> Vec<u8> {
    area.qualified_name_of_primary(h.handle())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SoftTpm;

    fn sha256(m: &[u8]) -> PcrValue {
        HashAlgo::Sha256.hash(&[m])
    }

    /// A SoftTpm behind a TPM2_PCR_Read that returns at most 8 PCRs and a counter, with
    /// an extend of PCR 10 slipped in before the read number `race_at`.
    struct Racy {
        tpm: SoftTpm,
        counter: u32,
        reads: usize,
        race_at: Vec<usize>,
    }

    impl Racy {
        fn read(&mut self, bank: HashAlgo, chunk: &[u32]) -> Result<(u32, Vec<u32>, Vec<PcrValue>), TpmError> {
            self.reads += 1;
            if self.race_at.contains(&self.reads) {
                self.extend();
            }
            let got: Vec<u32> = chunk.iter().copied().take(PCRS_PER_READ).collect();
            Ok((self.counter, got.clone(), self.tpm.pcr_read(bank, &got)?))
        }
        fn extend(&mut self) {
            self.tpm.pcr_extend(10, &[HashAlgo::Sha1.hash(&[b"r"]), sha256(b"r")]).unwrap();
            self.counter += 1;
        }
    }

    #[test]
    fn a_read_spanning_calls_restarts_when_the_counter_moves() {
        let all: Vec<u32> = (0..24).collect();
        let sel = vec![(HashAlgo::Sha1, all.clone()), (HashAlgo::Sha256, all.clone())];
        // 6 calls per attempt; an extend before the 4th: the 1st attempt is discarded.
        let mut r = Racy { tpm: SoftTpm::new(1), counter: 0, reads: 0, race_at: vec![4] };
        let vals = read_consistent_with(&mut r, &sel, |r, b, c| r.read(b, c)).unwrap();
        assert_eq!(r.reads, 4 + 6);
        let now = r.tpm.pcr_read_all().unwrap();
        for ((bank, _), v) in sel.iter().zip(&vals) {
            assert_eq!(v.len(), 24);
            for (i, x) in v.iter().enumerate() {
                assert_eq!(Some(x), now.get(*bank, i), "{bank} {i}: one consistent state");
            }
        }
        // Always racing: gives up with an error instead of looping.
        let mut r = Racy { tpm: SoftTpm::new(1), counter: 0, reads: 0, race_at: (2..1000).collect() };
        assert!(read_consistent_with(&mut r, &sel, |r, b, c| r.read(b, c)).is_err());
    }

    #[test]
    fn a_quote_raced_by_an_extend_is_taken_again() {
        let sel = PcrSelection::uniform(&[HashAlgo::Sha256, HashAlgo::Sha1], &[0, 10]).unwrap();
        let nonce = [3u8; 32];
        let mut r = Racy { tpm: SoftTpm::new(2), counter: 0, reads: 0, race_at: vec![1] };
        let ak = r.tpm.ak_public();
        let mut quotes = 0;
        let q = quote_retrying(
            &mut r,
            &ak,
            &nonce,
            &sel,
            |r| {
                quotes += 1;
                let q = r.tpm.quote(&nonce, &sel)?;
                Ok((q.attest, q.signature))
            },
            |r, banks| read_consistent_with(r, banks, |r, b, c| r.read(b, c)),
        )
        .unwrap();
        assert_eq!(quotes, 2, "the extend between the first quote and its read forces a second quote");
        let vq = verify_quote(&q, &ak, &nonce).unwrap();
        vq.check_pcrs(|b, p| q.pcr_value(b, p)).unwrap();
        assert_eq!(q.pcr_value(HashAlgo::Sha256, 10), r.tpm.pcr_read(HashAlgo::Sha256, &[10]).unwrap().pop());

        // Bytes that do not verify are an error at once, not a retry.
        let e = quote_retrying(
            &mut r,
            &ak,
            &nonce,
            &sel,
            |r| {
                let q = r.tpm.quote(&nonce, &sel)?;
                let mut a = q.attest;
                a[10] ^= 1;
                Ok((a, q.signature))
            },
            |r, banks| read_consistent_with(r, banks, |r, b, c| r.read(b, c)),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
    }
}
