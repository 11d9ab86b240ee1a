//! Starting and stopping the control-plane processes.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use k8s_openapi::{
    api::core::v1::{Node, ServiceAccount},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use nix::{sys::signal::Signal, unistd::Pid};
use tracing::{info, warn};

use crate::{Error, io_err, pki::ClusterPki, tail, write_private};

/// Service ClusterIPs are taken from this loopback block (nothing connects to them).
pub const SERVICE_CIDR: &str = "127.96.0.0/16";
/// kwok assigns Pod IPs from this loopback block (nothing connects to them).
pub const POD_CIDR: &str = "127.244.0.1/16";
/// Annotation that marks a Node as managed by this cluster's kwok.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// Where the control-plane binaries and kwok's stage configuration are.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub bin_dir: PathBuf,
    pub kwok_stages: PathBuf,
}

impl Binaries {
    /// Finds the binaries built by `tests/tools/build.sh`: `TATOR_TOOLS_BIN` when set, otherwise
    /// the folder the pinned versions map to (`build.sh --print-bin`).
    pub fn locate() -> Result<Self, Error> {
        let bin_dir = match std::env::var_os("TATOR_TOOLS_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let script =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/build.sh");
                let out = Command::new("bash")
                    .arg(&script)
                    .arg("--print-bin")
                    .output()
                    .map_err(|source| Error::Spawn {
                        process: script.display().to_string(),
                        source,
                    })?;
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let kwok_stages = bin_dir
            .parent()
            .map(|p| p.join("kwok-stages.yaml"))
            .unwrap_or_default();
        let found = Self {
            bin_dir,
            kwok_stages,
        };
        let mut missing: Vec<String> = [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok",
            "kubectl",
        ]
        .iter()
        .filter(|b| !found.bin(b).is_file())
        .map(|b| b.to_string())
        .collect();
        if !found.kwok_stages.is_file() {
            missing.push(found.kwok_stages.display().to_string());
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(Error::Binaries(format!(
                "missing {} in {}; run `make tools` first",
                missing.join(", "),
                found.bin_dir.display()
            )))
        }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// A fake node run by kwok.
#[derive(Clone, Debug)]
pub struct FakeNode {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Extended resources in addition to cpu, memory and pods (for example `nvidia.com/gpu`).
    pub extra_capacity: BTreeMap<String, String>,
    /// Taints as `(key, value, effect)`.
    pub taints: Vec<(String, String, String)>,
}

impl FakeNode {
    fn new(name: &str, labels: &[(&str, &str)], extra: &[(&str, &str)]) -> Self {
        Self {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            extra_capacity: extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            taints: Vec::new(),
        }
    }

    /// Two web/CPU worker nodes and one GPU worker (tainted `nvidia.com/gpu=present:NoSchedule`),
    /// labelled the way Tator's chart expected.
    pub fn defaults() -> Vec<Self> {
        vec![
            Self::new(
                "kwok-node-0",
                &[
                    ("webServer", "yes"),
                    ("dbServer", "yes"),
                    ("cpuWorker", "yes"),
                ],
                &[],
            ),
            Self::new(
                "kwok-node-1",
                &[("webServer", "yes"), ("cpuWorker", "yes")],
                &[],
            ),
            Self {
                taints: vec![(
                    "nvidia.com/gpu".into(),
                    "present".into(),
                    "NoSchedule".into(),
                )],
                ..Self::new(
                    "kwok-gpu-0",
                    &[("gpuWorker", "yes")],
                    &[("nvidia.com/gpu", "1")],
                )
            },
        ]
    }
}

/// How to start a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Folder for certificates, data, logs and the kubeconfig; created if missing.
    pub dir: PathBuf,
    pub nodes: Vec<FakeNode>,
    /// Run the load-balancer status controller in this process.
    pub load_balancer_controller: bool,
    /// Also run the process node (pods really run; see [`crate::procnode`]) with these images.
    pub process_node: Option<crate::procnode::ImageSources>,
}

impl ClusterOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            nodes: FakeNode::defaults(),
            load_balancer_controller: true,
            process_node: None,
        }
    }
}

struct ManagedProcess {
    name: &'static str,
    args: Vec<String>,
    child: Child,
    log: PathBuf,
}

