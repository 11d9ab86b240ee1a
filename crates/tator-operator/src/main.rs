//! `tator-operator`: `run` the controller, print the `crd`, or `render` a manifest's children.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tator_operator::{controller, render};

#[derive(Parser)]
#[command(
    name = "tator-operator",
    version,
    about = "Runs Tator deployments on Kubernetes from TatorDeployment resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller (uses the in-cluster config or KUBECONFIG).
    Run {
        /// Watch only this namespace (default: every namespace).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Reconciles running at once.
        #[arg(long, default_value_t = 4)]
        concurrency: u16,
        /// Log level filter, for example info or tator_operator=debug.
        #[arg(long, env = "RUST_LOG", default_value = "info")]
        log_level: String,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
    },
    /// Print the TatorDeployment CRD as YAML.
    Crd,
    /// Print every child object the operator would apply for a TatorDeployment manifest.
    Render {
        /// The manifest (a TatorDeployment YAML file, or - for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    match run_cli() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tator-operator: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cli() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Crd => {
            print!("{}", render::crd_yaml()?);
            Ok(())
        }
        Cmd::Render { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            print!("{}", render::render(&text)?);
            Ok(())
        }
        Cmd::Run {
            namespace,
            concurrency,
            log_level,
            json_logs,
        } => {
            let filter = tracing_subscriber::EnvFilter::try_new(&log_level)
                .with_context(|| format!("invalid log level {log_level:?}"))?;
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if json_logs {
                builder.json().with_current_span(true).init();
            } else {
                builder.init();
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("connecting to Kubernetes")?;
                let settings = controller::Settings {
                    namespace,
                    concurrency,
                    resync: Duration::from_secs(600),
                };
                tracing::info!(
                    version = env!("CARGO_PKG_VERSION"),
                    "tator-operator starting"
                );
                controller::run(std::sync::Arc::new(controller::Context::new(
                    client, settings,
                )))
                .await;
                Ok(())
            })
        }
    }
}
