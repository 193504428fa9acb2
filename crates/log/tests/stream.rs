#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed unwrap is a failed test
use imasnap_log::replay::replay_stream;
use imasnap_log::synth::Synth;
use imasnap_log::*;

fn log(n: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    for r in Synth::new(7, HashAlgo::Sha1).take(n) {
        r.encode(Endian::Little, &mut buf);
    }
    buf
}

#[test]
fn stream_replay_counts_every_record() {
    for n in [0usize, 1, 63, 64, 65, 100, 4095, 4096, 4097, 9000] {
        let data = log(n);
        let mut r = reader::open(&data[..], Format::Binary, BinaryFormat::new(HashAlgo::Sha1)).unwrap();
        let mut rp = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
        replay_stream(&mut r, &mut rp, 100, |_| {}).unwrap();
        let rep = rp.finish();
        assert_eq!(rep.records, n as u64, "n={n}");
        // Same result as one-at-a-time replay.
        let mut one = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
        for rec in BinaryReader::new(&data[..], BinaryFormat::new(HashAlgo::Sha1)) {
            one.push(&rec.unwrap()).unwrap();
        }
        assert_eq!(one.finish().state(), rep.state(), "n={n}");
    }
}

/// The two-thread binary path gives what one-at-a-time replay gives with targets and both
/// extend modes (evmctl's `log verify` setup): the same match point, modes, counts and
/// states, whatever the batch size; a padded-only replay without a SHA1 bank too.
#[test]
fn stream_replay_with_targets_equals_one_at_a_time() {
    let data = log(5000);
    let recs: Vec<Record> =
        BinaryReader::new(&data[..], BinaryFormat::new(HashAlgo::Sha1)).map(|r| r.unwrap()).collect();
    // Targets: the PCRs after record 3210, so the log runs ahead of them.
    let mut pre = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
    pre.push_batch(&recs[..3210]).unwrap();
    let st = pre.state();
    let mut target = PcrTarget::default();
    for a in [HashAlgo::Sha1, HashAlgo::Sha256] {
        target.values.insert(a, [(10usize, *st.get(a, 10).unwrap())].into_iter().collect());
    }
    let cases: [(&[HashAlgo], Vec<ExtendMode>); 3] = [
        (&[HashAlgo::Sha1, HashAlgo::Sha256], vec![ExtendMode::Native, ExtendMode::PaddedSha1]),
        (&[HashAlgo::Sha256], vec![ExtendMode::PaddedSha1]),
        (&[HashAlgo::Sha256, HashAlgo::Sha1], vec![ExtendMode::PaddedSha1, ExtendMode::Native]),
    ];
    for (banks, modes) in cases {
        let opts = || {
            let mut o = ReplayOptions::new(banks);
            o.modes = modes.clone();
            o
        };
        let mut one = Replayer::new(opts());
        one.set_target(&target);
        for r in &recs {
            one.push(r).unwrap();
        }
        let one = one.finish();
        for batch in [1, 7, 100, 4096, 10_000] {
            let mut r = reader::open(&data[..], Format::Binary, BinaryFormat::new(HashAlgo::Sha1)).unwrap();
            let mut rp = Replayer::new(opts());
            rp.set_target(&target);
            replay_stream(&mut r, &mut rp, batch, |_| {}).unwrap();
            let rep = rp.finish();
            let what = format!("banks {banks:?} modes {modes:?} batch {batch}");
            assert_eq!(rep.records, one.records, "{what}");
            assert_eq!(rep.matched_after, one.matched_after, "{what}");
            assert_eq!(rep.matched_modes, one.matched_modes, "{what}");
            assert_eq!(rep.violations, one.violations, "{what}");
            assert_eq!(rep.first_violation, one.first_violation, "{what}");
            assert_eq!(rep.states, one.states, "{what}");
        }
        if banks.len() == 2 {
            assert_eq!(one.matched_after, Some(3210), "banks {banks:?}");
        }
    }
}

/// Bad input in the middle of a stream: the same error (record index and byte offset) as
/// reading record by record, and a template digest mismatch is counted at its index.
#[test]
fn stream_replay_errors_name_index_and_offset() {
    let data = log(3000);
    let recs: Vec<Record> =
        BinaryReader::new(&data[..], BinaryFormat::new(HashAlgo::Sha1)).map(|r| r.unwrap()).collect();
    let off: usize = recs[..2500].iter().map(|r| r.encoded_len()).sum();
    // A PCR index past 23 at record 2500.
    let mut bad = data.clone();
    bad[off..off + 4].copy_from_slice(&99u32.to_le_bytes());
    let want = BinaryReader::new(&bad[..], BinaryFormat::new(HashAlgo::Sha1)).find_map(|r| r.err()).unwrap();
    for batch in [1, 100, 4096] {
        let mut r = reader::open(&bad[..], Format::Binary, BinaryFormat::new(HashAlgo::Sha1)).unwrap();
        let mut rp = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
        let e = replay_stream(&mut r, &mut rp, batch, |_| {}).unwrap_err();
        assert_eq!((e.at.record, e.at.offset), (2500, off as u64), "batch {batch}");
        assert_eq!(e.to_string(), want.to_string(), "batch {batch}");
    }
    // A truncated last record.
    let cut = &data[..data.len() - 3];
    let want = BinaryReader::new(cut, BinaryFormat::new(HashAlgo::Sha1)).find_map(|r| r.err()).unwrap();
    let mut r = reader::open(cut, Format::Binary, BinaryFormat::new(HashAlgo::Sha1)).unwrap();
    let mut rp = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1]));
    let e = replay_stream(&mut r, &mut rp, 1000, |_| {}).unwrap_err();
    assert_eq!(e.to_string(), want.to_string());
    assert_eq!(e.at.record, 2999);
    // One byte of template data changed at record 1234 (not a violation): counted there.
    let i = (1234..).find(|&i| !recs[i].is_violation()).unwrap();
    let off: usize = recs[..i].iter().map(|r| r.encoded_len()).sum::<usize>() + recs[i].encoded_len() - 2;
    let mut bad = data.clone();
    bad[off] ^= 1;
    let mut r = reader::open(&bad[..], Format::Binary, BinaryFormat::new(HashAlgo::Sha1)).unwrap();
    let mut rp = Replayer::new(ReplayOptions::new(&[HashAlgo::Sha1, HashAlgo::Sha256]));
    replay_stream(&mut r, &mut rp, 512, |_| {}).unwrap();
    let rep = rp.finish();
    assert_eq!((rep.mismatch_count, rep.template_digest_mismatches), (1, vec![i as u64]));
}
