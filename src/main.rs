use checkout_gateway::app::{shutdown_signal, Application};
use checkout_gateway::config::{self, Command, Config};
use checkout_gateway::providers::Registry;
use checkout_gateway::telemetry;

// An executed GraphQL request makes hundreds of small, short-lived allocations (the parsed
// document's copy, the value tree, the JSON): glibc's malloc was a fifth of its instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let registry = Registry::builtin();
    let (cli, given) = config::parse(&registry);
    if cli.command == Some(Command::Schema) {
        print!("{}", checkout_gateway::graphql::sdl(&registry));
        return std::process::ExitCode::SUCCESS;
    }
    let config = match Config::load(&cli, given, &registry) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("checkout-gateway: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let telemetry = match telemetry::init(config.log_format, config.log_queue_lines) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("checkout-gateway: cannot set up logging and tracing: {error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("checkout-gateway: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(serve(config, registry));
    drop(runtime);
    telemetry.shutdown();
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("checkout-gateway: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, registry: Registry) -> anyhow::Result<()> {
    let app = Application::build_with(config, registry).await?;
    tracing::info!(addr = %app.local_addr()?, "serving GraphQL at /graphql");
    app.run_until_stopped(shutdown_signal()).await
}
