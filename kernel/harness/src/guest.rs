//! The real kernel: QEMU (TCG) + swtpm, the agent inside, results read back from the disk.

use crate::scenario::Scenario;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The guest's /init: fixed part plus the scenario's stage functions.
const INIT: &str = include_str!("../guest/init.sh");

#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// The patched bzImage (kernel/build.sh prints its path).
    pub kernel: PathBuf,
    /// Host-built imasnap (copied into the initramfs with its shared libraries).
    pub imasnap: PathBuf,
    /// Extra kernel arguments (e.g. `ima_snapshot_htable=drop`).
    pub cmdline: String,
    pub memory_mb: u32,
    pub timeout: Duration,
    /// A stock kernel's module directory ([`stock_kernel`]): the initramfs then carries
    /// the disk's modules and the guest boots in stock mode ([`STOCK_CMDLINE`]). `None`
    /// for the patched kernel, which has them built in.
    pub modules: Option<PathBuf>,
}

/// Debian's stock kernel (package linux-image-amd64): 6.1, with neither the RFC
/// `snapshot` file nor the `_staged` files, so the agent works in legacy mode.
#[derive(Clone, Debug)]
pub struct StockKernel {
    /// e.g. `6.1.0-57-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// /lib/modules/<release>.
    pub modules: PathBuf,
}

/// What the stock-kernel guest boots with. `imasnap.stock=1`: init.sh loads the modules
/// and writes no policy (the stock kernel has CONFIG_IMA_WRITE_POLICY off). The built-in
/// tcb policy measures what root reads from the ext4 disk, so the workload lives there.
pub const STOCK_CMDLINE: &str = "imasnap.stock=1 ima_policy=tcb ima_template=ima-ng ima_hash=sha256";

/// The modules the stock kernel needs for the disk (virtio-blk on PCI, ext4); their
/// dependencies come from modules.dep.
const STOCK_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// The kernel the installed linux-image-amd64 metapackage depends on, with its modules.
pub fn stock_kernel() -> Result<StockKernel> {
    let deps = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Depends}", "linux-image-amd64"]))
        .context("linux-image-amd64 is not installed (apt-get install linux-image-amd64)")?;
    let release = deps
        .split(',')
        .find_map(|d| d.trim().strip_prefix("linux-image-"))
        .and_then(|d| d.split_whitespace().next())
        .ok_or_else(|| anyhow!("no linux-image-<release> in linux-image-amd64's Depends: {deps:?}"))?
        .to_owned();
    let k = StockKernel {
        vmlinuz: PathBuf::from(format!("/boot/vmlinuz-{release}")),
        modules: PathBuf::from(format!("/lib/modules/{release}")),
        release,
    };
    if !k.vmlinuz.is_file() || !k.modules.join("modules.dep").is_file() {
        bail!(
            "{} or {}/modules.dep missing (apt-get install linux-image-amd64)",
            k.vmlinuz.display(),
            k.modules.display()
        );
    }
    Ok(k)
}

