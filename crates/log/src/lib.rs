//! imasnap-log: byte-exact IMA measurement-list formats and multi-bank PCR replay.
//!
//! The core is sans-IO: [`codec::BinaryFormat::decode`] and [`ascii::parse_line`] take
//! bytes and return records or located errors; [`reader`] adds streaming over
//! `io::Read` with memory bounded by one record. Nothing here panics on input.

pub mod algo;
pub mod ascii;
pub mod check;
pub mod codec;
pub mod digest;
pub mod entry;
pub mod error;
pub mod kexec;
pub mod marker;
pub mod pcrfile;
pub mod reader;
pub mod replay;
pub mod synth;
pub mod template;

pub use algo::{HashAlgo, PcrValue};
pub use codec::{BinaryFormat, Endian, Record};
pub use digest::ExtendMode;
pub use error::{Error, Location, Reason};
pub use reader::{AsciiReader, BinaryReader, Format, LogReader};
pub use replay::{Applied, PcrState, PcrTarget, ReplayOptions, ReplayReport, Replayer};
pub use template::{Field, FieldId, ImaSignature, Template};
