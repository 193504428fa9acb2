//! Hash algorithms of TPM banks and IMA digests.

use sha1::Digest as _;
use std::fmt;

/// Largest digest any supported bank produces (SHA-512).
pub const MAX_DIGEST: usize = 64;

/// A hash algorithm as used for TPM banks and IMA template digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgo {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
    Sm3,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 5] = [Self::Sha1, Self::Sha256, Self::Sha384, Self::Sha512, Self::Sm3];

    pub const fn size(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 | Self::Sm3 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Name as the kernel spells it (`hash_algo_name`), also used in file suffixes.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
            Self::Sm3 => "sm3",
        }
    }

    /// TPM_ALG_ID (TPM 2.0 Part 2, table 9).
    pub const fn tpm_alg_id(self) -> u16 {
        match self {
            Self::Sha1 => 0x0004,
            Self::Sha256 => 0x000b,
            Self::Sha384 => 0x000c,
            Self::Sha512 => 0x000d,
            Self::Sm3 => 0x0012,
        }
    }

    pub fn from_tpm_alg_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.tpm_alg_id() == id)
    }

    /// Parses a kernel hash name. `sm3-256` is the kernel's spelling in d-ng fields.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            "sm3" | "sm3-256" => Some(Self::Sm3),
            _ => None,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Self::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Self::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Self::Sha384 => Hasher::Sha384(sha2::Sha384::new()),
            Self::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
            Self::Sm3 => Hasher::Sm3(sm3::Sm3::new()),
        }
    }

    /// One-shot hash over the concatenation of `parts`. Monomorphic per algorithm: this
    /// is the replay hot path, and the generic [`Hasher`] enum costs copies of its largest state.
    #[inline]
    pub fn hash(self, parts: &[&[u8]]) -> PcrValue {
        match (self, parts) {
            // Template digests: one part, hashed block by block without the streaming buffer.
            (Self::Sha1, [data]) => sha1_oneshot(data),
            (Self::Sha256, [data]) => sha256_oneshot(data),
            _ => self.hash_generic(parts),
        }
    }

    #[inline]
    fn hash_generic(self, parts: &[&[u8]]) -> PcrValue {
        fn run<D: sha1::Digest>(algo: HashAlgo, parts: &[&[u8]]) -> PcrValue {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            let mut v = PcrValue::zero(algo);
            let n = algo.size();
            v.bytes[..n].copy_from_slice(&h.finalize()[..n]);
            v
        }
        match self {
            Self::Sha1 => run::<sha1::Sha1>(self, parts),
            Self::Sha256 => run::<sha2::Sha256>(self, parts),
            Self::Sha384 => run::<sha2::Sha384>(self, parts),
            Self::Sha512 => run::<sha2::Sha512>(self, parts),
            Self::Sm3 => run::<sm3::Sm3>(self, parts),
        }
    }

    /// TPM2_PCR_Extend: `H(old || new)`.
    #[inline]
    pub fn extend(self, pcr: &mut PcrValue, data: &[u8]) {
        debug_assert_eq!(pcr.algo, self);
        match (self, pcr.algo, data.len()) {
            // The replay hot path: the message has a fixed length, so the padded blocks are
            // built here and compressed directly, without the streaming buffer.
            (Self::Sha1, Self::Sha1, 20) => sha1_extend(&mut pcr.bytes, data),
            (Self::Sha256, Self::Sha256, 32) => sha256_extend(&mut pcr.bytes, data),
            _ => *pcr = self.hash(&[pcr.as_bytes(), data]),
        }
    }
}

const SHA1_IV: [u32; 5] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476, 0xc3d2_e1f0];
const SHA256_IV: [u32; 8] =
    [0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19];

type Block = sha1::digest::generic_array::GenericArray<u8, sha1::digest::consts::U64>;

/// The last block(s) of a Merkle-Damgard message: `tail` (under 64 bytes), 0x80, zeros and
/// the big-endian bit length of the whole message. Returns the blocks and how many are used.
#[inline]
fn md_tail(tail: &[u8], total: usize) -> ([Block; 2], usize) {
    let mut b = [Block::default(); 2];
    let n = tail.len().min(63);
    b[0][..n].copy_from_slice(&tail[..n]);
    b[0][n] = 0x80;
    let used = if n < 56 { 1 } else { 2 };
    b[used - 1][56..].copy_from_slice(&((total as u64) * 8).to_be_bytes());
    (b, used)
}

