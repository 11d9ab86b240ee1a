//! `tator-bench`: how fast the operator converges, how much it asks of the API server, and what
//! it costs, on a fresh local control plane (etcd, kube-apiserver, controllers, kwok). Prints a
//! report and writes it to `docs/benchmarks.md` (`make bench`).
//!
//! 1. Time from `kubectl apply` of N TatorDeployments to all children applied and to Ready, for
//!    N = 1 (repeated), 10 and 100, against the floor: `kubectl apply --server-side` of the same
//!    children (the `render` output).
//! 2. API requests by verb per reconcile (full apply, one-field changes with and without a
//!    rollout, no-op), counted by a layer on the operator's client and cross-checked with the
//!    API server's `apiserver_request_total`.
//! 3. Peak RSS and CPU seconds of the operator process at each N.
//! 4. Time to repair a deleted child.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tator_api::TatorDeployment;
use tator_operator::{
    client::{RequestCounts, counted_client},
    controller::{self, Context, Settings},
    render,
};
use tator_testbed::cluster::{Binaries, Cluster, ClusterOptions, FakeNode};

#[derive(Parser)]
#[command(about = "Benchmarks the Tator operator on a local control plane")]
struct Args {
    /// Numbers of TatorDeployments applied at once.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    sizes: Vec<usize>,
    /// Samples of the single-TatorDeployment run.
    #[arg(long, default_value_t = 5)]
    single_runs: usize,
    /// The operator binary to measure (a release build).
    #[arg(long, env = "TATOR_OPERATOR_BIN")]
    operator: PathBuf,
    /// Where to write the report (Markdown).
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// Skip both floors (for profiling the operator alone; the report's ratios are then empty).
    #[arg(long)]
    no_floors: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(args))
}

/// Nodes big enough for a hundred installations' pods (kwok fakes them all).
fn bench_nodes() -> Vec<FakeNode> {
    let mut nodes = FakeNode::defaults();
    for n in &mut nodes {
        for (k, v) in [("cpu", "4000"), ("memory", "64Ti"), ("pods", "3000")] {
            n.extra_capacity.insert(k.into(), v.into());
        }
    }
    nodes
}

struct Report {
    lines: Vec<String>,
}

impl Report {
    fn line(&mut self, s: impl Into<String>) {
        let s = s.into();
        println!("{s}");
        self.lines.push(s);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("tator-bench-").tempdir()?;
    let binaries = Binaries::locate()?;
    let kubectl = binaries.bin("kubectl");
    let mut options = ClusterOptions::new(dir.path());
    options.nodes = bench_nodes();
    let started = Instant::now();
    let mut cluster = Cluster::start(options, binaries).await?;
    eprintln!(
        "[bench] control plane ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let result = bench(&args, &cluster, &kubectl).await;
    cluster.stop();
    let report = result?;
    let text = report.lines.join("\n") + "\n";
    std::fs::write(&args.out, text).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("[bench] report written to {}", args.out.display());
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores ({cpu}), {:.0} GiB RAM",
        mem_kib as f64 / 1024.0 / 1024.0
    )
}

fn today() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn manifest(name: &str, ns: &str) -> Value {
    json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"version": "1.5.0", "domain": format!("{name}.example.com")}
    })
}

