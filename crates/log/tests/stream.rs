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