/// `names` and their dependencies from `moddir`/modules.dep, in load order (each after
/// what it depends on; modules.dep lists a module's last dependency first to load).
/// Built-in modules (modules.builtin) need nothing.
fn module_load_order(moddir: &Path, names: &[&str]) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).context("modules.dep")?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let name_of = |p: &str| p.rsplit('/').next().unwrap_or(p).split(".ko").next().unwrap_or(p).to_owned();
    let table: std::collections::HashMap<String, (String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(p, d)| (name_of(p), (p.to_owned(), d.split_whitespace().map(str::to_owned).collect())))
        .collect();
    fn visit(
        n: &str,
        table: &std::collections::HashMap<String, (String, Vec<String>)>,
        builtin: &str,
        name_of: &dyn Fn(&str) -> String,
        out: &mut Vec<String>,
    ) -> Result<()> {
        let Some((path, deps)) = table.get(n) else {
            if builtin.lines().any(|l| name_of(l) == n) {
                return Ok(());
            }
            bail!("module {n} is neither in modules.dep nor built in");
        };
        if out.contains(path) {
            return Ok(());
        }
        for d in deps.iter().rev() {
            visit(&name_of(d), table, builtin, name_of, out)?;
        }
        if !out.contains(path) {
            out.push(path.clone());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for n in names {
        visit(n, &table, &builtin, &name_of, &mut out)?;
    }
    Ok(out)
}

/// The stock kernel's disk modules into the initramfs's /modules (decompressed: busybox
/// insmod takes plain .ko), with /modules/order for init.sh.
fn add_modules(root: &Path, moddir: &Path) -> Result<()> {
    let dir = root.join("modules");
    std::fs::create_dir_all(&dir)?;
    let mut order = String::new();
    for p in module_load_order(moddir, &STOCK_MODULES)? {
        let src = moddir.join(&p);
        let base = p.rsplit('/').next().unwrap_or(&p).split(".ko").next().unwrap_or(&p).to_owned();
        let dst = dir.join(format!("{base}.ko"));
        let tool = match p.rsplit_once(".ko").map(|x| x.1) {
            Some("") => None,
            Some(".xz") => Some("xz"),
            Some(".zst") => Some("zstd"),
            Some(".gz") => Some("gzip"),
            _ => bail!("module {p}: unknown compression"),
        };
        match tool {
            None => {
                std::fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            }
            Some(t) => {
                sh(&format!("{t} -dc {} > {}", q(&src), q(&dst)))?;
            }
        }
        order.push_str(&base);
        order.push('\n');
    }
    std::fs::write(dir.join("order"), order)?;
    Ok(())
}

/// What a finished guest left behind, on the host.
#[derive(Debug)]
pub struct GuestRun {
    /// The guest's /disk/out: bundle/, trace.txt, snap-*.json, busy-*.err, ...
    pub out: PathBuf,
    /// The agent's store (/disk/state), read back from the disk image.
    pub state: PathBuf,
    pub nonce: Vec<u8>,
    /// The AK's TPM2B_PUBLIC (hex file), enrolled from the vTPM before the boot.
    pub enrolled_ak: PathBuf,
    pub console: String,
    /// Wall time of the QEMU run.
    pub seconds: f64,
}

impl GuestRun {
    /// trace.txt: one line per step, `<step> <tag> key=value ...`.
    pub fn trace(&self) -> Result<Vec<String>> {
        let t = std::fs::read_to_string(self.out.join("trace.txt")).context("guest trace.txt")?;
        Ok(t.lines().map(str::to_owned).collect())
    }
}

/// The kernel lacks an interface the scenario uses (`Scenario::interfaces`): it was
/// built with that option off (`kernel/build.sh --without-feature` has no `snapshot`
/// file, `--without-staging` no `_staged` files). The guest checks before the first
/// step, so this is reported at once instead of as a failure inside a step or a
/// structure that differs from the model's. Tests fail with it rather than skip: a
/// test run against the wrong kernel must not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// `snapshot` or `staging`.
    pub interface: String,
    /// What the guest found missing (`<file> absent`).
    pub detail: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.interface == "legacy" {
            // The one requirement met by a file's absence: a patched kernel is the wrong one.
            return write!(
                f,
                "the kernel is not a legacy one ({}): this scenario needs a kernel without \
                 CONFIG_IMA_LOG_SNAPSHOT and CONFIG_IMA_STAGING (guest::stock_kernel)",
                self.detail
            );
        }
        let option = match self.interface.as_str() {
            "snapshot" => "CONFIG_IMA_LOG_SNAPSHOT (not kernel/build.sh --without-feature)",
            "staging" => "CONFIG_IMA_STAGING (not kernel/build.sh --without-staging)",
            _ => "an option this kernel was built without",
        };
        write!(
            f,
            "the kernel has no {} interface ({}): this scenario needs a kernel built with {option}",
            self.interface, self.detail
        )
    }
}