fn to_yaml(docs: &[Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in docs {
        out.push_str("---\n");
        // Quoted as kubectl's YAML 1.1 parser needs (`yes` stays a string).
        out.push_str(&render::to_yaml(d)?);
    }
    Ok(out)
}

/// `(kind, name)` of every child `render` produces for a manifest.
fn expected_children(td: &Value) -> anyhow::Result<BTreeSet<(String, String)>> {
    let td: TatorDeployment = serde_json::from_value(td.clone())?;
    Ok(render::render_values(&td)?
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap_or_default().to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

fn kubectl_apply(
    kubectl: &Path,
    kubeconfig: &Path,
    yaml: &str,
    server_side: bool,
) -> anyhow::Result<()> {
    use std::io::Write;
    let mut cmd = Command::new(kubectl);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"]);
    if server_side {
        cmd.args(["--server-side", "--field-manager=bench-floor"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(yaml.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn create_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
}

/// Names of the objects of each child kind in a namespace.
async fn existing(client: &Client, ns: &str) -> anyhow::Result<BTreeSet<(String, String)>> {
    async fn names<K>(
        client: &Client,
        ns: &str,
        kind: &str,
        out: &mut BTreeSet<(String, String)>,
    ) -> anyhow::Result<()>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        for o in api.list_metadata(&ListParams::default()).await?.items {
            out.insert((kind.to_string(), o.name_any()));
        }
        Ok(())
    }
    let mut out = BTreeSet::new();
    names::<Deployment>(client, ns, "Deployment", &mut out).await?;
    names::<StatefulSet>(client, ns, "StatefulSet", &mut out).await?;
    names::<Service>(client, ns, "Service", &mut out).await?;
    names::<ConfigMap>(client, ns, "ConfigMap", &mut out).await?;
    names::<Job>(client, ns, "Job", &mut out).await?;
    names::<PersistentVolumeClaim>(client, ns, "PersistentVolumeClaim", &mut out).await?;
    names::<k8s_openapi::api::batch::v1::CronJob>(client, ns, "CronJob", &mut out).await?;
    names::<k8s_openapi::api::core::v1::ServiceAccount>(client, ns, "ServiceAccount", &mut out)
        .await?;
    names::<k8s_openapi::api::rbac::v1::Role>(client, ns, "Role", &mut out).await?;
    names::<k8s_openapi::api::rbac::v1::RoleBinding>(client, ns, "RoleBinding", &mut out).await?;
    names::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(
        client,
        ns,
        "PodDisruptionBudget",
        &mut out,
    )
    .await?;
    names::<k8s_openapi::api::networking::v1::NetworkPolicy>(client, ns, "NetworkPolicy", &mut out)
        .await?;
    Ok(out)
}

/// Waits until `name` is Ready at its current generation.
async fn wait_ready(tds: &Api<TatorDeployment>, name: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let td = tds.get(name).await?;
        let observed = td.status.as_ref().and_then(|s| s.observed_generation);
        if ready(&td) && observed == td.metadata.generation {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!("the request benchmark's TatorDeployment did not become Ready");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready(td: &TatorDeployment) -> bool {
    td.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Peak RSS (KiB) and CPU seconds (user + system) of a process.
fn proc_stats(pid: u32) -> (u64, f64) {
    let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may contain spaces) start after ") ".
            let rest = s.rsplit_once(") ")?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    (hwm, cpu)
}

struct Operator {
    child: Child,
}

impl Operator {
    fn start(bin: &Path, kubeconfig: &Path, ns: &str, log: &Path) -> anyhow::Result<Self> {
        Self::start_with(
            bin,
            kubeconfig,
            log,
            &["--namespace", ns, "--log-level", "warn"],
        )
    }

    fn start_with(
        bin: &Path,
        kubeconfig: &Path,
        log: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = Command::new(bin)
            .arg("run")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("starting the operator")?;
        Ok(Self { child })
    }

    fn stats(&self) -> (u64, f64) {
        proc_stats(self.child.id())
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if self.exited() {
            // Reaped already: its pid may belong to another process by now.
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Deployments and StatefulSets in `ns` whose pods are not all ready, and the Jobs there
/// that have not succeeded (empty: everything is done).
async fn workloads_pending(client: &Client, ns: &str) -> anyhow::Result<Vec<String>> {
    let lp = ListParams::default();
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let sets = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let jobs = Api::<Job>::namespaced(client.clone(), ns).list(&lp).await?;
    let short = |spec: Option<i32>, ready: Option<i32>| ready.unwrap_or(0) < spec.unwrap_or(1);
    let mut out = Vec::new();
    for d in &deployments.items {
        if short(
            d.spec.as_ref().and_then(|s| s.replicas),
            d.status.as_ref().and_then(|s| s.ready_replicas),
        ) {
            out.push(format!("Deployment/{}", d.name_any()));
        }
    }
    for s in &sets.items {
        if short(
            s.spec.as_ref().and_then(|s| s.replicas),
            s.status.as_ref().and_then(|s| s.ready_replicas),
        ) {
            out.push(format!("StatefulSet/{}", s.name_any()));
        }
    }
    for j in &jobs.items {
        if j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) < 1 {
            out.push(format!("Job/{}", j.name_any()));
        }
    }
    Ok(out)
}

/// The staged floor: what the operator does for a new installation, done by `kubectl apply
/// --server-side` tier by tier with the same waits and no operator: the data tier until its
/// workloads are ready, the migrations Job until it has succeeded, then the web tier until its
/// Deployments are ready (the analogue of Ready). Seconds for all N.
async fn staged_floor(
    cluster: &Cluster,
    kubectl: &Path,
    names: &[String],
    label: &str,
) -> anyhow::Result<f64> {
    let client = cluster.client().await?;
    let ns = format!("staged-{label}");
    create_namespace(&client, &ns).await?;
    let mut tiers: [Vec<Value>; 3] = Default::default();
    for name in names {
        let td: TatorDeployment = serde_json::from_value(manifest(name, &ns))?;
        for (i, tier) in render::render_tiers(&td)?.into_iter().enumerate() {
            for mut v in tier {
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
                tiers[i].push(v);
            }
        }
    }
    let timeout = Duration::from_secs(120 + 3 * names.len() as u64);
    let t0 = Instant::now();
    for tier in &tiers {
        kubectl_apply(kubectl, &cluster.kubeconfig, &to_yaml(tier)?, true)?;
        loop {
            let pending = workloads_pending(&client, &ns).await?;
            if pending.is_empty() {
                break;
            }
            if t0.elapsed() > timeout {
                bail!(
                    "{label}: the staged floor did not finish in {} s: {} not done",
                    timeout.as_secs(),
                    pending.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let took = t0.elapsed().as_secs_f64();
    delete_namespace(&client, &ns).await;
    Ok(took)
}

/// One convergence run of N TatorDeployments.
struct Run {
    n: usize,
    children: Vec<f64>,
    ready: Vec<f64>,
    floor: f64,
    /// The staged floor (data tier, migrations, web tier, each waited for).
    staged: f64,
    rss_kib: u64,
    cpu_s: f64,
    repair: Option<f64>,
}

async fn converge(
    cluster: &Cluster,
    kubectl: &Path,
    operator_bin: &Path,
    n: usize,
    label: &str,
    repair: bool,
    floors: bool,
) -> anyhow::Result<Run> {
    let client = cluster.client().await?;
    let ns = format!("bench-{label}");
    let floor_ns = format!("floor-{label}");
    let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();

    // The floor: the same children applied by kubectl --server-side, without owner references
    // (their owner does not exist in that namespace).
    let (floor, staged) = if floors {
        create_namespace(&client, &floor_ns).await?;
        let mut floor_docs = Vec::new();
        for name in &names {
            let td: TatorDeployment = serde_json::from_value(manifest(name, &floor_ns))?;
            for mut v in render::render_values(&td)? {
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
                floor_docs.push(v);
            }
        }
        let floor_yaml = to_yaml(&floor_docs)?;
        let t0 = Instant::now();
        kubectl_apply(kubectl, &cluster.kubeconfig, &floor_yaml, true)?;
        let floor = t0.elapsed().as_secs_f64();
        delete_namespace(&client, &floor_ns).await;
        let staged = staged_floor(cluster, kubectl, &names, label).await?;
        (floor, staged)
    } else {
        (0.0, 0.0)
    };

    // The operator.
    create_namespace(&client, &ns).await?;
    let log = cluster.dir.join(format!("operator-{label}.log"));
    let op = Operator::start(operator_bin, &cluster.kubeconfig, &ns, &log)?;
    // Let it start its watches before the clock starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let docs: Vec<Value> = names.iter().map(|n| manifest(n, &ns)).collect();
    let mut wanted: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for (name, d) in names.iter().zip(&docs) {
        wanted.insert(name.clone(), expected_children(d)?);
    }
    let yaml = to_yaml(&docs)?;
    let t0 = Instant::now();
    kubectl_apply(kubectl, &cluster.kubeconfig, &yaml, false)?;
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let mut children_at: BTreeMap<String, f64> = BTreeMap::new();
    let mut ready_at: BTreeMap<String, f64> = BTreeMap::new();
    let timeout = Duration::from_secs(120 + 3 * n as u64);
    while ready_at.len() < n || children_at.len() < n {
        if t0.elapsed() > timeout {
            bail!(
                "{label}: only {} of {n} Ready and {} with all children after {} s (operator log: {})",
                ready_at.len(),
                children_at.len(),
                timeout.as_secs(),
                log.display()
            );
        }
        let now = t0.elapsed().as_secs_f64();
        if children_at.len() < n {
            let have = existing(&client, &ns).await?;
            for (name, want) in &wanted {
                if !children_at.contains_key(name) && want.is_subset(&have) {
                    children_at.insert(name.clone(), now);
                }
            }
        }
        for td in tds.list(&ListParams::default()).await?.items {
            if ready(&td) {
                ready_at.entry(td.name_any()).or_insert(now);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Repair: delete a child, time until it is back.
    let repair_s = if repair {
        let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let mut samples = Vec::new();
        for _ in 0..5 {
            let victim = "t0-ui";
            let old_uid = deploys.get(victim).await?.uid();
            deploys.delete(victim, &DeleteParams::foreground()).await?;
            let t = Instant::now();
            loop {
                if let Some(d) = deploys.get_opt(victim).await?
                    && d.uid() != old_uid
                {
                    break;
                }
                if t.elapsed() > Duration::from_secs(60) {
                    bail!("the deleted Deployment was not re-created in 60 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples.push(t.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Some(percentile(&samples, 50.0))
    } else {
        None
    };
    let (rss_kib, cpu_s) = op.stats();
    drop(op);
    delete_namespace(&client, &ns).await;
    Ok(Run {
        n,
        children: children_at.into_values().collect(),
        ready: ready_at.into_values().collect(),
        floor,
        staged,
        rss_kib,
        cpu_s,
        repair: repair_s,
    })
}

/// `apiserver_request_total` by verb for the resources the operator writes.
async fn server_counts(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let req = http_get("/metrics")?;
    let text = client.request_text(req).await?;
    let resources = [
        "deployments",
        "statefulsets",
        "services",
        "configmaps",
        "jobs",
        "persistentvolumeclaims",
        "poddisruptionbudgets",
        "horizontalpodautoscalers",
        "secrets",
        "tatordeployments",
        "cronjobs",
        "serviceaccounts",
        "roles",
        "rolebindings",
    ];
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with("apiserver_request_total{") {
            continue;
        }
        let label = |key: &str| -> Option<String> {
            let start = line.find(&format!("{key}=\""))? + key.len() + 2;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_string())
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if !resources.contains(&resource.as_str()) {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(verb).or_insert(0.0) += value;
    }
    Ok(out)
}

fn http_get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

fn diff(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn fmt_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn writes(m: &BTreeMap<String, u64>) -> u64 {
    m.iter()
        .filter(|(v, _)| !matches!(v.as_str(), "get" | "list" | "watch"))
        .map(|(_, n)| n)
        .sum()
}

/// Waits until no reconcile started for `quiet`.
async fn settle(ctx: &Context, quiet: Duration, limit: Duration) {
    let start = Instant::now();
    let mut last = ctx.reconcile_count();
    let mut since = Instant::now();
    while start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = ctx.reconcile_count();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

struct RequestRow {
    case: &'static str,
    reconciles: u64,
    counts: BTreeMap<String, u64>,
    /// Requests other than watches by (verb, resource).
    by_resource: BTreeMap<String, u64>,
}

/// Requests other than watches by "verb resource".
fn by_resource(counts: &RequestCounts) -> BTreeMap<String, u64> {
    counts
        .snapshot()
        .into_iter()
        .filter(|((verb, _), _)| verb != "watch")
        .map(|((verb, resource), n)| (format!("{verb} {resource}"), n))
        .collect()
}

/// Requests other than watches.
fn requests_total(m: &BTreeMap<String, u64>) -> u64 {
    m.iter()
        .filter(|(v, _)| v.as_str() != "watch")
        .map(|(_, n)| n)
        .sum()
}

/// The operator's request counts and reconcile count before a case; `row` gives the case's share.
struct Mark {
    by_verb: BTreeMap<String, u64>,
    reconciles: u64,
    by_resource: BTreeMap<String, u64>,
}

impl Mark {
    fn new(counts: &RequestCounts, ctx: &Context) -> Self {
        Mark {
            by_verb: counts.by_verb(),
            reconciles: ctx.reconcile_count(),
            by_resource: by_resource(counts),
        }
    }

    fn row(self, case: &'static str, counts: &RequestCounts, ctx: &Context) -> RequestRow {
        RequestRow {
            case,
            reconciles: ctx.reconcile_count() - self.reconciles,
            counts: diff(&self.by_verb, &counts.by_verb()),
            by_resource: diff(&self.by_resource, &by_resource(counts)),
        }
    }
}

/// Requests per reconcile, counted on the operator's side (in-process controller).
async fn requests(
    cluster: &Cluster,
) -> anyhow::Result<(Vec<RequestRow>, BTreeMap<String, f64>, u64)> {
    let admin = cluster.client().await?;
    let kc = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let (client, counts): (Client, RequestCounts) = counted_client(config)?;
    let ns = "bench-requests";
    create_namespace(&admin, ns).await?;
    let ctx = Arc::new(Context::new(
        client,
        Settings {
            namespace: Some(ns.into()),
            concurrency: 4,
            resync: Duration::from_secs(600),
            ..Settings::default()
        },
    ));
    let task = tokio::spawn(controller::run(ctx.clone()));
    settle(&ctx, Duration::from_secs(1), Duration::from_secs(5)).await;
    let mut rows = Vec::new();
    let tds: Api<TatorDeployment> = Api::namespaced(admin.clone(), ns);

    // Full apply: from creation to Ready and quiet.
    let server_before = server_counts(&admin).await?;
    let mark = Mark::new(&counts, &ctx);
    let td: TatorDeployment = serde_json::from_value(manifest("t", ns))?;
    tds.create(&PostParams::default(), &td).await?;
    wait_ready(&tds, "t").await?;
    settle(&ctx, Duration::from_secs(3), Duration::from_secs(30)).await;
    let full = mark.row("full apply (create to Ready)", &counts, &ctx);
    let full_apply = full.counts.get("apply").copied().unwrap_or(0);
    rows.push(full);
    let server_after = server_counts(&admin).await?;
    let mut server_diff = BTreeMap::new();
    for (k, v) in &server_after {
        let d = v - server_before.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            server_diff.insert(k.clone(), d);
        }
    }

    // One field.
    let mark = Mark::new(&counts, &ctx);
    tds.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ui": {"replicas": 2}}})),
    )
    .await?;
    // The change rolls the UI Deployment: Ready goes False until its new pod is ready.
    wait_ready(&tds, "t").await?;
    settle(&ctx, Duration::from_secs(3), Duration::from_secs(30)).await;
    rows.push(mark.row(
        "one-field change with a rollout (ui.replicas)",
        &counts,
        &ctx,
    ));

    // One field that rolls no pod: a maintenance CronJob's schedule. One child changes, and
    // nothing becomes unready.
    let mark = Mark::new(&counts, &ctx);
    tds.patch(
        "t",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"maintenance": {"jobs": {"sizer": {"schedule": "15 * * * *"}}}}}),
        ),
    )
    .await?;
    wait_ready(&tds, "t").await?;
    settle(&ctx, Duration::from_secs(3), Duration::from_secs(30)).await;
    rows.push(mark.row(
        "one-field change, no rollout (a CronJob's schedule)",
        &counts,
        &ctx,
    ));

    // No-op: a foreign annotation on a child triggers a reconcile with nothing to do.
    settle(&ctx, Duration::from_secs(3), Duration::from_secs(30)).await;
    let mark = Mark::new(&counts, &ctx);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    cms.patch(
        "t-nginx-conf",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"example.com/poke": "1"}}})),
    )
    .await?;
    settle(&ctx, Duration::from_secs(3), Duration::from_secs(30)).await;
    rows.push(mark.row("no-op (a child annotated by someone else)", &counts, &ctx));
    task.abort();
    delete_namespace(&admin, ns).await;
    Ok((rows, server_diff, full_apply))
}

async fn bench(args: &Args, cluster: &Cluster, kubectl: &Path) -> anyhow::Result<Report> {
    let admin = cluster.client().await?;
    tator_testbed::support::install_crds(
        &admin,
        &tator_testbed::support::workspace_root().join("crds"),
    )
    .await?;
    let mut report = Report { lines: Vec::new() };
    report.line("# Benchmarks");
    report.line("");
    report.line(format!(
        "Measured {} on {} by `make bench` (`crates/tator-bench`), on a fresh local control plane \
         (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok built from their Go \
         modules; pods are kwok's, so \"Ready\" includes kwok's simulated start-up and the migrations \
         Job's simulated run). The operator is the release binary, run as its own process, watching \
         one namespace, concurrency 4. Every figure is from this one run: treat differences under \
         ~20% as noise on a 2-core machine.",
        today(),
        machine()
    ));
    report.line("");

    // 1, 3, 4: convergence runs.
    let mut runs = Vec::new();
    for &n in &args.sizes {
        let repeats = if n == 1 { args.single_runs.max(1) } else { 1 };
        let mut merged: Option<Run> = None;
        for r in 0..repeats {
            eprintln!("[bench] {n} TatorDeployment(s), run {}", r + 1);
            let run = converge(
                cluster,
                kubectl,
                &args.operator,
                n,
                &format!("{n}-{r}"),
                n == 1 && r == 0,
                !args.no_floors,
            )
            .await?;
            merged = Some(match merged {
                None => run,
                Some(mut m) => {
                    m.children.extend(run.children);
                    m.ready.extend(run.ready);
                    m.floor = m.floor.max(run.floor);
                    m.staged = m.staged.max(run.staged);
                    m.rss_kib = m.rss_kib.max(run.rss_kib);
                    m.cpu_s = m.cpu_s.max(run.cpu_s);
                    m
                }
            });
        }
        if let Some(m) = merged {
            runs.push(m);
        }
    }
    report.line("## Convergence");
    report.line("");
    report.line("From `kubectl apply` of N TatorDeployments (one multi-document file) to every child of each one existing (the `render` output: Deployments, StatefulSets, Services, ConfigMaps, PDBs, claims, the bucket Job, the maintenance CronJobs, the workflow ServiceAccounts, Roles and RoleBindings), and to `Ready=True`. The floor is `kubectl apply --server-side` of all those children at once (no operator). Single-installation figures are over the repeated runs.");
    report.line("");
    report.line("The staged floor does what the operator does for a new installation with `kubectl apply --server-side` alone, tier by tier with the same waits: the data tier until its workloads are ready, the migrations Job until it has succeeded, the web tier until its Deployments are ready. Ready / staged floor is the operator's own cost.");
    report.line("");
    report.line("| N | children applied p50 / p99 (s) | Ready p50 / p99 (s) | floor, all children (s) | children p99 / floor | staged floor (s) | Ready p99 / staged floor | operator peak RSS (MiB) | operator CPU (s) |");
    report.line("|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        let c99 = percentile(&r.children, 99.0);
        let r99 = percentile(&r.ready, 99.0);
        report.line(format!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {:.1}× | {:.2} | {:.2}× | {:.1} | {:.2} |",
            r.n,
            percentile(&r.children, 50.0),
            c99,
            percentile(&r.ready, 50.0),
            r99,
            r.floor,
            c99 / r.floor,
            r.staged,
            r99 / r.staged,
            r.rss_kib as f64 / 1024.0,
            r.cpu_s
        ));
    }
    report.line("");
    if let Some(r) = runs.iter().find_map(|r| r.repair) {
        report.line(format!(
            "**Repair.** A deleted child (the UI Deployment) is back after {r:.2} s (p50 of 5), through the Deployment watch."
        ));
        report.line("");
    }

    // 2: requests.
    eprintln!("[bench] requests per reconcile");
    let (rows, server, full_apply) = requests(cluster).await?;
    report.line("## API requests");
    report.line("");
    report.line("Counted by a layer on the operator's client (in-process controller, one TatorDeployment). Verbs follow the API server's (`apply` is server-side apply).");
    report.line("");
    report.line("| case | reconciles | requests by verb | writes |");
    report.line("|---|---|---|---|");
    for row in &rows {
        report.line(format!(
            "| {} | {} | {} | {} |",
            row.case,
            row.reconciles,
            fmt_counts(&row.counts),
            writes(&row.counts)
        ));
    }
    report.line("");
    let children = expected_children(&manifest("t", "bench-requests"))?.len();
    report.line(format!(
        "By resource (the installation has {children} children; `list` of a kind the operator watches would be a request a cache could answer):"
    ));
    report.line("");
    for row in &rows {
        report.line(format!("- {}: {}", row.case, fmt_counts(&row.by_resource)));
    }
    report.line("");
    report.line(format!(
        "Cross-check, full apply: the API server's `apiserver_request_total` for the operator's resources grew by {} (all clients: the controller-manager, scheduler and kwok also read and update these kinds); its `APPLY` count grew by {} against {full_apply} server-side applies counted by the operator.",
        server
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        server.get("APPLY").copied().unwrap_or(0.0)
    ));
    report.line("");

    // Queue scaling.
    eprintln!("[bench] queue scaling");
    let (up, down, cooldown) = queue_scaling(cluster).await?;
    report.line("## Transcode workers on queue depth");
    report.line("");
    report.line(format!(
        "The operator's own scaler (`src/scaler.rs`, reading every {} s) on a real Redis (Debian's `redis-server` on loopback) holding an rq queue, and a worker Deployment on kwok's nodes (minReplicas 0, maxReplicas 4, jobsPerWorker 1, cooldown {} s). 20 jobs pushed at once: the Deployment asks for 4 workers after **{up}** (all 4 Ready after the figure in brackets). Queue emptied: back to 0 after **{down:.1} s** (the cool-down included). The end-to-end journey (`tests/e2e.rs`) shows the same with Tator's real service and workers.",
        tator_operator::scaler::INTERVAL.as_secs(),
        cooldown.as_secs()
    ));
    report.line("");

    // Hostile endpoints.
    eprintln!("[bench] hostile endpoints");
    let (grew, body_s, silent_s) = hostile_endpoints().await?;
    report.line("## Hostile endpoints");
    report.line("");
    report.line(format!(
        "The Elasticsearch check (`checks::check_elasticsearch`, with credentials) run in this process against loopback servers: one announcing and sending a 1 GiB body is refused after {body_s:.1} s for +{grew:.1} MiB of resident memory (the body is read up to a 1 MiB bound); one that never answers is given up on after {silent_s:.1} s. "
    ));
    report.line("");
    eprintln!("[bench] leader failover");
    let (stepped_down, led) = failover(cluster, &args.operator).await?;
    report.line("## Leader failover");
    report.line("");
    report.line(format!(
        "Two operators with leader election (lease 10 s, grace 3 s); the leader reaches the API server through a relay that is then frozen (requests hang, connections stay open). The leader stepped down on its own clock after {stepped_down:.1} s (its renew deadline is 7 s after its last renewal) and the standby led after {led:.1} s (it takes the Lease only after a whole lease duration without a renewal). `tests/packaging.rs` checks the same failover with `/readyz` sampled every 50 ms: never two leaders."
    ));
    report.line("");

    // Targets.
    report.line("## Against the targets");
    report.line("");
    let one = runs.iter().find(|r| r.n == 1);
    let hundred = runs.iter().find(|r| r.n == 100);
    let noop = rows.last().map(|r| writes(&r.counts)).unwrap_or(u64::MAX);
    report.line("| target | measured | |");
    report.line("|---|---|---|");
    let mut target = |what: &str, ok: Option<bool>, got: String| {
        let verdict = match ok {
            Some(true) => "met",
            Some(false) => "not met",
            None => "not measured",
        };
        report.line(format!("| {what} | {got} | {verdict} |"));
    };
    if let Some(r) = one {
        let p99 = percentile(&r.children, 99.0);
        target(
            "1 TatorDeployment applied in ≤ 2 s p99",
            Some(p99 <= 2.0),
            format!("{p99:.2} s"),
        );
        target(
            "… within 1.3× the floor",
            Some(p99 <= 1.3 * r.floor),
            format!("{:.1}×", p99 / r.floor),
        );
        let ready = percentile(&r.ready, 99.0);
        target(
            "1 Ready ≤ 1.2× the staged floor",
            Some(ready <= 1.2 * r.staged),
            format!("{:.2}×", ready / r.staged),
        );
    }
    if let Some(r) = hundred {
        let p99 = percentile(&r.children, 99.0);
        target(
            "100 applied in ≤ 60 s",
            Some(p99 <= 60.0),
            format!("{p99:.1} s"),
        );
        let ready = percentile(&r.ready, 99.0);
        target(
            "100 Ready ≤ 1.3× the staged floor",
            Some(ready <= 1.3 * r.staged),
            format!("{:.2}×", ready / r.staged),
        );
        let mib = r.rss_kib as f64 / 1024.0;
        target(
            "RSS ≤ 50 MiB at 100",
            Some(mib <= 50.0),
            format!("{mib:.1} MiB"),
        );
    }
    if let Some(full) = rows.first() {
        let children = expected_children(&manifest("t", "bench-requests"))?
            .len()
            .max(1);
        let per_child = requests_total(&full.counts) as f64 / children as f64;
        target(
            "API requests from create to Ready ≤ 2 per child",
            Some(per_child <= 2.0),
            format!(
                "{per_child:.2} ({} for {children})",
                requests_total(&full.counts)
            ),
        );
    }
    if let Some(one) = rows.get(2) {
        // A CronJob's schedule changes one child; the status write (observedGeneration) is the
        // + 1. (A change that rolls pods also turns Ready False and back: see below.)
        let w = writes(&one.counts);
        target(
            "≤ changed children + 1 writes on a one-field change",
            Some(w <= 2),
            format!("{w} (1 child changed)"),
        );
    }
    target(
        "0 writes per no-op reconcile",
        Some(noop == 0),
        format!("{noop}"),
    );
    if let Some(r) = runs.iter().find_map(|r| r.repair) {
        target("repair ≤ 2 s", Some(r <= 2.0), format!("{r:.2} s"));
    }
    report.line("");
    report.line("What limits it: a new installation is built in stages by design: the data tier first, then the migrations Job, and the API, worker and UI Deployments only once that Job has succeeded (a release serves only once migrated). So \"children applied\" includes the migrations Job's run (simulated by kwok here), which the floor skips. Within a stage, objects of one kind are applied concurrently and kinds in dependency order. Compare the operator's CPU seconds with the wall time: the rest is waiting on the API server, which shares the machine with etcd, the controller-manager, the scheduler and kwok. The one-field target is measured on a change that rolls no pod (a CronJob's schedule): the child, and one status write for the new generation. A change that rolls pods (ui.replicas) costs more by contract, not by waste: `Ready` turns False while the new pods start and True once they serve, one status write each, and each phase change is one Event. The requests from create to Ready are mostly one server-side apply per child; the rest is one status write per reconcile that changed the status, one read per reconcile of the in-cluster store's keys and a first read of each Secret it generates or composes (Secrets are not watched: that would take the right to list them all). Those Secrets are checked again at the first reconcile more than a minute after their last check (`cache::SECRET_TRUSTED_FOR`): reads, never writes, which is what a no-op reconcile's reads beyond the store's keys are. Reconciles wait 100 ms for an installation's watch events to settle, so each step's burst of events (a StatefulSet's pods turning ready, the migrations Job completing) is one reconcile. Peak RSS grows with the watched copies of the children, which is what makes no-op reconciles free of writes, and with the live objects the running reconciles hold until they write their status. Both are kept small: managed fields are stripped (the TatorDeployments' own too), the CronJobs (16 per installation, each with Tator's whole environment) are watched as metadata only, and Deployments and StatefulSets are kept as their metadata, replicas and status; those are compared by their generation (docs/operations.md). Most of what remains is the children's metadata (labels, annotations and owner, about 2 KB an object in memory). The operator binary measured here is a glibc build; the image is a static musl build, whose allocator keeps no per-thread arenas.");
    Ok(report)
}

/// The operator's scaler against a real Redis and a kwok Deployment: seconds from 20 jobs
/// queued to 4 workers wanted (and ready), and from an empty queue back to none.
async fn queue_scaling(cluster: &Cluster) -> anyhow::Result<(String, f64, Duration)> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let client = cluster.client().await?;
    let ns = "bench-scaling";
    create_namespace(&client, ns).await?;
    let redis =
        tokio::task::spawn_blocking(|| tator_testbed::services::Redis::start(None)).await??;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "workers"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "workers"}},
                 "template": {"metadata": {"labels": {"app": "workers"}},
                              "spec": {"containers": [{"name": "w", "image": "worker"}]}}},
    }))?;
    deployments.create(&PostParams::default(), &d).await?;
    let cooldown = Duration::from_secs(10);
    let scalers = tator_operator::scaler::Scalers::new(client.clone());
    scalers.sync(
        "bench",
        vec![tator_operator::builders::queue_workers::Target {
            namespace: ns.into(),
            deployment: "workers".into(),
            redis: tator_operator::builders::queue_workers::QueueRedis {
                host: "127.0.0.1".into(),
                port: redis.port,
                tls: false,
                password: None,
            },
            queue: "transcodes".into(),
            min: 0,
            max: 4,
            jobs_per_worker: 1,
            cooldown,
        }],
    );
    let command = |args: &[&str]| {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        out
    };
    let redis_do = |cmd: String| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", redis.port)).await?;
        stream.write_all(cmd.as_bytes()).await?;
        let mut line = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut line)
            .await?;
        anyhow::Ok(line)
    };
    let replicas = |ready: bool| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("workers").await?;
            anyhow::Ok(if ready {
                d.status.and_then(|s| s.ready_replicas).unwrap_or(0)
            } else {
                d.spec.and_then(|s| s.replicas).unwrap_or(0)
            })
        }
    };
    let jobs: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    let mut push = vec!["RPUSH", "rq:queue:transcodes"];
    push.extend(jobs.iter().map(String::as_str));
    let started = Instant::now();
    redis_do(command(&push)).await?;
    let limit = Duration::from_secs(120);
    while replicas(false).await? < 4 {
        anyhow::ensure!(
            started.elapsed() < limit,
            "the scaler did not scale up within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wanted = started.elapsed().as_secs_f64();
    while replicas(true).await? < 4 {
        anyhow::ensure!(
            started.elapsed() < limit,
            "the workers were not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready = started.elapsed().as_secs_f64();
    let emptied = Instant::now();
    redis_do(command(&["DEL", "rq:queue:transcodes"])).await?;
    while replicas(false).await? > 0 {
        anyhow::ensure!(
            emptied.elapsed() < limit,
            "the scaler did not scale down within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let down = emptied.elapsed().as_secs_f64();
    scalers.stop("bench");
    delete_namespace(&client, ns).await;
    drop(redis);
    Ok((format!("{wanted:.1} s ({ready:.1} s)"), down, cooldown))
}

/// A loopback server answering every connection with a 1 GiB body (`endless`) or nothing.
async fn hostile_server(endless: bool) -> anyhow::Result<u16> {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !endless {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{\"status\":\"green\",\"x\":\"";
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'a'; 64 * 1024];
                for _ in 0..(1 << 14) {
                    if sock.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

/// The role an operator's `/readyz` reports when it answers 200 (`leader: watches synced`,
/// `standby: waiting for the lease`).
async fn role(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let ok = head.split_whitespace().nth(1) == Some("200");
    let role = body.split(':').next()?.trim();
    ok.then(|| role.to_string())
}

/// Seconds from freezing the leader's connection to the API server until the leader exits and
/// until the standby reports itself leader.
async fn failover(cluster: &Cluster, operator: &Path) -> anyhow::Result<(f64, f64)> {
    use tator_testbed::support::{Freezer, through, unused_port, wait_for};
    let admin = cluster.client().await?;
    let ns = "bench-failover";
    create_namespace(&admin, ns).await?;
    let (_, upstream) = through(&cluster.kubeconfig, 0, &cluster.dir)?;
    let freezer = Freezer::start(upstream).await?;
    let (relayed, _) = through(&cluster.kubeconfig, freezer.port, &cluster.dir)?;
    let start = |name: &str, kubeconfig: &Path| -> anyhow::Result<(Operator, u16)> {
        let port = unused_port();
        let args = [
            format!("--namespace={ns}"),
            format!("--lease-namespace={ns}"),
            format!("--metrics-addr=127.0.0.1:{port}"),
            format!("--identity={name}"),
            "--leader-election".into(),
            "--lease-duration=10".into(),
            "--lease-grace=3".into(),
            "--log-level=warn".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = cluster.dir.join(format!("operator-{name}.log"));
        Ok((
            Operator::start_with(operator, kubeconfig, &log, &args)?,
            port,
        ))
    };
    let wait_role = |port: u16, want: &'static str| async move {
        wait_for(
            &format!("an operator to be {want}"),
            Duration::from_secs(60),
            || async move {
                match role(port).await {
                    Some(r) if r == want => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
    };
    let (mut leader, leader_port) = start("bench-a", &relayed)?;
    wait_role(leader_port, "leader").await?;
    let (standby, standby_port) = start("bench-b", &cluster.kubeconfig)?;
    wait_role(standby_port, "standby").await?;
    let frozen = Instant::now();
    freezer.freeze(true);
    wait_for("the leader to step down", Duration::from_secs(30), || {
        let done = leader.exited();
        async move { done.then_some(()).ok_or("still running".to_string()) }
    })
    .await?;
    let stepped_down = frozen.elapsed().as_secs_f64();
    wait_role(standby_port, "leader").await?;
    let led = frozen.elapsed().as_secs_f64();
    drop(standby);
    drop(freezer);
    delete_namespace(&admin, ns).await;
    Ok((stepped_down, led))
}

/// Memory growth (MiB) and time (s) of a check against a 1 GiB body, and the time it gives a
/// silent server.
async fn hostile_endpoints() -> anyhow::Result<(f64, f64, f64)> {
    use tator_operator::checks::{ElasticsearchTarget, Password, check_elasticsearch};
    let target = |port: u16| ElasticsearchTarget {
        url: format!("http://127.0.0.1:{port}"),
        credentials: Some(("elastic".into(), Password::new("bench-password".into()))),
        ca_pem: None,
    };
    let endless = hostile_server(true).await?;
    let before = tator_testbed::support::rss_mib();
    let started = Instant::now();
    let refused = check_elasticsearch(&target(endless)).await.is_err();
    let body_s = started.elapsed().as_secs_f64();
    let grew = tator_testbed::support::rss_mib() - before;
    anyhow::ensure!(refused, "the check accepted a 1 GiB body");
    let silent = hostile_server(false).await?;
    let started = Instant::now();
    let refused = check_elasticsearch(&target(silent)).await.is_err();
    anyhow::ensure!(refused, "the check accepted silence");
    Ok((grew, body_s, started.elapsed().as_secs_f64()))
}
