//! A scripted scenario that both the real kernel (as guest shell) and the kernel model
//! (in-process) run, so that their results can be compared step for step.

use anyhow::{bail, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// N new files read once: N measurement records.
    Measure(u64),
    /// The agent takes one snapshot (open, read, commit, done).
    Snapshot,
    /// open + close without done: an aborted attempt; its marker stays.
    Abort,
    /// The file is held open while the agent tries: EBUSY, then closed (an abort too).
    Busy,
    /// kexec into the same kernel; the list is carried over.
    Kexec,
    /// kexec with N snapshot attempts between load and execute: each must be refused
    /// (EBUSY), since a marker could overflow the segment sized at load.
    KexecBusy(u64),
    /// Note the kernel's slab use (figures only; nothing to compare).
    Memory,
    /// Upstream staging: the agent cuts with `N` (read, store, trim).
    Trim,
    /// Upstream staging: the agent cuts with `A`, read, store, `D`.
    Stage,
    /// Another process holds a `_staged` file open for writing while the agent tries to
    /// cut and a reader tries to read: both EBUSY.
    WriterBusy,
    /// Another process writes `A` and leaves the records staged (a kexec next carries
    /// them ahead of the current list).
    StageOnly,
    /// `imasnap mount` over the store and securityfs: the view's files, its record count
    /// and the TPM's PCR 10 (tpm2-tools) go to /disk/out; then SIGTERM unmounts it.
    View,
}

impl Step {
    /// A kexec ends its boot's stage.
    pub fn ends_stage(&self) -> bool {
        matches!(self, Step::Kexec | Step::KexecBusy(_))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub steps: Vec<Step>,
    /// The line `legacy`: for a kernel with neither interface (Debian's stock kernel),
    /// where `snapshot` is the agent's legacy checkpoint (it copies, never trims). Only
    /// `measure`, `snapshot` and `memory` steps: the others need the kernel's files.
    pub legacy: bool,
}

impl Scenario {
    /// One step per line: `measure N`, `snapshot`, `abort`, `busy`, `kexec`,
    /// `kexec_busy N`, `memory`, and for upstream staging `trim`, `stage`, `writer_busy`,
    /// `stage_only`; `view` mounts the FUSE view (`imasnap mount`) and reads it;
    /// `#` starts a comment. `repeat K { ... }` is not needed: write the lines out.
    /// A line `legacy` makes it a legacy scenario ([`Scenario::legacy`]).
    pub fn parse(text: &str) -> Result<Self> {
        let mut steps = Vec::new();
        let mut legacy = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            if line == "legacy" {
                legacy = true;
                continue;
            }
            let mut w = line.split_whitespace();
            let step = match (w.next(), w.next(), w.next()) {
                (Some("measure"), Some(n), None) => match n.parse::<u64>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => Step::Measure(n),
                    _ => bail!("line {}: measure takes a count from 1 to 1000000, not {n:?}", i + 1),
                },
                (Some("snapshot"), None, None) => Step::Snapshot,
                (Some("abort"), None, None) => Step::Abort,
                (Some("busy"), None, None) => Step::Busy,
                (Some("kexec"), None, None) => Step::Kexec,
                (Some("kexec_busy"), Some(n), None) => match n.parse::<u64>() {
                    Ok(n) if (1..=100).contains(&n) => Step::KexecBusy(n),
                    _ => bail!("line {}: kexec_busy takes a count from 1 to 100, not {n:?}", i + 1),
                },
                (Some("memory"), None, None) => Step::Memory,
                (Some("trim"), None, None) => Step::Trim,
                (Some("stage"), None, None) => Step::Stage,
                (Some("writer_busy"), None, None) => Step::WriterBusy,
                (Some("stage_only"), None, None) => Step::StageOnly,
                (Some("view"), None, None) => Step::View,
                _ => bail!("line {}: unknown step {line:?}", i + 1),
            };
            if legacy && !matches!(step, Step::Measure(_) | Step::Snapshot | Step::Memory) {
                bail!("line {}: {line:?} in a legacy scenario (only measure, snapshot, memory)", i + 1);
            }
            steps.push(step);
        }
        if legacy && steps.iter().any(|s| !matches!(s, Step::Measure(_) | Step::Snapshot | Step::Memory)) {
            bail!("a legacy scenario has only measure, snapshot and memory steps");
        }
        Ok(Self { steps, legacy })
    }

    /// Whether any step uses upstream staging (the agent then runs on that interface).
    pub fn uses_staging(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Trim | Step::Stage | Step::WriterBusy | Step::StageOnly))
    }

    /// Whether any step mounts the FUSE view (the guest then needs tpm2-tools).
    pub fn uses_view(&self) -> bool {
        self.steps.contains(&Step::View)
    }

    /// Whether any step uses the RFC `snapshot` file.
    pub fn uses_snapshots(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Snapshot | Step::Abort | Step::Busy | Step::KexecBusy(_)))
    }

    /// The kernel interfaces the scenario needs: `snapshot` (CONFIG_IMA_LOG_SNAPSHOT),
    /// `staging` (CONFIG_IMA_STAGING), or `legacy` (neither). The guest checks them
    /// before the first step.
    pub fn interfaces(&self) -> Vec<&'static str> {
        if self.legacy {
            return vec!["legacy"];
        }
        let mut v = Vec::new();
        if self.uses_snapshots() {
            v.push("snapshot");
        }
        if self.uses_staging() {
            v.push("staging");
        }
        v
    }

    /// Steps grouped by boot: a kexec ends its stage.
    pub fn stages(&self) -> Vec<&[Step]> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, s) in self.steps.iter().enumerate() {
            if s.ends_stage() {
                out.push(&self.steps[start..=i]);
                start = i + 1;
            }
        }
        out.push(&self.steps[start..]);
        out
    }

    /// The guest's scenario functions, appended to guest/init.sh. Step tags are unique
    /// across stages, so every measured file has new content.
    pub fn guest_script(&self) -> String {
        let mut s = String::new();
        for (k, stage) in self.stages().iter().enumerate() {
            s.push_str(&format!("stage_{k}() {{\n"));
            for (i, step) in stage.iter().enumerate() {
                let tag = format!("s{k}x{i}");
                let line = match step {
                    Step::Measure(n) => format!("measure {n} {tag}"),
                    Step::Snapshot => format!("snapshot {tag}"),
                    Step::Abort => format!("abort {tag}"),
                    Step::Busy => format!("busy {tag}"),
                    Step::Kexec => format!("kexec_next {tag}"),
                    Step::KexecBusy(n) => format!("kexec_next {tag} {n}"),
                    Step::Memory => format!("memory {tag}"),
                    Step::Trim => format!("cut {tag} trim"),
                    Step::Stage => format!("cut {tag} stage"),
                    Step::WriterBusy => format!("writer_busy {tag}"),
                    Step::StageOnly => format!("stage_only {tag}"),
                    Step::View => format!("view {tag}"),
                };
                s.push_str(&format!("    {line}\n"));
            }
            if !stage.last().is_some_and(Step::ends_stage) {
                s.push_str("    finish\n");
            }
            s.push_str("}\n");
        }
        // A kernel built without an interface the steps use stops before the first step
        // (IMASNAP-UNSUPPORTED), rather than failing somewhere inside (guest::run).
        for i in self.interfaces() {
            s.push_str(&format!("require {i}\n"));
        }
        s.push_str("stage_$STAGE\nfail \"no stage $STAGE\"\n");
        s
    }
}