impl std::error::Error for Unsupported {}

/// The guest's `IMASNAP-UNSUPPORTED:` line, if it stopped for a missing interface.
fn unsupported(console: &str) -> Option<Unsupported> {
    let line = console.lines().find_map(|l| l.trim_end_matches('\r').strip_prefix("IMASNAP-UNSUPPORTED: "))?;
    let (interface, detail) = line.split_once(' ').unwrap_or((line, ""));
    Some(Unsupported {
        interface: interface.to_owned(),
        detail: detail.trim().trim_start_matches('(').trim_end_matches(')').to_owned(),
    })
}

/// Repository root (kernel/harness/../..).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// The patched kernel: $IMASNAP_KERNEL, else `kernel/build.sh` (cached by patch hash).
pub fn kernel_image() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("IMASNAP_KERNEL") {
        return Ok(PathBuf::from(p));
    }
    let out = Command::new("bash")
        .arg(repo_root().join("kernel/build.sh"))
        .stderr(Stdio::inherit())
        .output()
        .context("running kernel/build.sh")?;
    if !out.status.success() {
        bail!("kernel/build.sh failed ({})", out.status);
    }
    let p = String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default().trim().to_owned();
    let p = PathBuf::from(p);
    if !p.is_file() {
        bail!("kernel/build.sh printed {p:?}, which is not a file");
    }
    Ok(p)
}

/// The imasnap binary the guest runs: `IMASNAP_BIN` when set (scripts/test.sh sets it to
/// the binary it just built with `tpm2`), otherwise this workspace's release binary, built
/// with the real TPM 2.0 back end the guest quotes through.
pub fn imasnap_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("IMASNAP_BIN") {
        return Ok(PathBuf::from(p));
    }
    run_ok(
        Command::new("cargo")
            .args(["build", "--release", "-p", "imasnap", "--features", "tpm2"])
            .current_dir(repo_root()),
    )?;
    // where that cargo put it: $CARGO_TARGET_DIR (relative to the root it ran in) or target/
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), |d| repo_root().join(d));
    Ok(target.join("release/imasnap"))
}

