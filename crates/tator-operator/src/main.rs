//! `tator-operator`: `run` the controller, print the `crd`, or `render` a manifest's children.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use futures::future::{BoxFuture, FutureExt};
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::{CronJob, Job},
    core::v1::{ConfigMap, PersistentVolumeClaim, Service},
    networking::v1::NetworkPolicy,
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, Client, Resource, api::ListParams};
use tator_api::{TatorDeployment, labels};
use tator_operator::{
    client::{RequestCounts, counted_client_with},
    controller, crd_install,
    health::{self, HealthState, Role},
    metrics::Metrics,
    render,
};
use tracing::{error, info, warn};

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

#[derive(Args)]
struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: every namespace). kube-system is
    /// refused.
    #[arg(long, env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// Reconciles running at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u16,
    /// Log level filter, for example info or tator_operator=debug.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    json_logs: bool,
    /// Address of the HTTP endpoint serving /healthz, /readyz and /metrics.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Apply the TatorDeployment CRD at start-up (server-side apply) and wait until it is
    /// Established, so that upgrading the operator upgrades the CRD.
    #[arg(long)]
    install_crd: bool,
    /// Run the controller only while holding a Lease, so that several replicas can run with one
    /// active.
    #[arg(long)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "tator-operator")]
    lease_name: String,
    /// Namespace of the Lease (default: POD_NAMESPACE, else --namespace, else default).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a Lease stays valid after its last renewal: how long a crashed leader blocks a
    /// standby.
    #[arg(long, default_value_t = 10)]
    lease_duration: u64,
    /// Seconds before the Lease could be taken at which a leader that cannot renew steps down
    /// (the clock drift tolerated); less than --lease-duration. The leader renews every third of
    /// the difference.
    #[arg(long, default_value_t = 3)]
    lease_grace: u64,
    /// What podOverrides may change: `restricted` (PodSecurity restricted, no Secret references,
    /// never the operator's labels or service account) or `unrestricted` (anything but the
    /// operator's labels, service account and generated containers).
    #[arg(long, env = "OVERRIDES_POLICY", value_enum, default_value_t = tator_operator::overrides::Policy::Restricted)]
    overrides_policy: tator_operator::overrides::Policy,

    /// Whether a Secret a TatorDeployment names must consent with the annotation
    /// tator.io/tator-deployments (required), or any Secret of the namespace may be named (off).
    #[arg(long, env = "SECRET_CONSENT", value_enum, default_value_t = tator_operator::consent::Mode::Required)]
    secret_consent: tator_operator::consent::Mode,

    /// Identity in the Lease (default: POD_NAME, else host name and a random suffix).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller (uses the in-cluster config or KUBECONFIG).
    Run(Box<RunArgs>),
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

/// Writes `text` to standard output; a reader that stops early (`render ... | head`) is not an
/// error (print! would panic on the closed pipe).
fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn run_cli() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Crd => write_stdout(&render::crd_yaml()?),
        Cmd::Render { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            write_stdout(&render::render(&text)?)
        }
        Cmd::Run(args) => {
            let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
                .with_context(|| format!("invalid log level {:?}", args.log_level))?;
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if args.json_logs {
                builder.json().with_current_span(true).init();
            } else {
                builder.init();
            }
            if args.namespace.iter().any(|n| n == "kube-system") {
                anyhow::bail!(
                    "--namespace: kube-system is not watched (the operator's rights there would reach the cluster's own components)"
                );
            }
            if args.leader_election
                && (args.lease_grace == 0 || args.lease_grace >= args.lease_duration)
            {
                anyhow::bail!("--lease-grace must be at least 1 and less than --lease-duration");
            }
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(run(*args))
        }
    }
}

/// `run`: the health endpoint, the CRD, then the controller (while leading, with
/// `--leader-election`).
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let health = Arc::new(HealthState::new());
    let metrics = Arc::new(Metrics::new());
    let mut server = tokio::spawn(health::serve(
        args.metrics_addr,
        health.clone(),
        Some(metrics.router()),
    ));
    let result = tokio::select! {
        served = &mut server => match served {
            Ok(Ok(())) => Err(anyhow::anyhow!("the health server stopped")),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(anyhow::anyhow!("the health server task failed: {e}")),
        },
        result = operate(&args, &health, metrics.clone()) => result,
    };
    server.abort();
    result
}

