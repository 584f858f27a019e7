//! What sald may do as the user it runs as, and what it says about it.
//!
//! UDP encapsulation needs no privileges: an ordinary user may run
//! `sald --udp ADDR:PORT --control PATH` and serve its own applications.
//! Native carriage does (the TUN device, and the kernel plumbing that
//! steers protocol 144 into it: policy rules, routes, sysctls, nftables),
//! and so do socket buffers larger than the system's maximum. sald checks
//! at start, refuses native carriage without the capability, and in UDP
//! mode says once which features it is doing without.

use std::path::Path;

/// `CAP_NET_ADMIN`, the capability behind everything root-only here.
pub(crate) const CAP_NET_ADMIN: u32 = 12;

/// The process's user and whether it holds `CAP_NET_ADMIN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// The effective user ID (0: root).
    pub uid: u32,
    /// Whether `CAP_NET_ADMIN` is in the effective set, which native
    /// carriage needs.
    pub net_admin: bool,
}

impl Privileges {
    /// The calling process's (effective user, effective capabilities).
    pub fn current() -> Privileges {
        let uid = nix::unistd::geteuid().as_raw();
        let status = std::fs::read_to_string("/proc/thread-self/status")
            .or_else(|_| std::fs::read_to_string("/proc/self/status"))
            .unwrap_or_default();
        let net_admin = effective_capabilities(&status)
            .map_or(uid == 0, |caps| caps & (1 << CAP_NET_ADMIN) != 0);
        Privileges { uid, net_admin }
    }

    /// Why native carriage cannot start, if it cannot.
    pub fn native_refusal(&self) -> Option<String> {
        (!self.net_admin).then(|| {
            format!(
                "native carriage needs root (CAP_NET_ADMIN) for the TUN device and its routing, \
                 and uid {} lacks it: run sald as root, or use UDP encapsulation \
                 (--udp ADDR:PORT --control PATH), which needs no privileges",
                self.uid
            )
        })
    }

    /// In UDP mode, what this process does without, or `None` when it
    /// lacks nothing. `buffers` are the socket buffer sizes granted.
    pub fn udp_note(&self, buffers: (usize, usize)) -> Option<String> {
        (!self.net_admin).then(|| {
            format!(
                "running unprivileged (uid {}): UDP encapsulation works fully; root \
                 (CAP_NET_ADMIN) would be needed for native carriage (the TUN device and \
                 the kernel plumbing for protocol 144) and for socket buffers beyond \
                 net.core.rmem_max/wmem_max (granted {} / {} bytes)",
                self.uid, buffers.0, buffers.1
            )
        })
    }

    /// A hint for a control socket that could not be bound at `path`.
    pub fn control_hint(&self, path: &Path) -> Option<String> {
        (self.uid != 0).then(|| {
            format!(
                "an unprivileged sald needs a control socket in a directory it may write: \
                 --control PATH or SERVAL_CONTROL (not {})",
                path.display()
            )
        })
    }
}

/// The `CapEff` mask of a `/proc/PID/status` text.
fn effective_capabilities(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_the_status_text() {
        let root = "Name:\tsald\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_capabilities(root), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_capabilities("CapEff:\t0000000000000000"), Some(0));
        assert_eq!(effective_capabilities("Name: x"), None);
    }

    #[test]
    fn only_the_unprivileged_are_told_what_they_lack() {
        let root = Privileges {
            uid: 0,
            net_admin: true,
        };
        assert!(root.native_refusal().is_none());
        assert!(root.udp_note((1, 2)).is_none());
        let nobody = Privileges {
            uid: 65534,
            net_admin: false,
        };
        let refusal = nobody.native_refusal().unwrap();
        assert!(refusal.contains("--udp"), "{refusal}");
        let note = nobody.udp_note((425_984, 425_984)).unwrap();
        assert!(
            note.contains("native carriage") && note.contains("425984"),
            "{note}"
        );
        assert!(nobody
            .control_hint(Path::new("/run/serval/sald.sock"))
            .is_some());
    }
}
