//! `imasnap verifier run` (the service) and `imasnap verifier host …` (its REST API).

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use imasnap_agent_server::tls::TlsFiles;
use imasnap_verifier_service::client::ApiClient;
use imasnap_verifier_service::config::{VerifierConfig, DEFAULT_CONFIG};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum VerifierCmd {
    /// Run the verifier service: REST API (mTLS), scheduler polling every agent, SQLite state.
    ///
    /// Example: imasnap verifier run --config /etc/imasnap/verifier.toml --log-json
    Run(RunArgs),
    /// Manage attested hosts through the REST API.
    #[command(subcommand)]
    Host(Box<HostCmd>),
    /// Write a development PKI (CA; agent, verifier, admin and reader certificates, each
    /// with its role) to a directory.
    ///
    /// For trying the services on one machine; keys are unencrypted.
    /// Example: imasnap verifier dev-pki /tmp/pki --name localhost
    DevPki(DevPkiArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Structured logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Args)]
pub struct DevPkiArgs {
    dir: PathBuf,
    /// DNS names or IP addresses the certificates are valid for.
    #[arg(long = "name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    names: Vec<String>,
}

/// How to reach the REST API.
#[derive(Args, Clone)]
pub struct ApiArgs {
    /// Verifier REST API address.
    #[arg(long, env = "IMASNAP_VERIFIER", default_value = "https://localhost:8892", global = true)]
    api: String,
    /// Client certificate (PEM).
    #[arg(long, env = "IMASNAP_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, env = "IMASNAP_KEY", global = true)]
    key: Option<PathBuf>,
    /// CA the verifier's certificate chains to.
    #[arg(long, env = "IMASNAP_CA", global = true)]
    ca: Option<PathBuf>,
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// Register a host. Example: imasnap verifier host add web1 --address 10.0.0.5:8891 --tofu
    Add(AddArgs),
    /// List hosts and their status.
    List(ApiArgs),
    /// One host's status (checkpoint, boot, AK source, late-join marker, last verdict).
    Show(NameArgs),
    /// Verdict history, newest first.
    Verdicts(VerdictArgs),
    /// Change a host (a new AK or late-join policy resets its state).
    Update(UpdateArgs),
    /// Run an attestation round now and print its verdict (exit 1 unless verified).
    Attest(NameArgs),
    /// Remove a host with its state and history.
    Remove(NameArgs),
}

