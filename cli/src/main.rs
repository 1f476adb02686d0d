//! The `hapulse` binary: see [`hapulse_cli`].

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hapulse: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(hapulse_cli::exit::USAGE as u8);
        }
    };
    let mut out = std::io::stdout();
    let mut input = std::io::BufReader::new(std::io::stdin());
    let code = runtime.block_on(hapulse_cli::run(
        std::env::args_os().collect(),
        &mut out,
        &mut input,
    ));
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}
