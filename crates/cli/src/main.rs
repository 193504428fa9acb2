//! `imasnap`: a thin shell over the imasnap libraries.

mod cmd;
mod ui;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// IMA measurement-log snapshotting: formats, replay, verification.
///
/// Exit codes: 0 success or verified; 1 verification failed (the evidence is wrong);
/// 2 bad input or usage (the evidence could not be read).
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
    /// Check a log against a runtime policy (Keylime JSON or flat allowlist, ima-sig keys).
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
    /// The verifier service and its REST API: run, host add|list|show|update|attest|remove.
    #[command(subcommand)]
    Verifier(cmd::verifier_service::VerifierCmd),
    #[cfg(feature = "agent")]
    /// The main job: kernel model + agent + verifier on a synthetic workload, with a summary.
    Demo(cmd::demo::DemoArgs),
}

fn main() -> ExitCode {
    reset_sigpipe();
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
        Command::Demo(a) => cmd::demo::run_demo(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("imasnap: error: {e:#}");
            ExitCode::from(ui::EXIT_INPUT)
        }
    }
}

/// Dies quietly on a closed pipe (`imasnap log show … | head`), like other Unix tools,
/// instead of panicking in `println!`.
fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of one signal before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
