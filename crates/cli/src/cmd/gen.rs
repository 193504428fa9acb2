//! `imasnap completions SHELL` and `imasnap man DIR`: shell completions and man pages
//! generated from the command-line definition itself, so they never drift from `--help`.
//! The Debian package (packaging/build-deb.sh) installs both.

use anyhow::{Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Print a shell completion script for imasnap on stdout.
///
/// Example: imasnap completions bash > /usr/share/bash-completion/completions/imasnap
/// (zsh: /usr/share/zsh/vendor-completions/_imasnap; fish:
/// /usr/share/fish/vendor_completions.d/imasnap.fish).
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    shell: clap_complete::Shell,
}

/// Write man pages for imasnap and every subcommand into DIR (imasnap.1, imasnap-agent-run.1, …).
///
/// Example: imasnap man /usr/share/man/man1
#[derive(Args)]
pub struct ManArgs {
    /// Output directory (created if missing).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

pub fn completions(a: CompletionsArgs, mut cmd: clap::Command) -> Result<ExitCode> {
    clap_complete::generate(a.shell, &mut cmd, "imasnap", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(a: ManArgs, cmd: clap::Command) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = cmd;
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, "imasnap", &a.dir, &mut written)?;
    println!("{written} man pages in {}", a.dir.display());
    Ok(ExitCode::SUCCESS)
}

/// One page for `cmd` (named `name`, e.g. `imasnap-verifier-host-add`), then its children.
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path, written: &mut usize) -> Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    let page = cmd.clone().name(name.to_string()).display_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    let p = dir.join(format!("{name}.1"));
    std::fs::write(&p, buf).with_context(|| format!("writing {}", p.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
