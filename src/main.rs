use clap::Parser;
use tracing_subscriber::EnvFilter;

use checkout_gateway::config::{Cli, Command, Config, LogFormat};
use checkout_gateway::server::{shutdown_signal, Application};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.command == Some(Command::Schema) {
        print!("{}", checkout_gateway::graphql::sdl());
        return std::process::ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("checkout-gateway: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("checkout-gateway: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("checkout-gateway: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr()?, "serving GraphQL at /graphql");
    app.run_until_stopped(shutdown_signal()).await
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
