//! systemd's readiness protocol for `Type=notify` units (sd_notify(3)), without libsystemd:
//! one datagram with newline-separated `KEY=VALUE` lines to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). No `NOTIFY_SOCKET`: no-op,
//! so the services behave the same outside systemd.
//!
//! The services send `READY=1` once their listener is bound (and the `[mount]` view is up)
//! and `STOPPING=1` when SIGTERM/SIGINT starts the shutdown.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for `Type=notify` services.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Where `NOTIFY_SOCKET` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A socket file (`/run/systemd/notify`).
    Path(std::path::PathBuf),
    /// A Linux abstract socket (`@name` in the variable; the name without the `@`).
    Abstract(Vec<u8>),
}

impl Target {
    /// Parses the variable's value: an absolute path or `@name`; anything else is refused.
    pub fn parse(v: &std::ffi::OsStr) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let b = v.as_bytes();
        match b.first() {
            Some(b'@') if b.len() > 1 => Ok(Self::Abstract(b[1..].to_vec())),
            Some(b'/') => Ok(Self::Path(v.into())),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV}={v:?}: neither an absolute path nor @abstract-name"),
            )),
        }
    }
}

/// Sends `state` (e.g. `"READY=1"`) to `target` in one datagram.
pub fn send_to(target: &Target, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let n = match target {
        Target::Path(p) => sock.send_to(state.as_bytes(), p)?,
        Target::Abstract(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?
        }
    };
    if n != state.len() {
        return Err(io::Error::other(format!("{ENV}: sent {n} of {} bytes", state.len())));
    }
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET`. `Ok(false)`: the variable is unset (not under
/// systemd, or not a notify unit).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(v) = std::env::var_os(ENV) else { return Ok(false) };
    send_to(&Target::parse(&v)?, state)?;
    Ok(true)
}

/// `READY=1` (with the main PID): the service accepts connections. A failure is logged,
/// never fatal (systemd then times the start out, which says more than a crash).
pub fn ready() {
    report(&format!("READY=1\nMAINPID={}", std::process::id()), "READY=1");
}

/// `STOPPING=1`: the shutdown has begun.
pub fn stopping() {
    report("STOPPING=1", "STOPPING=1");
}

fn report(state: &str, what: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state = what, "notified systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, state = what, "cannot notify systemd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn parses_paths_and_abstract_names() {
        assert_eq!(Target::parse(OsStr::new("/run/n")).unwrap(), Target::Path("/run/n".into()));
        assert_eq!(Target::parse(OsStr::new("@sd")).unwrap(), Target::Abstract(b"sd".to_vec()));
        for bad in ["", "@", "relative/path"] {
            assert!(Target::parse(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        send_to(&Target::Path(p.clone()), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("imasnap-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&Target::parse(OsStr::new(&format!("@{name}"))).unwrap(), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        // Nobody listening: an error, not a hang.
        assert!(send_to(&Target::Path(d.path().join("gone")), "READY=1").is_err());
    }
}
