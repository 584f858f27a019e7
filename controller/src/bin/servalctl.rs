//! servalctl: operate a running sald (service rules, flows, interfaces,
//! counters) over its control socket. See `servalctl --help`.

fn main() -> std::process::ExitCode {
    controller::servalctl::main()
}