/// SHA1 of one buffer: its whole blocks compressed in place, then the padded tail.
fn sha1_oneshot(data: &[u8]) -> PcrValue {
    let mut st = SHA1_IV;
    let blocks = data.chunks_exact(64);
    let tail = blocks.remainder();
    for b in blocks {
        sha1::compress(&mut st, std::slice::from_ref(Block::from_slice(b)));
    }
    let (last, used) = md_tail(tail, data.len());
    sha1::compress(&mut st, &last[..used]);
    let mut v = PcrValue::zero(HashAlgo::Sha1);
    for (o, w) in v.bytes.chunks_exact_mut(4).zip(st) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    v
}

/// SHA256 of one buffer, as [`sha1_oneshot`].
fn sha256_oneshot(data: &[u8]) -> PcrValue {
    let mut st = SHA256_IV;
    let blocks = data.chunks_exact(64);
    let tail = blocks.remainder();
    for b in blocks {
        sha2::compress256(&mut st, std::slice::from_ref(Block::from_slice(b)));
    }
    let (last, used) = md_tail(tail, data.len());
    sha2::compress256(&mut st, &last[..used]);
    let mut v = PcrValue::zero(HashAlgo::Sha256);
    for (o, w) in v.bytes.chunks_exact_mut(4).zip(st) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    v
}

/// `pcr[..20] = SHA1(pcr[..20] || data)` for 20-byte `data`: one padded block.
#[inline]
fn sha1_extend(pcr: &mut [u8; MAX_DIGEST], data: &[u8]) {
    let mut block = sha1::digest::generic_array::GenericArray::default();
    block[..20].copy_from_slice(&pcr[..20]);
    block[20..40].copy_from_slice(data);
    block[40] = 0x80;
    block[56..64].copy_from_slice(&(40u64 * 8).to_be_bytes());
    let mut st = SHA1_IV;
    sha1::compress(&mut st, std::slice::from_ref(&block));
    for (o, w) in pcr.chunks_exact_mut(4).zip(st) {
        o.copy_from_slice(&w.to_be_bytes());
    }
}

/// `pcr[..32] = SHA256(pcr[..32] || data)` for 32-byte `data`: the message block and a
/// constant padding block.
#[inline]
fn sha256_extend(pcr: &mut [u8; MAX_DIGEST], data: &[u8]) {
    let mut blocks = [sha2::digest::generic_array::GenericArray::default(); 2];
    blocks[0][..32].copy_from_slice(&pcr[..32]);
    blocks[0][32..].copy_from_slice(data);
    blocks[1][0] = 0x80;
    blocks[1][56..].copy_from_slice(&(64u64 * 8).to_be_bytes());
    let mut st = SHA256_IV;
    sha2::compress256(&mut st, &blocks);
    for (o, w) in pcr.chunks_exact_mut(4).zip(st) {
        o.copy_from_slice(&w.to_be_bytes());
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for HashAlgo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_name(s)
            .ok_or_else(|| format!("unknown hash algorithm {s:?} (want sha1, sha256, sha384, sha512 or sm3)"))
    }
}

/// An incremental hasher over any supported algorithm. An enum, not a trait object,
/// so the hot replay loop stays monomorphic and allocation-free.
#[derive(Clone)]
pub enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Sm3(sm3::Sm3),
}

impl Hasher {
    #[inline]
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha384(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
            Self::Sm3(h) => h.update(data),
        }
    }

    pub fn finish(self) -> PcrValue {
        match self {
            Self::Sha1(h) => PcrValue::from_slice(HashAlgo::Sha1, &h.finalize()),
            Self::Sha256(h) => PcrValue::from_slice(HashAlgo::Sha256, &h.finalize()),
            Self::Sha384(h) => PcrValue::from_slice(HashAlgo::Sha384, &h.finalize()),
            Self::Sha512(h) => PcrValue::from_slice(HashAlgo::Sha512, &h.finalize()),
            Self::Sm3(h) => PcrValue::from_slice(HashAlgo::Sm3, &h.finalize()),
        }
    }
}

/// A fixed-capacity digest tagged with its algorithm: a PCR value or a template digest.
/// Fixed capacity keeps replay state free of heap allocations.
#[derive(Clone, Copy, Eq)]
pub struct PcrValue {
    algo: HashAlgo,
    bytes: [u8; MAX_DIGEST],
}

