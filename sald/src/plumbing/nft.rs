//! The nftables fence, through the `nft` command.

use std::io::{self, Write as _};
use std::process::{Command, Stdio};

use super::SAL_IPPROTO;

/// Name of the nftables table (family `ip`) that holds the fence.
pub const NFT_TABLE: &str = "sald";

pub(crate) fn nft_run(args: &[&str], script: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            "`nft` not found: install nftables".to_owned()
        } else {
            format!("running nft: {e}")
        }
    })?;
    if let Some(script) = script {
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(script.as_bytes())
                .map_err(|e| format!("writing nft script: {e}"))?;
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn nft_table_exists() -> bool {
    nft_run(&["list", "table", "ip", NFT_TABLE], None).is_ok()
}

/// The fence: forwarded IPv4 traffic touching the TUN must be protocol 144;
/// of the rest entering through the interfaces whose forwarding we turned
/// on, only protocol 144 passes (SAL packets of other hosts' flows that
/// merely cross this host, such as a server's answers to a client behind
/// a service router: the kernel forwards them untouched, DESIGN.md), and
/// anything else is dropped, so that the host does not become a
/// general-purpose router. Other forwarding is not ours to judge (policy
/// accept).
pub(crate) fn fence_script(tun: &str, fenced: &[String]) -> String {
    let mut s = format!(
        "table ip {NFT_TABLE} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\toifname \"{tun}\" ip protocol {SAL_IPPROTO} accept\n\
         \t\tiifname \"{tun}\" ip protocol {SAL_IPPROTO} accept\n\
         \t\tiifname \"{tun}\" counter drop\n\
         \t\toifname \"{tun}\" counter drop\n"
    );
    if !fenced.is_empty() {
        let set: Vec<String> = fenced.iter().map(|n| format!("\"{n}\"")).collect();
        let set = set.join(", ");
        s.push_str(&format!(
            "\t\tiifname {{ {set} }} ip protocol {SAL_IPPROTO} accept\n\
             \t\tiifname {{ {set} }} counter drop\n"
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_script_shape() {
        let s = fence_script("sal0", &["eth0".to_owned(), "eth1".to_owned()]);
        assert!(s.contains("table ip sald"));
        assert!(s.contains("type filter hook forward priority 0; policy accept;"));
        assert!(s.contains("oifname \"sal0\" ip protocol 144 accept"));
        assert!(s.contains("iifname \"sal0\" ip protocol 144 accept"));
        assert!(s.contains("iifname { \"eth0\", \"eth1\" } counter drop"));
        let transit = s
            .find("iifname { \"eth0\", \"eth1\" } ip protocol 144 accept")
            .expect("SAL transit accepted");
        assert!(
            transit < s.find("} counter drop").unwrap(),
            "before the drop"
        );
        let s = fence_script("sal0", &[]);
        assert!(!s.contains("iifname {"));
    }
}