/// The file content the guest writes for file `j` of step `tag` (`echo "$tag $j"`), so the
/// model can measure the same digests.
pub fn file_content(tag: &str, j: u64) -> Vec<u8> {
    format!("{tag} {j}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_stages() {
        let s = Scenario::parse("measure 3\nsnapshot # one\n\nkexec\nbusy\nabort\n").unwrap();
        assert_eq!(s.steps.len(), 5);
        let st = s.stages();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0], &[Step::Measure(3), Step::Snapshot, Step::Kexec]);
        let g = s.guest_script();
        assert!(g.contains("stage_0() {\n    measure 3 s0x0\n    snapshot s0x1\n    kexec_next s0x2\n}"), "{g}");
        assert!(g.contains("stage_1() {\n    busy s1x0\n    abort s1x1\n    finish\n}"), "{g}");
        assert!(g.ends_with("}\nrequire snapshot\nstage_$STAGE\nfail \"no stage $STAGE\"\n"), "{g}");
        assert!(Scenario::parse("measure 0").is_err());
        assert!(Scenario::parse("measure -1").is_err());
        assert!(Scenario::parse("snapshot now").is_err());
        assert!(Scenario::parse("reboot").is_err());
        let st = Scenario::parse("measure 2\ntrim\nstage\nwriter_busy\nstage_only\nkexec\n").unwrap();
        let g = st.guest_script();
        assert!(
            g.contains("    cut s0x1 trim\n    cut s0x2 stage\n    writer_busy s0x3\n    stage_only s0x4\n"),
            "{g}"
        );
        assert!(g.contains("}\nrequire staging\nstage_$STAGE\n") && !g.contains("require snapshot"), "{g}");
        let v = Scenario::parse("measure 2\nsnapshot\nview\n").unwrap();
        assert!(v.uses_view() && !st.uses_view());
        assert!(v.guest_script().contains("    snapshot s0x1\n    view s0x2\n    finish\n"));
        assert!(Scenario::parse("legacy\nmeasure 2\nview\n").is_err(), "legacy: measure, snapshot, memory only");
        assert_eq!(Scenario::parse("measure 2\nkexec_busy 1\ntrim\n").unwrap().interfaces(), ["snapshot", "staging"]);
        assert!(Scenario::parse("measure 2\nkexec\nmemory\n").unwrap().interfaces().is_empty());
        let l = Scenario::parse("legacy\nmeasure 2\nsnapshot\nmemory\n").unwrap();
        assert!(l.legacy && l.steps.len() == 3);
        assert_eq!(l.interfaces(), ["legacy"]);
        assert!(l.guest_script().contains("}\nrequire legacy\nstage_$STAGE\n"));
        assert!(Scenario::parse("legacy\nmeasure 2\nabort\n").is_err());
        assert!(Scenario::parse("measure 2\ntrim\nlegacy\n").is_err());
    }
}
