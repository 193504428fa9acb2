//! The quote as a fact: authenticated against the nonce and the trusted AK, with the PCR
//! values the replay must reach.

use super::PLATFORM_PCRS;
use crate::quote::{AttestedQuote, QuoteEvidence};
use crate::reason::Failure;
use imasnap_log::replay::NUM_PCRS;
use imasnap_log::{HashAlgo, PcrTarget, PcrValue};

/// Authenticated quote content the replay is judged against.
#[derive(Clone)]
pub(super) struct Quoted {
    pub(super) reset_count: u64,
    /// TPM clock when quoted (ms), when the quote states one.
    pub(super) clock: Option<u64>,
    /// Proven value of every selected PCR, any bank.
    pub(super) values: Vec<(HashAlgo, [Option<PcrValue>; NUM_PCRS])>,
    pub(super) target: PcrTarget,
    /// PCRs selected in every replayed bank.
    pub(super) mask: u32,
}

impl Quoted {
    pub(super) fn get(&self, bank: HashAlgo, pcr: usize) -> Option<PcrValue> {
        self.values.iter().find(|(b, _)| *b == bank).and_then(|(_, v)| v.get(pcr).copied().flatten())
    }
}

pub(super) fn authenticate(
    quote: &dyn QuoteEvidence,
    nonce: &[u8],
    banks: &[HashAlgo],
    pcr: u32,
) -> Result<Quoted, Failure> {
    let aq: Box<dyn AttestedQuote + '_> = quote.authenticate(nonce)?;
    for &bank in banks {
        for p in (0..PLATFORM_PCRS).chain([pcr]) {
            if !aq.selects(bank, p) {
                return Err(Failure::QuoteSelectionMissing { bank, pcr: p });
            }
        }
    }
    aq.check_pcrs(&|b, p| quote.pcr_value_hint(b, p))?;
    let mut values = Vec::new();
    let mut target = PcrTarget::default();
    for bank in HashAlgo::ALL {
        let mut v = [None; NUM_PCRS];
        for (p, slot) in v.iter_mut().enumerate() {
            if aq.selects(bank, p as u32) {
                // check_pcrs confirmed every selected value, so the hint is now a fact.
                *slot = quote.pcr_value_hint(bank, p as u32).filter(|x| x.algo() == bank);
            }
        }
        if v.iter().any(Option::is_some) {
            if banks.contains(&bank) {
                let t = target.values.entry(bank).or_default();
                for (p, x) in v.iter().enumerate() {
                    if let Some(x) = x {
                        t.insert(p, *x);
                    }
                }
            }
            values.push((bank, v));
        }
    }
    let mut mask = 0u32;
    for p in 0..NUM_PCRS as u32 {
        if banks.iter().all(|&b| aq.selects(b, p)) {
            mask |= 1 << p;
        }
    }
    Ok(Quoted { reset_count: aq.reset_count(), clock: aq.clock(), values, target, mask })
}