impl ManagedProcess {
    fn check_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Exited {
                process: self.name.to_string(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: tail(&self.log, 25),
            }),
            _ => Ok(()),
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps the child.
    fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        warn!(
            process = self.name,
            "did not stop after SIGTERM; killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running local control plane. Dropping it stops every process.
pub struct Cluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub binaries: Binaries,
    processes: Vec<ManagedProcess>,
    /// Processes stopped by [`Cluster::halt`], with their place in the start order.
    halted: Vec<(usize, &'static str, Vec<String>)>,
    lb: Option<tokio::task::JoinHandle<()>>,
    procnode: Option<crate::procnode::ProcNode>,
}

/// A free loopback port below the kernel's ephemeral range (32768 and up by default), so that the
/// outgoing connections of other processes cannot take it between this check and the bind of the
/// process that gets it. Several clusters may start at once: ports are picked at random.
pub fn free_port() -> Result<u16, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEED: AtomicU64 = AtomicU64::new(0);
    let mut x = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ u64::from(std::process::id()) << 32
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0u64);
    for _ in 0..200 {
        // xorshift
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Binaries(
        "no free loopback port between 20000 and 32000".into(),
    ))
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: {user}
    namespace: default
current-context: testbed
",
        ca = b64(ca_pem),
        cert = b64(cert_pem),
        key = b64(key_pem),
    )
}