async fn operate(
    args: &RunArgs,
    health: &Arc<HealthState>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<()> {
    let config = kube::Config::infer()
        .await
        .context("reading the Kubernetes configuration")?;
    // Every request is counted into tator_operator_kubernetes_requests_total.
    let counts = RequestCounts::exported(metrics.api_requests.clone());
    let (client, _) = counted_client_with(config, counts).context("connecting to Kubernetes")?;
    info!(
        version = env!("CARGO_PKG_VERSION"),
        "tator-operator starting"
    );
    if args.install_crd {
        crd_install::install(&client, Duration::from_secs(60)).await?;
    }
    // One controller per watched namespace (or one for every namespace), sharing the metrics.
    let scopes: Vec<Option<String>> = if args.namespace.is_empty() {
        vec![None]
    } else {
        args.namespace.iter().cloned().map(Some).collect()
    };
    let ctxs: Vec<Arc<controller::Context>> = scopes
        .iter()
        .map(|ns| {
            let settings = controller::Settings {
                namespace: ns.clone(),
                concurrency: args.concurrency,
                resync: Duration::from_secs(600),
                debounce: controller::DEBOUNCE,
                overrides: args.overrides_policy,
                secret_consent: args.secret_consent,
                operator_namespace: std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|n| !n.is_empty()),
            };
            Arc::new(controller::Context::with_metrics(
                client.clone(),
                settings,
                metrics.clone(),
            ))
        })
        .collect();
    if !args.leader_election {
        health.set_role(Role::Leader);
        lead(&client, &scopes, ctxs, health).await;
        return Ok(());
    }
    elected(args, client, &scopes, ctxs, health).await
}

/// Runs the controllers until they stop (SIGTERM or SIGINT), marking the health state synced once
/// every watched kind could be listed in every watched namespace.
async fn lead(
    client: &Client,
    scopes: &[Option<String>],
    ctxs: Vec<Arc<controller::Context>>,
    health: &Arc<HealthState>,
) {
    let sync = tokio::spawn(mark_synced(client.clone(), scopes.to_vec(), health.clone()));
    futures::future::join_all(ctxs.into_iter().map(controller::run)).await;
    sync.abort();
}

