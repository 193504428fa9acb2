//! `imasnap`: a thin shell over the imasnap libraries.

mod cmd;
mod ui;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// IMA measurement-log snapshotting: formats, replay, verification.
///
/// Exit codes: 0 success or verified; 1 verification failed (the evidence was read and is
/// wrong); 2 an input is missing, not a regular file, too large or malformed, or bad usage.
/// `--json` output is one object whose "format" field names it ("imasnap-verify/1").
#[derive(Parser)]
#[command(name = "imasnap", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read, convert, replay and verify IMA measurement logs.
    #[command(subcommand)]
    Log(cmd::log::LogCmd),
    #[cfg(feature = "agent")]
    /// Simulate a host: the kernel model and the agent under a synthetic workload.
    #[command(subcommand)]
    Sim(cmd::sim::SimCmd),
    /// Runtime policies (Keylime JSON or flat allowlist, ima-sig keys): check a log, convert, create.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCmd),
    Verify(cmd::verify::VerifyArgs),
    #[cfg(feature = "agent")]
    /// Agent work on a real kernel: snapshots through securityfs, evidence bundles.
    #[command(subcommand)]
    Agent(cmd::agent::AgentCmd),
    /// TPM utilities: the attestation key to enrol.
    #[command(subcommand)]
    Tpm(cmd::tpm::TpmCmd),
    #[cfg(feature = "verifier")]
    /// The verifier service and its REST API: run, dev-pki, host add|list|show|verdicts|update|attest|remove.
    #[command(subcommand)]
    Verifier(cmd::verifier_service::VerifierCmd),
    #[cfg(feature = "agent")]
    Mount(cmd::mount::MountArgs),
    #[cfg(feature = "agent")]
    /// The main job: kernel model + agent + verifier on a synthetic workload, with a summary.
    Demo(cmd::demo::DemoArgs),
    Completions(cmd::gen::CompletionsArgs),
    Man(cmd::gen::ManArgs),
}

// The services allocate and free many small buffers per round from many threads; mimalloc
// does that at about half glibc's cost (docs/PERFORMANCE.md, issue 15).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`imasnap log show … | head`), like other Unix tools,
    // instead of panicking in `println!`.
    ui::sigpipe(false);
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Log(c) => cmd::log::run(c),
        #[cfg(feature = "agent")]
        Command::Sim(c) => cmd::sim::run(c),
        Command::Policy(c) => cmd::policy::run(c),
        Command::Verify(a) => cmd::verify::run(a),
        #[cfg(feature = "agent")]
        Command::Agent(c) => cmd::agent::run(c),
        Command::Tpm(c) => cmd::tpm::run(c),
        #[cfg(feature = "verifier")]
        Command::Verifier(c) => cmd::verifier_service::run(c),
        #[cfg(feature = "agent")]
        Command::Mount(a) => cmd::mount::run(a),
        #[cfg(feature = "agent")]
        Command::Demo(a) => cmd::demo::run_demo(a),
        Command::Completions(a) => cmd::gen::completions(a, Cli::command()),
        Command::Man(a) => cmd::gen::man(a, Cli::command()),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imasnap: error: {}", ui::error_text(&e));
            ExitCode::from(ui::EXIT_INPUT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every visible flag and positional of every subcommand says what it is for, and
    /// output paths are spelled `-o/--out` (issue 10, finding 3's consistency list).
    #[test]
    fn finding_3_every_flag_has_help_and_outputs_are_dash_o_out() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if a.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{path} {id}: no help"));
                }
                if a.get_long() == Some("output") {
                    missing.push(format!("{path} {id}: --output, not -o/--out"));
                }
                if a.get_long() == Some("out") && a.get_short() != Some('o') {
                    missing.push(format!("{path} {id}: --out without -o"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &format!("{path} {}", s.get_name()), missing);
            }
        }
        let c = Cli::command();
        c.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&c, "imasnap", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
