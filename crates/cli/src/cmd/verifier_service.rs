//! `imasnap verifier run` (the service) and `imasnap verifier host …` (its REST API).

use crate::ui;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use imasnap_net::tls::TlsFiles;
use imasnap_verifier_service::client::ApiClient;
use imasnap_verifier_service::config::{VerifierConfig, DEFAULT_CONFIG};
use std::path::{Path, PathBuf};
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
    /// Example: imasnap verifier dev-pki -o /tmp/pki --name localhost
    DevPki(DevPkiArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Configuration file (TOML; see docs/SERVICES.md).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Structured logs as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[derive(Args)]
pub struct DevPkiArgs {
    /// Output directory (created if missing).
    #[arg(short = 'o', long = "out", value_name = "DIR", required_unless_present = "dir_pos")]
    out: Option<PathBuf>,
    /// The output directory as a positional argument (older spelling of --out).
    #[arg(hide = true, conflicts_with = "out")]
    dir_pos: Option<PathBuf>,
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
    /// Print the answer as JSON (format "imasnap-verifier-<command>/1").
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
pub enum HostCmd {
    /// Register a host. Example: imasnap verifier host add web1 --address 10.0.0.5:8891 --ek-activate
    Add(AddArgs),
    /// Enrol the host's AK by EK credential activation (again): the verifier fetches the
    /// agent's EK, EK certificate and AK, checks the EK against `[ek]` in verifier.toml or
    /// the host's pinned EK, and trusts the AK only once the agent's TPM has activated
    /// the credential. Exit 1 if refused.
    ///
    /// Example: imasnap verifier host enrol web1
    Enrol(NameArgs),
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
    ///
    /// Example: imasnap verifier host remove web1
    Remove(NameArgs),
}

#[derive(Args)]
pub struct NameArgs {
    /// Host name, as registered.
    name: String,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct VerdictArgs {
    /// Host name, as registered.
    name: String,
    /// Most recent verdicts to show.
    #[arg(long, value_name = "N", default_value_t = 20)]
    limit: u64,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct AddArgs {
    /// Host name (unique; used in the API paths).
    name: String,
    /// Agent address host:port.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    address: String,
    /// TLS name of the agent's certificate [default: the host part of --address].
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Trusted AK: PEM file or hex TPM2B_PUBLIC file (`imasnap tpm ak`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["tofu", "ek_activate"])]
    ak: Option<PathBuf>,
    /// Enrol the AK from the first quote (trust on first use: nothing proves the key is
    /// in the host's TPM; status shows `AK tofu`).
    #[arg(long, conflicts_with = "ek_activate")]
    tofu: bool,
    /// Trust the agent's AK only after EK credential activation, done right after
    /// registering (`host enrol` repeats it). The EK must be certified by a CA in
    /// verifier.toml's `[ek] ca`, listed in `[ek] trusted`, or pinned with --ek.
    #[arg(long)]
    ek_activate: bool,
    /// Pin this host's EK: the SHA-256 fingerprint an enrolment reports (hex), or a file
    /// with its hex TPM2B_PUBLIC. For TPMs without an EK certificate.
    #[arg(long, value_name = "FINGERPRINT|FILE", requires = "ek_activate")]
    ek: Option<String>,
    /// Runtime policy file (Keylime JSON or sha256sum-style allowlist).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Pin the agent's TLS certificate (PEM file).
    #[arg(long, value_name = "FILE")]
    agent_cert: Option<PathBuf>,
    /// Milliseconds between scheduled attestation rounds (100 to 86400000).
    #[arg(long, value_name = "MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    poll_interval_ms: u64,
    /// A host first seen after snapshots were taken: full_history needs every snapshot;
    /// marker_tofu accepts the marker heading the live list on first use.
    #[arg(long, value_name = "POLICY", default_value = "full_history", value_parser = ["full_history", "marker_tofu"])]
    late_join: String,
    /// The host is a simulation (agent with backend = "model" and/or tpm = "soft"): accept
    /// evidence that says so. Without it such evidence is refused (simulated_evidence).
    #[arg(long)]
    simulated: bool,
    #[command(flatten)]
    api: ApiArgs,
}

#[derive(Args)]
pub struct UpdateArgs {
    /// Host name, as registered.
    name: String,
    /// New agent address host:port.
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_address)]
    address: Option<String>,
    /// New TLS name of the agent's certificate ("" restores the default: the host part of
    /// the address).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// New trusted AK: PEM file or hex TPM2B_PUBLIC file (resets the host's state).
    #[arg(long, value_name = "FILE", conflicts_with = "tofu")]
    ak: Option<PathBuf>,
    /// Forget the trusted AK and enrol the one of the next quote (trust on first use;
    /// resets the host's state).
    #[arg(long, conflicts_with = "ek_activate")]
    tofu: bool,
    /// Forget the trusted AK and enrol the agent's AK by EK credential activation now
    /// (as `host add --ek-activate`; resets the host's state).
    #[arg(long, conflicts_with = "ak")]
    ek_activate: bool,
    /// Pin this host's EK (SHA-256 fingerprint, or a file with its hex TPM2B_PUBLIC);
    /// "" removes the pin.
    #[arg(long, value_name = "FINGERPRINT|FILE")]
    ek: Option<String>,
    /// New runtime policy file (an empty file removes the policy, as --no-policy does).
    #[arg(long, value_name = "FILE", conflicts_with = "no_policy")]
    policy: Option<PathBuf>,
    /// Remove the runtime policy.
    #[arg(long)]
    no_policy: bool,
    /// Pin the agent's TLS certificate (PEM file).
    #[arg(long, value_name = "FILE", conflicts_with = "no_agent_cert")]
    agent_cert: Option<PathBuf>,
    /// Remove the pinned agent certificate.
    #[arg(long)]
    no_agent_cert: bool,
    /// Milliseconds between scheduled attestation rounds (100 to 86400000).
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
    poll_interval_ms: Option<u64>,
    /// full_history or marker_tofu (resets the host's state).
    #[arg(long, value_name = "POLICY", value_parser = ["full_history", "marker_tofu"])]
    late_join: Option<String>,
    /// Whether the host is a simulation whose evidence says `simulated` (true or false).
    #[arg(long, value_name = "BOOL")]
    simulated: Option<bool>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `host:port` with a port in 1..=65535 (the error names the flag, through clap).
fn parse_address(s: &str) -> Result<String, String> {
    let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?} is not host:port"))?;
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(s.to_string()),
        _ => Err(format!("{s:?}: port {port:?} is not 1-65535")),
    }
}