/// Leader election on a Lease: stand by until the Lease is ours, run the controller while it stays
/// ours, release it on SIGTERM. A leader that cannot renew within its renew deadline (its own
/// clock; transient errors are retried until then) stops the controller before a standby could
/// take the Lease, and exits with an error (its pod restarts and stands again), so two replicas
/// never act together.
async fn elected(
    args: &RunArgs,
    client: Client,
    scopes: &[Option<String>],
    ctxs: Vec<Arc<controller::Context>>,
    health: &Arc<HealthState>,
) -> anyhow::Result<()> {
    use tator_operator::leader::{Attempt, Elector, Settings};
    let namespace = args
        .lease_namespace
        .clone()
        .or_else(|| args.namespace.first().cloned())
        .unwrap_or_else(|| "default".into());
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let mut elector = Elector::new(
        client.clone(),
        Settings::new(
            &args.lease_name,
            &namespace,
            &identity,
            args.lease_duration,
            args.lease_grace,
        ),
    );
    let retry = elector.settings().retry;
    health.set_role(Role::Standby);
    info!(lease = %args.lease_name, %namespace, %identity, "standing by for the lease");
    let mut shutdown = shutdown_signal();
    loop {
        tokio::select! {
            attempt = elector.try_acquire_or_renew(retry) => match attempt {
                Ok(Attempt::Held) => break,
                Ok(Attempt::HeldBy(_)) => tokio::time::sleep(retry).await,
                Err(e) => {
                    warn!(error = %e, "could not read the lease; retrying");
                    tokio::time::sleep(retry).await;
                }
            },
            () = &mut shutdown => {
                info!("stopping before acquiring the lease");
                health.set_role(Role::Stopping);
                return Ok(());
            }
        }
    }
    info!(%identity, "acquired the lease: leading");
    health.set_role(Role::Leader);
    let renew = async {
        loop {
            tokio::time::sleep(retry).await;
            loop {
                let remaining = elector.remaining();
                if remaining.is_zero() {
                    return format!(
                        "could not renew the lease within {} s",
                        elector.settings().renew_deadline.as_secs()
                    );
                }
                match elector.try_acquire_or_renew(remaining.min(retry)).await {
                    Ok(Attempt::Held) => break,
                    Ok(Attempt::HeldBy(other)) => {
                        return format!("{other} holds the lease");
                    }
                    Err(e) => {
                        // Ridden out until the renew deadline.
                        warn!(error = %e, remaining_ms = remaining.as_millis(), "could not renew the lease; retrying");
                        tokio::time::sleep(Duration::from_millis(500).min(elector.remaining()))
                            .await;
                    }
                }
            }
        }
    };
    let lost = tokio::select! {
        () = lead(&client, scopes, ctxs, health) => None,
        reason = renew => Some(reason),
    };
    health.set_role(Role::Stopping);
    match lost {
        None => {
            // Stepping down: free the Lease so a standby need not wait for it to expire.
            if let Err(e) = elector.release(Duration::from_secs(5)).await {
                warn!(error = %e, "could not release the lease");
            } else {
                info!(%identity, "released the lease");
            }
            Ok(())
        }
        Some(reason) => {
            // Not ours any more (or unknown): leave the Lease alone and let the pod restart.
            error!(%reason, "lost leadership: stopped the controller");
            Err(anyhow::anyhow!("lost leadership: {reason}"))
        }
    }
}

/// SIGTERM or SIGINT (the controller has its own handler once it runs).
fn shutdown_signal() -> BoxFuture<'static, ()> {
    async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    .boxed()
}

fn default_identity() -> String {
    use rand::{Rng, distr::Alphanumeric};
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tator-operator".into());
    let suffix: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(6)
        .map(char::from)
        .collect();
    format!("{host}-{}", suffix.to_lowercase())
}

async fn can_list<K>(client: &Client, ns: Option<&str>, selector: &str) -> Result<(), String>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    api.list_metadata(&ListParams::default().labels(selector).limit(1))
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {e}", K::kind(&Default::default())))
}

/// Marks the health state synced once every kind the controller watches can be listed in its
/// scope (the API server answers and the RBAC allows it), retrying with backoff until then.
async fn mark_synced(client: Client, scopes: Vec<Option<String>>, health: Arc<HealthState>) {
    let children = format!("{}={}", labels::MANAGED_BY, labels::MANAGER);
    let sel = children.as_str();
    let mut delay = Duration::from_millis(200);
    loop {
        let mut failures: Vec<String> = Vec::new();
        for scope in &scopes {
            let ns = scope.as_deref();
            let results = [
                can_list::<TatorDeployment>(&client, ns, "").await,
                can_list::<Deployment>(&client, ns, sel).await,
                can_list::<StatefulSet>(&client, ns, sel).await,
                can_list::<Service>(&client, ns, sel).await,
                can_list::<ConfigMap>(&client, ns, sel).await,
                can_list::<Job>(&client, ns, sel).await,
                can_list::<CronJob>(&client, ns, sel).await,
                can_list::<HorizontalPodAutoscaler>(&client, ns, sel).await,
                can_list::<PodDisruptionBudget>(&client, ns, sel).await,
                can_list::<NetworkPolicy>(&client, ns, sel).await,
                can_list::<PersistentVolumeClaim>(&client, ns, sel).await,
            ];
            failures.extend(
                results
                    .into_iter()
                    .filter_map(Result::err)
                    .map(|e| match ns {
                        Some(ns) => format!("{ns}: {e}"),
                        None => e,
                    }),
            );
        }
        if failures.is_empty() {
            health.set_synced();
            info!("watches synced: ready");
            return;
        }
        warn!(failures = %failures.join("; "), "cannot list every watched kind yet");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
