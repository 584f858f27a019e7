//! servd: the service controller. See `servd --help` and the `servd`
//! module of the controller crate.

fn main() -> std::process::ExitCode {
    let args: controller::servd::driver::Args = serval_cli::parse("servd");
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("servd: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(controller::servd::driver::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("servd: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