/// A small file sent in a request body, refused above `limit` bytes.
fn read_limited(p: &Path, limit: u64) -> Result<String> {
    ui::read_small_text(p, limit)
}

fn read_ak(p: &Path) -> Result<String> {
    read_limited(p, ui::MAX_AK_BYTES).context("--ak")
}

fn read_cert(p: &Path) -> Result<String> {
    read_limited(p, ui::MAX_CERT_BYTES).context("--agent-cert")
}

fn read_policy(p: &Path) -> Result<String> {
    read_limited(p, imasnap_policy::model::MAX_POLICY_BYTES as u64).context("--policy")
}

/// Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(ms: i64) -> String {
    let (y, m, d, h, mi, sec) = ui::utc_civil(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{sec:02}Z")
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
        "{}  {}  status {}  checkpoint {}  rounds {}  AK {}  late-join {}{}{}",
        spec.get("name").and_then(|x| x.as_str()).unwrap_or("?"),
        spec.get("address").and_then(|x| x.as_str()).unwrap_or("?"),
        g("status").as_str().unwrap_or("?"),
        g("checkpoint"),
        g("rounds"),
        g("ak_source").as_str().unwrap_or("none"),
        spec.get("late_join").and_then(|x| x.as_str()).unwrap_or("?"),
        if spec.get("simulated") == Some(&serde_json::json!(true)) { "  SIMULATED" } else { "" },
        if g("history_verified") == serde_json::json!(false) {
            " (history not verified: marker accepted on first use)"
        } else {
            ""
        }
    );
    match (g("ak_source").as_str(), spec.get("ak_enrolment").filter(|e| !e.is_null())) {
        (Some("ek_activated"), Some(e)) => {
            let s = |k: &str| e.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
            println!(
                "  AK proven by EK credential activation: EK {} sha256:{} trusted by {}{}",
                s("ek_kind"),
                s("ek_fingerprint"),
                s("ek_trust"),
                e.get("ek_issuer").and_then(|x| x.as_str()).map(|i| format!(" ({i})")).unwrap_or_default()
            );
        }
        (Some("tofu"), _) => println!("  AK trusted on first use: nothing proved it is in the host's TPM"),
        (None, _) if spec.get("ek_activate") == Some(&serde_json::json!(true)) => {
            println!("  no AK trusted yet: waiting for EK credential activation (imasnap verifier host enrol)")
        }
        _ => {}
    }
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
    let at = r.get("at_ms").and_then(|x| x.as_i64()).map(|ms| format!("{}  ", utc(ms))).unwrap_or_default();
    println!(
        "{prefix}{at}{} {}{}  checkpoint {}  replayed {}  {:.1} ms{}",
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
            let text = ui::read_small_text(&a.config, ui::MAX_CONFIG_BYTES)?;
            let cfg = VerifierConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(imasnap_verifier_service::service::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        VerifierCmd::DevPki(a) => {
            let Some(dir) = a.out.or(a.dir_pos) else { anyhow::bail!("pass the output directory: -o/--out DIR") };
            let names: Vec<&str> = a.names.iter().map(String::as_str).collect();
            let f = imasnap_net::devpki::write_dev_pki(&dir, &names)
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            println!(
                "CA {}; agent, verifier, admin and reader certificates (roles in their SAN URIs) in {}",
                f.ca.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        VerifierCmd::Host(h) => host(*h),
    }
}

/// `--ek`: a fingerprint as given, or the hex TPM2B_PUBLIC in a file; "" clears the pin.
fn read_ek(e: &str) -> Result<Option<String>> {
    Ok(match e {
        "" => None,
        e if Path::new(e).is_file() => Some(read_limited(Path::new(e), ui::MAX_AK_BYTES).context("--ek")?),
        e => Some(e.to_string()),
    })
}

/// After `host add|update`: with `--ek-activate`, enrols `name`'s AK and answers the new
/// status; else `status` as it is. On failure the host stays registered with no trusted
/// AK: says so and how to retry, and answers None.
fn enrol_if(ek_activate: bool, api: &ApiArgs, name: &str, status: serde_json::Value) -> Option<serde_json::Value> {
    if !ek_activate {
        return Some(status);
    }
    match call(api, Method::POST, &format!("/v1/hosts/{name}/enrol"), None) {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!(
                "imasnap: host {name} registered, but its AK enrolment failed: {e:#}\n\
                 no AK is trusted for it until `imasnap verifier host enrol {name}` succeeds"
            );
            None
        }
    }
}

fn host(h: HostCmd) -> Result<ExitCode> {
    let (api, out, format) = match h {
        HostCmd::Add(a) => {
            if a.ak.is_none() && !a.tofu && !a.ek_activate {
                anyhow::bail!(
                    "pass --ek-activate (prove the agent's AK is in its TPM by EK credential activation), \
                     --ak FILE (the host's AK, from `imasnap tpm ak`) or --tofu (trust the AK of the first quote)"
                );
            }
            let ek = match &a.ek {
                Some(e) => read_ek(e)?,
                None => None,
            };
            let body = serde_json::json!({
                "name": a.name, "address": a.address, "server_name": a.server_name,
                "ak": a.ak.as_deref().map(read_ak).transpose()?, "tofu": a.tofu,
                "ek_activate": a.ek_activate, "ek": ek,
                "policy": a.policy.as_deref().map(read_policy).transpose()?,
                "agent_cert": a.agent_cert.as_deref().map(read_cert).transpose()?,
                "poll_interval_ms": a.poll_interval_ms, "late_join": a.late_join,
                "simulated": a.simulated,
            });
            let v = call(&a.api, Method::POST, "/v1/hosts", Some(body))?;
            let Some(v) = enrol_if(a.ek_activate, &a.api, &a.name, v) else {
                return Ok(ExitCode::from(ui::EXIT_FAIL));
            };
            (a.api, v, "imasnap-verifier-host/1")
        }
        HostCmd::Enrol(a) => match call(&a.api, Method::POST, &format!("/v1/hosts/{}/enrol", a.name), None) {
            Ok(v) => (a.api, v, "imasnap-verifier-host/1"),
            Err(e) => {
                eprintln!("imasnap: AK enrolment of {} refused: {e:#}", a.name);
                return Ok(ExitCode::from(ui::EXIT_FAIL));
            }
        },
        HostCmd::List(a) => {
            let v = call(&a, Method::GET, "/v1/hosts", None)?;
            if !a.json {
                for h in v.get("hosts").and_then(|x| x.as_array()).into_iter().flatten() {
                    show_host(h);
                }
                return Ok(ExitCode::SUCCESS);
            }
            (a, v, "imasnap-verifier-host-list/1")
        }
        HostCmd::Show(a) => {
            let v = call(&a.api, Method::GET, &format!("/v1/hosts/{}", a.name), None)?;
            (a.api, v, "imasnap-verifier-host/1")
        }
        HostCmd::Verdicts(a) => {
            let v = call(&a.api, Method::GET, &format!("/v1/hosts/{}/verdicts?limit={}", a.name, a.limit), None)?;
            if !a.api.json {
                for r in v.get("verdicts").and_then(|x| x.as_array()).into_iter().flatten() {
                    print_verdict("", r);
                }
                return Ok(ExitCode::SUCCESS);
            }
            (a.api, v, "imasnap-verifier-verdicts/1")
        }
        HostCmd::Update(a) => {
            // The API's PATCH fields; an empty string clears an optional one.
            let mut body = serde_json::Map::new();
            if let Some(x) = a.address {
                body.insert("address".into(), x.into());
            }
            if let Some(x) = a.server_name {
                body.insert("server_name".into(), x.into());
            }
            if let Some(p) = &a.ak {
                body.insert("ak".into(), read_ak(p)?.into());
                body.insert("tofu".into(), false.into());
            }
            if a.tofu {
                body.insert("ak".into(), "".into());
                body.insert("tofu".into(), true.into());
                body.insert("ek_activate".into(), false.into());
            }
            if a.ek_activate {
                body.insert("ak".into(), "".into());
                body.insert("tofu".into(), false.into());
                body.insert("ek_activate".into(), true.into());
            }
            if let Some(e) = &a.ek {
                body.insert("ek".into(), read_ek(e)?.unwrap_or_default().into());
            }
            if let Some(p) = &a.policy {
                body.insert("policy".into(), read_policy(p)?.into());
            }
            if a.no_policy {
                body.insert("policy".into(), "".into());
            }
            if let Some(p) = &a.agent_cert {
                body.insert("agent_cert".into(), read_cert(p)?.into());
            }
            if a.no_agent_cert {
                body.insert("agent_cert".into(), "".into());
            }
            if let Some(i) = a.poll_interval_ms {
                body.insert("poll_interval_ms".into(), i.into());
            }
            if let Some(l) = a.late_join {
                body.insert("late_join".into(), l.into());
            }
            if let Some(sim) = a.simulated {
                body.insert("simulated".into(), sim.into());
            }
            if body.is_empty() {
                anyhow::bail!("nothing to update: pass at least one of --address, --server-name, --ak, --tofu, --ek-activate, --ek, --policy, --no-policy, --agent-cert, --no-agent-cert, --poll-interval-ms, --late-join, --simulated");
            }
            let v = call(&a.api, Method::PATCH, &format!("/v1/hosts/{}", a.name), Some(body.into()))?;
            let Some(v) = enrol_if(a.ek_activate, &a.api, &a.name, v) else {
                return Ok(ExitCode::from(ui::EXIT_FAIL));
            };
            (a.api, v, "imasnap-verifier-host/1")
        }
        HostCmd::Attest(a) => {
            let v = call(&a.api, Method::POST, &format!("/v1/hosts/{}/attest", a.name), None)?;
            let ok = v.get("verdict").and_then(|x| x.as_str()) == Some("verified");
            if a.api.json {
                ui::print_json_doc("imasnap-verifier-verdict/1", v);
            } else {
                print_verdict("", &v);
            }
            return Ok(ExitCode::from(if ok { ui::EXIT_OK } else { ui::EXIT_FAIL }));
        }
        HostCmd::Remove(a) => {
            let v = call(&a.api, Method::DELETE, &format!("/v1/hosts/{}", a.name), None)?;
            if !a.api.json {
                println!("removed host {} with its state and verdict history", a.name);
                return Ok(ExitCode::SUCCESS);
            }
            (a.api, v, "imasnap-verifier-host-remove/1")
        }
    };
    if api.json {
        ui::print_json_doc(format, out);
    } else {
        show_host(&out);
    }
    Ok(ExitCode::SUCCESS)
}
