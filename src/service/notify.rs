//! The systemd notification protocol (`sd_notify(3)`), written out: newline-separated
//! `KEY=VALUE` assignments in one datagram to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`.
//! A name starting with `@` is an abstract socket (Linux). Without `$NOTIFY_SOCKET` (not under
//! systemd, or `Type=` is not `notify`) every call does nothing.
//!
//! This is a dozen lines of std with no `unsafe`; the crates that wrap it add nothing we need.
//! Sending never blocks the daemon and never fails it: a lost notification is logged at debug.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    sync::Arc,
    time::Duration,
};

/// A handle to the service manager's notification socket. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<(UnixDatagram, SocketAddr)>>,
}

impl Notifier {
    /// The socket named by `$NOTIFY_SOCKET`, if any.
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(name) => Notifier::connect(&name.to_string_lossy()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot use $NOTIFY_SOCKET, systemd will not hear from mde-sync");
                Notifier::default()
            }),
            None => Notifier::default(),
        }
    }

    /// A notifier for the socket `name`: a path, or `@name` for an abstract socket.
    pub fn connect(name: &str) -> std::io::Result<Notifier> {
        let addr = socket_addr(name)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            target: Some(Arc::new((socket, addr))),
        })
    }

    /// Whether a service manager is listening.
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// Sends `state`, e.g. `"READY=1\nSTATUS=syncing"`.
    pub fn notify(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let (socket, addr) = &**target;
        if let Err(e) = socket.send_to_addr(state.as_bytes(), addr) {
            tracing::debug!(error = %e, "notification to systemd not sent");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    pub fn reloading(&self) {
        self.notify("RELOADING=1\nSTATUS=reloading the configuration");
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    pub fn stopping(&self, status: &str) {
        self.notify(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }
}

fn socket_addr(name: &str) -> std::io::Result<SocketAddr> {
    if let Some(abstract_name) = name.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            return SocketAddr::from_abstract_name(abstract_name.as_bytes());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = abstract_name;
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "abstract sockets exist only on Linux",
            ));
        }
    }
    if !name.starts_with('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("$NOTIFY_SOCKET {name:?} is neither an absolute path nor @abstract"),
        ));
    }
    SocketAddr::from_pathname(name)
}

/// STATUS= ends at a newline; keep the line whole.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// advises, or `None` when systemd expects no pings (no `WatchdogSec=`, or the variables are
/// meant for another process: `$WATCHDOG_PID` is not ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok()?;
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(&usec, pid.as_deref(), std::process::id())
}

fn watchdog_interval_from(usec: &str, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(me)
    {
        return None;
    }
    let usec: u64 = usec.trim().parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(socket: &UnixDatagram) -> String {
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notifications_reach_a_socket_given_by_path() {
        let dir = std::env::temp_dir().join(format!("mde-sync-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        assert!(n.is_active());
        n.ready("3 tenants\nok");
        assert_eq!(receive(&listener), "READY=1\nSTATUS=3 tenants ok");
        n.watchdog();
        assert_eq!(receive(&listener), "WATCHDOG=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn notifications_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("mde-sync-test-notify-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.stopping("stopping");
        assert_eq!(receive(&listener), "STOPPING=1\nSTATUS=stopping");
    }

    #[test]
    fn without_a_socket_nothing_happens_and_bad_names_are_refused() {
        Notifier::default().ready("x");
        assert!(!Notifier::default().is_active());
        assert!(Notifier::connect("relative/path").is_err());
    }

    #[test]
    fn the_watchdog_interval_is_half_of_watchdog_usec_and_only_for_us() {
        assert_eq!(
            watchdog_interval_from("30000000", None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from("30000000", Some("7"), 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(watchdog_interval_from("30000000", Some("8"), 7), None);
        assert_eq!(watchdog_interval_from("0", None, 7), None);
        assert_eq!(watchdog_interval_from("soon", None, 7), None);
    }
}