impl PcrValue {
    /// The all-zero value a PCR has after TPM2_Startup(CLEAR) for PCRs 0-15.
    pub const fn zero(algo: HashAlgo) -> Self {
        Self { algo, bytes: [0; MAX_DIGEST] }
    }

    /// All-ones, as PCRs 17-22 start with on a TPM.
    pub fn ones(algo: HashAlgo) -> Self {
        let mut v = Self::zero(algo);
        v.bytes[..algo.size()].fill(0xff);
        v
    }

    /// Copies `b` into a value of `algo`; a shorter `b` is zero-padded, a longer one
    /// truncated. Padding is IMA's own rule for banks it cannot hash.
    pub fn from_slice(algo: HashAlgo, b: &[u8]) -> Self {
        let mut v = Self::zero(algo);
        let n = b.len().min(algo.size());
        v.bytes[..n].copy_from_slice(&b[..n]);
        v
    }

    /// Exact-length constructor for untrusted input.
    pub fn new(algo: HashAlgo, b: &[u8]) -> Result<Self, String> {
        if b.len() != algo.size() {
            return Err(format!("{algo} value must be {} bytes, got {}", algo.size(), b.len()));
        }
        Ok(Self::from_slice(algo, b))
    }

    pub fn from_hex(algo: HashAlgo, s: &str) -> Result<Self, String> {
        let s = s.trim();
        let s = s.strip_prefix("0x").unwrap_or(s);
        let b = hex::decode(s).map_err(|e| format!("bad hex for {algo} value: {e}"))?;
        Self::new(algo, &b)
    }

    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    pub fn is_zero(&self) -> bool {
        self.as_bytes().iter().all(|&b| b == 0)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }
}

// Every constructor zeroes the tail past the digest size, so comparing whole arrays equals
// comparing the meaningful bytes, and compiles to a few vector compares (no memcmp call).
impl PartialEq for PcrValue {
    #[inline]
    fn eq(&self, o: &Self) -> bool {
        let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
        let diff = self.bytes.chunks_exact(8).zip(o.bytes.chunks_exact(8)).fold(0, |d, (a, b)| d | (word(a) ^ word(b)));
        self.algo == o.algo && diff == 0
    }
}

impl std::hash::Hash for PcrValue {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::hash::Hash::hash(&self.algo, h);
        self.as_bytes().hash(h);
    }
}

impl fmt::Debug for PcrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_hex())
    }
}

impl fmt::Display for PcrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extend_matches_known_violation_vector() {
        // A known vector: one violation replayed from zero.
        let mut p = PcrValue::zero(HashAlgo::Sha256);
        HashAlgo::Sha256.extend(&mut p, &[0xff; 32]);
        assert_eq!(p.to_hex(), "bba91ca85dc914b2ec3efb9e16e7267bf9193b14350d20fba8a8b406730ae30a");
        let mut s = PcrValue::zero(HashAlgo::Sha1);
        HashAlgo::Sha1.extend(&mut s, &[0xff; 20]);
        assert_eq!(s.to_hex(), "bac37b84f007d0238af95af707cac8d61254870e");
    }

    /// The one-buffer paths equal the streaming hashers at every length around the block
    /// and padding boundaries.
    #[test]
    fn oneshot_equals_streaming() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for algo in HashAlgo::ALL {
            for n in 0..data.len() {
                assert_eq!(algo.hash(&[&data[..n]]), algo.hash_generic(&[&data[..n]]), "{algo} len {n}");
            }
        }
    }

    /// The fixed-length extend paths equal the generic `H(old || new)`.
    #[test]
    fn fast_extend_equals_generic_hash() {
        for algo in HashAlgo::ALL {
            let mut p = PcrValue::zero(algo);
            for i in 0..50u8 {
                let data: Vec<u8> = (0..algo.size() as u8).map(|b| b.wrapping_mul(31).wrapping_add(i)).collect();
                let want = algo.hash_generic(&[p.as_bytes(), &data]);
                algo.extend(&mut p, &data);
                assert_eq!(p, want, "{algo} step {i}");
                assert!(p.bytes[algo.size()..].iter().all(|&b| b == 0), "tail stays zero");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for a in HashAlgo::ALL {
            assert_eq!(HashAlgo::from_name(a.name()), Some(a));
            assert_eq!(HashAlgo::from_tpm_alg_id(a.tpm_alg_id()), Some(a));
        }
    }
}
