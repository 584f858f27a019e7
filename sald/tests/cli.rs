//! sald's command line: usage errors are one line and status 2, as every
//! Serval command's (DESIGN.md, "User-facing contract"); help is not an
//! error.

use std::process::{Command, Output};

fn sald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sald"))
        .args(args)
        .output()
        .expect("sald runs")
}

#[test]
fn a_usage_error_is_one_line_with_status_2() {
    let output = sald(&["--bogus"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "sald: unexpected argument '--bogus' found; see 'sald --help'\n"
    );
    let output = sald(&["--udp", "nowhere"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.starts_with("sald: invalid value 'nowhere' for '--udp"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[test]
fn help_goes_to_stdout_with_status_0() {
    let output = sald(&["--help"]);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("--forward") && text.contains("--control"),
        "{text}"
    );
}

/// Relays exist only in UDP mode: asked for without it, sald does not
/// start (it used to start with them silently off). The interface named
/// does not exist, so that a sald that went on would fail at once too,
/// before it touched anything, but with another message.
#[test]
fn relays_without_udp_are_an_error_at_start() {
    let output = sald(&["--iface", "nosuchif-rlyfx", "--relays"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.starts_with("sald: --relays needs --udp"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}
