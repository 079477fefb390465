//! The `aibridge-proxy` binary: parse, run, exit. Everything else is in the library.

#[tokio::main]
async fn main() {
    let cli = aibridge_proxy::cli::parse();
    let code = aibridge_proxy::cli::run(cli).await;
    aibridge_proxy::telemetry::flush();
    std::process::exit(code);
}