#[derive(Args)]
pub struct NameArgs {
    name: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct VerdictArgs {
    name: String,
    #[arg(long, default_value_t = 20)]
    limit: u64,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct AddArgs {
    name: String,
    /// Agent address host:port.
    #[arg(long)]
    address: String,
    /// TLS name of the agent's certificate (default: the host part of --address).
    #[arg(long)]
    server_name: Option<String>,
    /// Trusted AK: PEM file or hex TPM2B_PUBLIC file (`imasnap tpm ak`).
    #[arg(long, conflicts_with = "tofu")]
    ak: Option<PathBuf>,
    /// Enrol the AK from the first quote (trust on first use).
    #[arg(long)]
    tofu: bool,
    /// Runtime policy file (Keylime JSON or sha256sum-style allowlist).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Pin the agent's TLS certificate (PEM file).
    #[arg(long)]
    agent_cert: Option<PathBuf>,
    #[arg(long, default_value_t = 30_000)]
    poll_interval_ms: u64,
    /// full_history or marker_tofu.
    #[arg(long, default_value = "full_history")]
    late_join: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct UpdateArgs {
    name: String,
    #[arg(long)]
    address: Option<String>,
    #[arg(long)]
    ak: Option<PathBuf>,
    /// Policy file; pass an empty file to remove the policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    #[arg(long)]
    late_join: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

fn read(p: &PathBuf) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn client(a: &ApiArgs) -> Result<ApiClient> {
    let (Some(cert), Some(key), Some(ca)) = (&a.cert, &a.key, &a.ca) else {
        anyhow::bail!(
            "--cert, --key and --ca (or IMASNAP_CERT, IMASNAP_KEY, IMASNAP_CA) are required: the API needs mutual TLS"
        );
    };
    let tls = TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() }.client()?;
    Ok(ApiClient::new(&a.api, tls))
}

fn call(a: &ApiArgs, m: Method, path: &str, body: Option<serde_json::Value>) -> Result<serde_json::Value> {
    let c = client(a)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(c.ok(m, path, body))
}

fn show_host(v: &serde_json::Value) {
    let g = |k: &str| v.get(k).cloned().unwrap_or_default();
    let spec = g("spec");
    println!(
        "{}  {}  status {}  checkpoint {}  rounds {}  AK {}  late-join {}{}",
        spec.get("name").and_then(|x| x.as_str()).unwrap_or("?"),
        spec.get("address").and_then(|x| x.as_str()).unwrap_or("?"),
        g("status").as_str().unwrap_or("?"),
        g("checkpoint"),
        g("rounds"),
        g("ak_source").as_str().unwrap_or("none"),
        spec.get("late_join").and_then(|x| x.as_str()).unwrap_or("?"),
        if g("history_verified") == serde_json::json!(false) {
            " (history not verified: marker accepted on first use)"
        } else {
            ""
        }
    );
    if let Some(l) = v.get("last").filter(|l| !l.is_null()) {
        print_verdict("  last: ", l);
    }
    if let Some(l) = v.get("alert").filter(|l| !l.is_null()) {
        print_verdict("  ALERT: ", l);
    }
    for k in v.get("learned_keys").and_then(|k| k.as_array()).into_iter().flatten() {
        let s = |f: &str| k.get(f).and_then(|x| x.as_str()).unwrap_or("?").to_string();
        println!("  learned key {} ({}) from {}", s("keyid"), s("kind"), s("source"));
    }
}

fn print_verdict(prefix: &str, r: &serde_json::Value) {
    let s = |k: &str| r.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    println!(
        "{prefix}{} {}{}  checkpoint {}  replayed {}  {:.1} ms{}",
        s("verdict"),
        s("mode"),
        r.get("restart").and_then(|x| x.as_str()).map(|x| format!(" (restart: {x})")).unwrap_or_default(),
        r.get("checkpoint").cloned().unwrap_or_default(),
        r.get("records_replayed").cloned().unwrap_or_default(),
        r.get("duration_ms").and_then(|x| x.as_f64()).unwrap_or(0.0),
        r.get("detail").and_then(|x| x.as_str()).map(|d| format!("\n{prefix}  {d}")).unwrap_or_default()
    );
}

pub fn run(cmd: VerifierCmd) -> Result<ExitCode> {
    match cmd {
        VerifierCmd::Run(a) => {
            crate::cmd::daemon::daemon_signals();
            crate::cmd::daemon::init_logs(a.log_json);
            let text = read(&a.config)?;
            let cfg = VerifierConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(imasnap_verifier_service::service::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        VerifierCmd::DevPki(a) => {
            let names: Vec<&str> = a.names.iter().map(String::as_str).collect();
            let f = imasnap_agent_server::devpki::write_dev_pki(&a.dir, &names).map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "CA {}; agent, verifier, admin and reader certificates (roles in their SAN URIs) in {}",
                f.ca.display(),
                a.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        VerifierCmd::Host(h) => host(*h),
    }
}

fn host(h: HostCmd) -> Result<ExitCode> {
    let (api, out) = match h {
        HostCmd::Add(a) => {
            let body = serde_json::json!({
                "name": a.name, "address": a.address, "server_name": a.server_name,
                "ak": a.ak.as_ref().map(read).transpose()?, "tofu": a.tofu,
                "policy": a.policy.as_ref().map(read).transpose()?,
                "agent_cert": a.agent_cert.as_ref().map(read).transpose()?,
                "poll_interval_ms": a.poll_interval_ms, "late_join": a.late_join,
            });
            let v = call(&a.api, Method::POST, "/v1/hosts", Some(body))?;
            (a.api, v)
        }
        HostCmd::List(a) => {
            let v = call(&a, Method::GET, "/v1/hosts", None)?;
            if !a.json {
                for h in v.get("hosts").and_then(|x| x.as_array()).into_iter().flatten() {
                    show_host(h);
                }
                return Ok(ExitCode::SUCCESS);
            }
            (a, v)
        }
        HostCmd::Show(a) => {
            let v = call(&a.api, Method::GET, &format!("/v1/hosts/{}", a.name), None)?;
            (a.api, v)
        }
        HostCmd::Verdicts(a) => {
            let v = call(&a.api, Method::GET, &format!("/v1/hosts/{}/verdicts?limit={}", a.name, a.limit), None)?;
            if !a.api.json {
                for r in v.get("verdicts").and_then(|x| x.as_array()).into_iter().flatten() {
                    print_verdict("", r);
                }
                return Ok(ExitCode::SUCCESS);
            }
            (a.api, v)
        }
        HostCmd::Update(a) => {
            let mut body = serde_json::Map::new();
            if let Some(x) = a.address {
                body.insert("address".into(), x.into());
            }
            if let Some(p) = &a.ak {
                body.insert("ak".into(), read(p)?.into());
            }
            if let Some(p) = &a.policy {
                body.insert("policy".into(), read(p)?.into());
            }
            if let Some(i) = a.poll_interval_ms {
                body.insert("poll_interval_ms".into(), i.into());
            }
            if let Some(l) = a.late_join {
                body.insert("late_join".into(), l.into());
            }
            let v = call(&a.api, Method::PATCH, &format!("/v1/hosts/{}", a.name), Some(body.into()))?;
            (a.api, v)
        }
        HostCmd::Attest(a) => {
            let v = call(&a.api, Method::POST, &format!("/v1/hosts/{}/attest", a.name), None)?;
            let ok = v.get("verdict").and_then(|x| x.as_str()) == Some("verified");
            if a.api.json {
                ui::print_json(&v);
            } else {
                print_verdict("", &v);
            }
            return Ok(ExitCode::from(if ok { ui::EXIT_OK } else { ui::EXIT_FAIL }));
        }
        HostCmd::Remove(a) => {
            let v = call(&a.api, Method::DELETE, &format!("/v1/hosts/{}", a.name), None)?;
            (a.api, v)
        }
    };
    if api.json {
        ui::print_json(&out);
    } else if out.get("spec").is_some() {
        show_host(&out);
    } else {
        println!("{out}");
    }
    Ok(ExitCode::SUCCESS)
}