fn run_ok(c: &mut Command) -> Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(script: &str) -> Result<String> {
    run_ok(Command::new("bash").arg("-euo").arg("pipefail").arg("-c").arg(script))
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// initramfs: busybox, imasnap and kexec with their libraries, and /init.
fn build_initramfs(work: &Path, sc: &Scenario, imasnap: &Path, modules: Option<&Path>) -> Result<PathBuf> {
    let root = work.join("initramfs");
    for d in ["bin", "sbin", "dev", "proc", "sys", "disk", "w"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    let kexec = ["/sbin/kexec", "/usr/sbin/kexec"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| anyhow!("kexec not found (apt-get install kexec-tools)"))?;
    let lib = repo_root().join("scripts/lib/guest-binary.sh");
    sh(&format!(
        ". {lib}; guest_add_binary {root} {imasnap} /bin/imasnap; guest_add_binary {root} {kexec} /sbin/kexec",
        lib = q(&lib),
        root = q(&root),
        imasnap = q(imasnap),
    ))?;
    if sc.uses_view() {
        // `tpm2 pcrread`: the PCRs evmctl checks the view against, read by tpm2-tools.
        sh(&format!(". {lib}; guest_add_binary {root} /usr/bin/tpm2 /bin/tpm2", lib = q(&lib), root = q(&root)))?;
    }
    if let Some(m) = modules {
        add_modules(&root, m)?;
    }
    let init = format!("{INIT}\n# scenario\n{}", sc.guest_script());
    let ip = root.join("init");
    std::fs::write(&ip, init)?;
    sh(&format!("chmod 755 {}", q(&ip)))?;
    let out = work.join("initrd.gz");
    sh(&format!(
        "cd {} && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet | gzip -1 > {}",
        q(&root),
        q(&out)
    ))?;
    Ok(out)
}

struct Swtpm(Child);

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fresh vTPM state (sha1 + sha256 banks), and the AK enrolled from it on the host.
fn tpm_setup(work: &Path, imasnap: &Path) -> Result<PathBuf> {
    let st = work.join("tpm");
    std::fs::create_dir_all(&st)?;
    run_ok(
        Command::new("swtpm_setup")
            .args(["--tpm2", "--pcr-banks", "sha1,sha256", "--overwrite"])
            .arg("--tpmstate")
            .arg(&st),
    )?;
    let port = free_port()?;
    let _tpm = Swtpm(
        Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", st.display()))
            .arg("--server")
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting swtpm (apt-get install swtpm swtpm-tools)")?,
    );
    let ak = work.join("enrolled-ak.pub");
    let spec = format!("swtpm:host=127.0.0.1,port={port}");
    let t0 = Instant::now();
    loop {
        let r = Command::new(imasnap).args(["tpm", "ak", "--tpm", &spec, "--out"]).arg(&ak).output()?;
        if r.status.success() {
            return Ok(ak);
        }
        if t0.elapsed() > Duration::from_secs(15) {
            bail!("AK enrolment failed: {}", String::from_utf8_lossy(&r.stderr));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> Result<u16> {
    // Two consecutive free ports (server, ctrl).
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let p = l.local_addr()?.port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return Ok(p);
        }
    }
    bail!("no free port pair")
}

/// Boots the kernel with `sc` as the guest's work and reads the results back.
pub fn run(sc: &Scenario, cfg: &GuestConfig, work: &Path) -> Result<GuestRun> {
    std::fs::create_dir_all(work)?;
    let initrd = build_initramfs(work, sc, &cfg.imasnap, cfg.modules.as_deref())?;
    // The disk: kexec images in /boot; the agent's store and the results land here too.
    let dd = work.join("disk");
    std::fs::create_dir_all(dd.join("boot"))?;
    std::fs::copy(&cfg.kernel, dd.join("boot/bzImage"))?;
    std::fs::copy(&initrd, dd.join("boot/initrd.gz"))?;
    let img = work.join("disk.ext4");
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "root_owner=0:0", "-d"]).arg(&dd).arg(&img).arg("512M"))?;
    let ak = tpm_setup(work, &cfg.imasnap)?;
    let nonce = random_nonce()?;

    let sock = work.join("swtpm.sock");
    let _tpm = Swtpm(
        Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate"])
            .arg("--tpmstate")
            .arg(format!("dir={}", work.join("tpm").display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", sock.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let t0 = Instant::now();
    while !sock.exists() {
        if t0.elapsed() > Duration::from_secs(10) {
            bail!("swtpm socket did not appear");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let console = work.join("console.log");
    let stock = if cfg.modules.is_some() { STOCK_CMDLINE } else { "" };
    let append =
        format!("console=ttyS0 panic=-1 imasnap.stage=0 imasnap.nonce={} {stock} {}", hex::encode(&nonce), cfg.cmdline);
    let t0 = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-display", "none"])
        .args(["-monitor", "none", "-no-reboot", "-m", &cfg.memory_mb.to_string()])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&cfg.kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &append])
        .arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", sock.display()))
        .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"])
        .arg("-drive")
        .arg(format!("file={},if=none,id=d0,format=raw", img.display()))
        .args(["-device", "virtio-blk-pci,drive=d0,serial=imasnap-disk"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let status = loop {
        if let Some(s) = qemu.try_wait()? {
            break s;
        }
        if t0.elapsed() > cfg.timeout {
            let _ = qemu.kill();
            let _ = qemu.wait();
            bail!("guest timed out after {:?}; console tail:\n{}", cfg.timeout, tail(&console));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = t0.elapsed().as_secs_f64();
    let console_text = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    if let Some(u) = unsupported(&console_text) {
        return Err(u.into());
    }
    if !status.success() || !console_text.contains("IMASNAP-DONE") {
        bail!("guest did not finish (qemu {status}); console tail:\n{}", tail(&console));
    }
    let back = work.join("back");
    std::fs::create_dir_all(&back)?;
    run_ok(Command::new("debugfs").arg("-R").arg(format!("rdump /out /state {}", back.display())).arg(&img))?;
    Ok(GuestRun {
        out: back.join("out"),
        state: back.join("state"),
        nonce,
        enrolled_ak: ak,
        console: console_text,
        seconds,
    })
}

fn tail(p: &Path) -> String {
    let t = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn random_nonce() -> Result<Vec<u8>> {
    use std::io::Read;
    let mut n = vec![0u8; 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut n)?;
    Ok(n)
}

/// `imasnap verify DIR --json` (with --ak and --nonce when given; without an AK, the
/// bundle's own is trusted with --trust-bundle-ak): exit code and report.
pub fn verify(imasnap: &Path, dir: &Path, ak: Option<&Path>, nonce: Option<&[u8]>) -> Result<(i32, serde_json::Value)> {
    verify_with(imasnap, dir, ak, nonce, &[])
}

/// [`verify`] with more arguments (`--latest-only`, `--jobs 2`).
pub fn verify_with(
    imasnap: &Path,
    dir: &Path,
    ak: Option<&Path>,
    nonce: Option<&[u8]>,
    extra: &[&str],
) -> Result<(i32, serde_json::Value)> {
    let mut c = Command::new(imasnap);
    c.arg("verify").arg(dir).arg("--json").args(extra);
    match ak {
        Some(ak) => c.arg("--ak").arg(ak),
        None => c.arg("--trust-bundle-ak"),
    };
    if let Some(n) = nonce {
        c.arg("--nonce").arg(hex::encode(n));
    }
    let out = c.output().context("running imasnap verify")?;
    let v = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("imasnap verify output: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_line_names_the_option() {
        let c = "Run /init as init process\r\nIMASNAP: stage 0 on 6.12.117\r\n\
                 IMASNAP-UNSUPPORTED: staging (/sys/kernel/security/ima/binary_runtime_measurements_staged absent)\r\n";
        let u = unsupported(c).unwrap();
        assert_eq!(u.interface, "staging");
        let msg = anyhow::Error::from(u.clone()).to_string();
        assert!(msg.contains("no staging interface") && msg.contains("CONFIG_IMA_STAGING"), "{msg}");
        assert!(msg.contains("(/sys/kernel/security/ima/binary_runtime_measurements_staged absent)"), "{msg}");
        assert!(unsupported("IMASNAP-DONE\n").is_none());
        let l = unsupported("IMASNAP-UNSUPPORTED: legacy (/sys/kernel/security/ima/snapshot present)\n").unwrap();
        let msg = anyhow::Error::from(l).to_string();
        assert!(msg.contains("not a legacy one (/sys/kernel/security/ima/snapshot present)"), "{msg}");
    }

    #[test]
    fn stock_modules_load_after_their_dependencies() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
             kernel/fs/jbd2/jbd2.ko.xz:\nkernel/fs/mbcache.ko.xz:\nkernel/lib/crc16.ko.xz:\n\
             kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/crypto/crc32c_generic.ko\n").unwrap();
        let o = module_load_order(d.path(), &["virtio_blk", "crc32c_generic", "ext4"]).unwrap();
        assert_eq!(
            o,
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/block/virtio_blk.ko",
                "kernel/fs/jbd2/jbd2.ko.xz",
                "kernel/fs/mbcache.ko.xz",
                "kernel/lib/crc16.ko.xz",
                "kernel/fs/ext4/ext4.ko.xz"
            ]
        );
        assert!(module_load_order(d.path(), &["nosuch"]).is_err());
    }
}
