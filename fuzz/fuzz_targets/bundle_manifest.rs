//! The JSON files of an evidence bundle and of the agent's store, on arbitrary bytes. The
//! first byte picks the file, the rest is its content:
//!
//! | byte % 5 | parsed with | asserted beyond "no panic" |
//! |---|---|---|
//! | 0 | `bundle::BundleIndex::from_json` (`bundle.json`) | a success re-serialised (as the agent writes it) parses to the same index; errors are `BadEvidence` naming `bundle.json` |
//! | 1 | `bundle::Manifest::from_json` (the verifier's `manifest.json`) | every file name is a plain name; `check_against` a matching index passes and a shifted `live_first_index` fails; errors are `ManifestMalformed` |
//! | 2 | `imasnap_store::Manifest` (serde) + `validate()` (the store's `manifest.json`) | a manifest the store accepts is accepted by the verifier with the same claims (the two shapes agree), and its JSON round-trips |
//! | 3 | `bundle::quote_from_json` (`quote.json`) | a success re-serialises to JSON that parses to the same quote; errors are `QuoteMalformed` |
//! | 4 | `bundle::ak_from_pub_hex` / `ak_from_pem` (`ak.pub` / `ak.pem`) | a loaded hex AK's area re-encodes to the decoded bytes; errors are `BadEvidence` naming the file |
#![no_main]

use imasnap_verifier::bundle::{ak_from_pem, ak_from_pub_hex, check_against, quote_from_json, BundleIndex, Manifest};
use imasnap_verifier::Failure;
use imasnap_wire::Part;
use libfuzzer_sys::fuzz_target;

fn bundle_index(b: &[u8]) {
    match BundleIndex::from_json(b) {
        Ok(i) => {
            let j = serde_json::json!({
                "format": imasnap_verifier::bundle::BUNDLE_FORMAT,
                "banks": i.banks,
                "pcr": i.pcr,
                "live_first_index": i.live_first_index,
                "nonce": hex::encode(&i.nonce),
            });
            let back = BundleIndex::from_json(&serde_json::to_vec(&j).unwrap()).expect("re-serialised bundle.json");
            assert_eq!(back, i);
        }
        Err(e) => assert_eq!(e.part, Part::Bundle, "bundle.json gave {e:?}"),
    }
}

fn verifier_manifest(b: &[u8]) {
    match Manifest::from_json(b) {
        Ok(m) => {
            for (file, _) in &m.snapshots {
                assert!(!file.is_empty() && !file.contains('/') && file != "." && file != "..", "{file:?}");
            }
            let idx = BundleIndex {
                format: imasnap_verifier::bundle::BUNDLE_FORMAT.into(),
                banks: m.banks.clone(),
                pcr: m.pcr,
                live_first_index: m.next_index,
                nonce: Vec::new(),
            };
            assert_eq!(check_against(&m, &idx), Ok(()));
            let shifted = BundleIndex { live_first_index: m.next_index.wrapping_add(1), ..idx };
            assert!(matches!(check_against(&m, &shifted), Err(Failure::LiveFirstIndexMismatch { .. })));
        }
        Err(e) => assert_eq!(e.part, Part::Manifest, "manifest.json gave {e:?}"),
    }
}

fn store_manifest(b: &[u8]) {
    let Ok(m) = serde_json::from_slice::<imasnap_store::Manifest>(b) else { return };
    if m.validate().is_err() {
        return;
    }
    let json = serde_json::to_vec(&m).unwrap();
    let back: imasnap_store::Manifest = serde_json::from_slice(&json).expect("store manifest round trip");
    assert_eq!(back, m);
    // What the store commits, the verifier must read, with the same claims.
    let v = match Manifest::from_json(&json) {
        Ok(v) => v,
        Err(f) => panic!("the store accepts this manifest, the verifier refuses it: {f}"),
    };
    assert_eq!(v.boot.reset_count, m.boot.reset_count);
    assert_eq!(hex::encode(v.boot.boot_aggregate_sha1), m.boot.boot_aggregate_sha1);
    assert_eq!((&v.banks, v.pcr, v.next_index), (&m.banks, m.pcr, m.next_index));
    assert_eq!(v.snapshots.len(), m.snapshots.len());
    for ((file, c), s) in v.snapshots.iter().zip(&m.snapshots) {
        assert_eq!(file, &s.file);
        assert_eq!((c.seq, c.first_index, c.count), (s.seq, s.first_index, s.count));
        assert_eq!(c.sha256.map(hex::encode).as_deref(), Some(s.sha256.as_str()));
        assert_eq!(c.cut, s.cut);
        assert_eq!(
            c.end_marker.as_ref().map(|m| (m.attempt, hex::encode(m.sha1))),
            s.end_marker.as_ref().map(|m| (m.attempt, m.sha1.clone()))
        );
        assert_eq!(c.next_sha1.map(hex::encode), s.next_sha1.clone());
        assert_eq!(c.pcrs_end.len(), s.pcrs_end.len());
        for v in &c.pcrs_end {
            assert_eq!(s.pcrs_end.get(&v.algo()), Some(&v.to_hex()));
        }
    }
}

fn quote(b: &[u8]) {
    match quote_from_json(b) {
        Ok(q) => {
            let j = serde_json::to_vec(&q).unwrap();
            assert_eq!(quote_from_json(&j).as_ref(), Ok(&q), "quote.json round trip");
        }
        Err(Failure::QuoteMalformed { .. }) => {}
        Err(f) => panic!("quote.json gave {f:?}"),
    }
}

fn ak(b: &[u8]) {
    let text = String::from_utf8_lossy(b);
    match ak_from_pub_hex(&text) {
        Ok(k) => {
            let bytes = hex::decode(text.trim()).expect("accepted hex");
            assert_eq!(k.public_area().map(|a| a.to_tpm2b()), Some(bytes));
        }
        Err(Failure::BadEvidence { detail }) => assert!(detail.starts_with("ak.pub: "), "{detail}"),
        Err(f) => panic!("ak.pub gave {f:?}"),
    }
    match ak_from_pem(&text) {
        Ok(k) => assert!(!k.to_pem().is_empty()),
        Err(Failure::BadEvidence { detail }) => assert!(detail.starts_with("ak.pem: "), "{detail}"),
        Err(f) => panic!("ak.pem gave {f:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 5 {
        0 => bundle_index(rest),
        1 => verifier_manifest(rest),
        2 => store_manifest(rest),
        3 => quote(rest),
        _ => ak(rest),
    }
});