impl Cluster {
    /// Starts a new cluster and waits until it is healthy: the API server ready, the controllers
    /// running (the `default` ServiceAccount exists) and every kwok node Ready.
    pub async fn start(options: ClusterOptions, binaries: Binaries) -> Result<Self, Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(options.clone(), binaries.clone()).await {
                Err(Error::Exited { tail, .. })
                    if attempt < 4 && tail.contains("address already in use") =>
                {
                    warn!(
                        attempt,
                        "a port was taken while the cluster started; retrying with other ports"
                    );
                    let _ = std::fs::remove_dir_all(options.dir.join("etcd"));
                }
                other => return other,
            }
        }
    }

    async fn start_once(options: ClusterOptions, binaries: Binaries) -> Result<Self, Error> {
        let started = Instant::now();
        let dir = options.dir.clone();
        std::fs::create_dir_all(dir.join("logs")).map_err(io_err(&dir))?;
        let pki = ClusterPki::generate()?;
        pki.write(&dir)?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let kcm_port = free_port()?;
        let sched_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");

        let kubeconfig = dir.join("kubeconfig");
        write_private(
            &kubeconfig,
            &kubeconfig_yaml(
                &server,
                &pki.ca.cert_pem,
                "admin",
                &pki.admin.cert_pem,
                &pki.admin.key_pem,
            ),
        )?;
        let kcm_kubeconfig = dir.join("controller-manager.kubeconfig");
        write_private(
            &kcm_kubeconfig,
            &kubeconfig_yaml(
                &server,
                &pki.ca.cert_pem,
                "system:kube-controller-manager",
                &pki.controller_manager.cert_pem,
                &pki.controller_manager.key_pem,
            ),
        )?;
        let sched_kubeconfig = dir.join("scheduler.kubeconfig");
        write_private(
            &sched_kubeconfig,
            &kubeconfig_yaml(
                &server,
                &pki.ca.cert_pem,
                "system:kube-scheduler",
                &pki.scheduler.cert_pem,
                &pki.scheduler.key_pem,
            ),
        )?;

        let mut cluster = Cluster {
            dir: dir.clone(),
            kubeconfig: kubeconfig.clone(),
            server: server.clone(),
            binaries,
            processes: Vec::new(),
            halted: Vec::new(),
            lb: None,
            procnode: None,
        };
        let p = |name: &str| dir.join(name).display().to_string();

        // etcd
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cluster.spawn(
            "etcd",
            &[
                "--name=testbed".into(),
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=testbed={peer_url}"),
                "--unsafe-no-fsync=true".into(),
                "--quota-backend-bytes=4294967296".into(),
                "--log-level=warn".into(),
            ],
        )?;
        cluster
            .wait_tcp("etcd", etcd_client, Duration::from_secs(20))
            .await?;

        // kube-apiserver
        cluster.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", p("apiserver-certs")),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                "--authorization-mode=RBAC".into(),
                "--enable-admission-plugins=PodSecurity,NamespaceLifecycle,ServiceAccount,DefaultStorageClass,ResourceQuota,LimitRanger".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--allow-privileged=true".into(),
                "--enable-priority-and-fairness=true".into(),
                "--profiling=false".into(),
                "--v=1".into(),
            ],
        )?;
        let client = cluster.wait_apiserver(Duration::from_secs(60)).await?;

        // kube-controller-manager
        cluster.spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kcm_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kcm_kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={kcm_port}"),
                format!("--cert-dir={}", p("kcm-certs")),
                "--controllers=*,-nodeipam".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                format!("--cluster-signing-cert-file={}", p("ca.crt")),
                format!("--cluster-signing-key-file={}", p("ca.key")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--concurrent-deployment-syncs=10".into(),
                "--concurrent-replicaset-syncs=10".into(),
                "--concurrent-gc-syncs=20".into(),
                "--v=1".into(),
            ],
        )?;
        // kube-scheduler
        cluster.spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={}", sched_kubeconfig.display()),
                format!("--authentication-kubeconfig={}", sched_kubeconfig.display()),
                format!("--authorization-kubeconfig={}", sched_kubeconfig.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={sched_port}"),
                format!("--cert-dir={}", p("scheduler-certs")),
                "--leader-elect=false".into(),
                "--v=1".into(),
            ],
        )?;
        // kwok
        let kwok_stages = cluster.binaries.kwok_stages.display().to_string();
        cluster.spawn(
            "kwok",
            &[
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--config={kwok_stages}"),
                "--manage-all-nodes=false".into(),
                format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                format!("--cidr={POD_CIDR}"),
                "--node-ip=127.0.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
            ],
        )?;

        cluster.create_nodes(&client, &options.nodes).await?;
        create_storage_class(&client).await?;
        cluster
            .wait_controllers(&client, &options.nodes, Duration::from_secs(60))
            .await?;
        if options.load_balancer_controller {
            cluster.lb = Some(tokio::spawn(crate::lb::run(client.clone())));
        }
        if let Some(images) = &options.process_node {
            let labels = [
                ("webServer", "yes"),
                ("dbServer", "yes"),
                ("cpuWorker", "yes"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            cluster.procnode = Some(
                crate::procnode::ProcNode::start(
                    client.clone(),
                    dir.join("procnode"),
                    images.clone(),
                    labels,
                )
                .await?,
            );
        }
        info!(
            dir = %dir.display(),
            server = %server,
            seconds = started.elapsed().as_secs_f64(),
            "local control plane is ready"
        );
        Ok(cluster)
    }

    /// An admin client for this cluster.
    pub async fn client(&self) -> Result<Client, Error> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    fn spawn(&mut self, name: &'static str, args: &[String]) -> Result<(), Error> {
        let log = self.dir.join("logs").join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(&log))?;
        let err = out.try_clone().map_err(io_err(&log))?;
        let child = Command::new(self.binaries.bin(name))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn {
                process: name.to_string(),
                source,
            })?;
        self.processes.push(ManagedProcess {
            name,
            args: args.to_vec(),
            child,
            log,
        });
        Ok(())
    }

    /// Stops the named processes (in reverse start order) and starts them again with the same
    /// arguments and ports, then waits for the API server: a control-plane restart for fault
    /// tests. etcd keeps its data.
    pub async fn restart(&mut self, names: &[&str]) -> Result<(), Error> {
        let mut stopped: Vec<(usize, &'static str, Vec<String>)> = Vec::new();
        for i in (0..self.processes.len()).rev() {
            if names.contains(&self.processes[i].name) {
                let mut p = self.processes.remove(i);
                // A short grace: a restart here stands for a crash or an abrupt upgrade.
                p.stop(Duration::from_secs(3));
                stopped.push((i, p.name, p.args));
            }
        }
        stopped.reverse();
        for (i, name, args) in stopped {
            self.spawn(name, &args)?;
            // Back to its place in the start order, so that stop() still stops in reverse.
            if let Some(p) = self.processes.pop() {
                self.processes.insert(i.min(self.processes.len()), p);
            }
        }
        self.wait_apiserver(Duration::from_secs(60)).await?;
        Ok(())
    }

    /// Stops the named processes and keeps them stopped until [`Cluster::resume`]: an outage
    /// (for example of a job cluster's API server).
    pub fn halt(&mut self, names: &[&str]) {
        for i in (0..self.processes.len()).rev() {
            if names.contains(&self.processes[i].name) {
                let mut p = self.processes.remove(i);
                p.stop(Duration::from_secs(3));
                self.halted.push((i, p.name, p.args));
            }
        }
    }

    /// Starts the processes [`Cluster::halt`] stopped and waits for the API server.
    pub async fn resume(&mut self) -> Result<(), Error> {
        let mut halted = std::mem::take(&mut self.halted);
        halted.reverse();
        for (i, name, args) in halted {
            self.spawn(name, &args)?;
            if let Some(p) = self.processes.pop() {
                self.processes.insert(i.min(self.processes.len()), p);
            }
        }
        self.wait_apiserver(Duration::from_secs(60)).await?;
        Ok(())
    }

    fn check_processes(&mut self) -> Result<(), Error> {
        for p in &mut self.processes {
            p.check_running()?;
        }
        Ok(())
    }

    async fn wait_tcp(&mut self, what: &str, port: u16, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_processes()?;
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("{what} to listen on 127.0.0.1:{port}"),
                    seconds: timeout.as_secs(),
                    last: String::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_apiserver(&mut self, timeout: Duration) -> Result<Client, Error> {
        let deadline = Instant::now() + timeout;
        let client = client_from_kubeconfig(&self.kubeconfig).await?;
        let mut last = String::new();
        loop {
            self.check_processes()?;
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req {
                match client.request_text(req).await {
                    Ok(body) if body.trim() == "ok" => return Ok(client),
                    Ok(body) => last = body,
                    Err(e) => last = e.to_string(),
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "kube-apiserver /readyz".into(),
                    seconds: timeout.as_secs(),
                    last: format!(" (last answer: {last})"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create_nodes(&mut self, client: &Client, nodes: &[FakeNode]) -> Result<(), Error> {
        let api: Api<Node> = Api::all(client.clone());
        for node in nodes {
            let mut capacity: BTreeMap<String, Quantity> = [
                ("cpu", "32"),
                ("memory", "256Gi"),
                ("pods", "250"),
                ("ephemeral-storage", "1Ti"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect();
            for (k, v) in &node.extra_capacity {
                capacity.insert(k.clone(), Quantity(v.clone()));
            }
            let mut labels = node.labels.clone();
            labels.insert("kubernetes.io/hostname".into(), node.name.clone());
            labels.insert("kubernetes.io/os".into(), "linux".into());
            labels.insert("kubernetes.io/arch".into(), "amd64".into());
            labels.insert("type".into(), "kwok".into());
            let obj = Node {
                metadata: ObjectMeta {
                    name: Some(node.name.clone()),
                    labels: Some(labels),
                    annotations: Some(
                        [(KWOK_NODE_ANNOTATION.to_string(), "fake".to_string())].into(),
                    ),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::core::v1::NodeSpec {
                    taints: Some(
                        node.taints
                            .iter()
                            .map(|(key, value, effect)| k8s_openapi::api::core::v1::Taint {
                                key: key.clone(),
                                value: Some(value.clone()),
                                effect: effect.clone(),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                    ..Default::default()
                }),
                status: Some(k8s_openapi::api::core::v1::NodeStatus {
                    allocatable: Some(capacity.clone()),
                    capacity: Some(capacity),
                    ..Default::default()
                }),
            };
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(source) => {
                    return Err(Error::Kube {
                        action: format!("creating node {}", node.name),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    async fn wait_controllers(
        &mut self,
        client: &Client,
        nodes: &[FakeNode],
        timeout: Duration,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let sa: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let node_api: Api<Node> = Api::all(client.clone());
        let mut last;
        loop {
            self.check_processes()?;
            let sa_ready = matches!(sa.get_opt("default").await, Ok(Some(_)));
            let mut not_ready = Vec::new();
            for n in nodes {
                let ready = match node_api.get_opt(&n.name).await {
                    Ok(Some(node)) => {
                        let ready_cond = node
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .into_iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True");
                        let tainted = node
                            .spec
                            .and_then(|s| s.taints)
                            .unwrap_or_default()
                            .iter()
                            .any(|t| t.key == "node.kubernetes.io/not-ready");
                        ready_cond && !tainted
                    }
                    _ => false,
                };
                if !ready {
                    not_ready.push(n.name.clone());
                }
            }
            if sa_ready && not_ready.is_empty() {
                return Ok(());
            }
            last = format!(
                " (default ServiceAccount present: {sa_ready}; nodes not ready or still tainted: {})",
                not_ready.join(", ")
            );
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: "controllers and kwok nodes".into(),
                    seconds: timeout.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every process in reverse start order (kwok, scheduler, controller-manager,
    /// kube-apiserver, then etcd), waiting for each to exit.
    pub fn stop(&mut self) {
        if let Some(mut node) = self.procnode.take() {
            node.stop();
        }
        if let Some(lb) = self.lb.take() {
            lb.abort();
        }
        while let Some(mut p) = self.processes.pop() {
            let grace = if p.name == "kube-apiserver" {
                Duration::from_secs(20)
            } else {
                Duration::from_secs(10)
            };
            p.stop(grace);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Default StorageClass whose claims kwok's volume stages provision and bind at once (no data is
/// ever written: pods do not run).
pub const STORAGE_CLASS: &str = "kwok-volume";

async fn create_storage_class(client: &Client) -> Result<(), Error> {
    use k8s_openapi::api::storage::v1::StorageClass;
    let sc = StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(
                [(
                    "storageclass.kubernetes.io/is-default-class".to_string(),
                    "true".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        provisioner: "kwok.x-k8s.io/volume".into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        allow_volume_expansion: Some(true),
        ..Default::default()
    };
    match Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: "creating the default StorageClass".into(),
            source,
        }),
    }
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, Error> {
    let kc = Kubeconfig::read_from(path).map_err(|e| Error::Yaml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Yaml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Client::try_from(config).map_err(|source| Error::Kube {
        action: "building a client".into(),
        source,
    })
}
