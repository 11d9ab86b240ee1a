//! Support for Rust integration tests: one cluster shared per test binary, extra clusters owned
//! by a test, fresh namespaces, CRD installation and waiting with useful failure messages.
//!
//! Each cluster runs in its own supervisor process (`testbed serve --watch-stdin`). The test
//! process holds the supervisor's stdin; when the test binary exits (normally, on panic or when
//! killed) the pipe closes and the supervisor stops every control-plane process in order. A
//! missing control plane is an error, never a skip.

use std::{
    future::Future,
    io::Write,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::Namespace,
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};

use crate::{Error, io_err, tail};

/// Field manager the test support applies with.
pub const FIELD_MANAGER: &str = "tator-testbed";
/// File the supervisor writes once the cluster is healthy.
pub const READY_FILE: &str = "ready";

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The steering repository's `shared/` folder: `TATOR_SHARED_DIR`, or `../shared` beside the
/// clone.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("TATOR_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"))
}

/// The `testbed` binary: `TATOR_TESTBED_BIN`, or the one cargo built beside the test binary.
pub fn testbed_binary() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("TATOR_TESTBED_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(io_err(Path::new("current_exe")))?;
    // target/<profile>/deps/<test> -> target/<profile>/testbed
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("testbed"))
        .unwrap_or_default();
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(Error::Binaries(format!(
            "the testbed binary is not at {}; build it with `cargo build -p tator-testbed` or set TATOR_TESTBED_BIN",
            candidate.display()
        )))
    }
}

/// A cluster run by a supervisor process that this test process owns.
pub struct TestCluster {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
}

impl TestCluster {
    /// Starts a new cluster in a fresh folder under the system temp folder and waits for it.
    pub fn start(label: &str) -> Result<Self, Error> {
        Self::start_with(label, &[])
    }

    /// Like [`Self::start`], with more `testbed serve` arguments (`--process-node`).
    pub fn start_with(label: &str, args: &[&str]) -> Result<Self, Error> {
        let root = std::env::temp_dir();
        let dir = root.join(format!(
            "tator-testbed-{}-{}-{}",
            label,
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let log = dir.join("supervisor.log");
        let out = std::fs::File::create(&log).map_err(io_err(&log))?;
        let err = out.try_clone().map_err(io_err(&log))?;
        let mut child = Command::new(testbed_binary()?)
            .arg("serve")
            .arg("--dir")
            .arg(&dir)
            .arg("--watch-stdin")
            .arg("--remove-dir")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| Error::Spawn {
                process: "testbed serve".into(),
                source,
            })?;
        let stdin = child.stdin.take();
        let ready = dir.join(READY_FILE);
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready.is_file() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Exited {
                    process: "testbed serve".into(),
                    status: status.to_string(),
                    log: log.clone(),
                    tail: tail(&log, 40),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    what: "the test cluster to become ready".into(),
                    seconds: 120,
                    last: format!("; supervisor log:\n{}", tail(&log, 40)),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            child,
            stdin,
        })
    }

    /// An admin client (create one per test: clients are bound to the test's runtime).
    pub async fn client(&self) -> Result<Client, Error> {
        crate::cluster::client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Restarts control-plane processes (for example `["etcd", "kube-apiserver"]`) with their
    /// ports and data, and waits until the API server is ready again.
    pub fn restart(&mut self, processes: &[&str]) -> Result<(), Error> {
        self.command(&format!("restart {}", processes.join(" ")))
    }

    /// Stops control-plane processes (for example `["kube-apiserver"]`) until [`Self::resume`].
    pub fn halt(&mut self, processes: &[&str]) -> Result<(), Error> {
        self.command(&format!("halt {}", processes.join(" ")))
    }

    /// Starts what [`Self::halt`] stopped and waits until the API server is ready again.
    pub fn resume(&mut self) -> Result<(), Error> {
        self.command("resume")
    }

    /// Sends one command to the supervisor and waits until it is done.
    fn command(&mut self, command: &str) -> Result<(), Error> {
        let done = |dir: &Path| -> u32 {
            std::fs::read_to_string(dir.join("restarts"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        let before = done(&self.dir);
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| Error::Binaries("the supervisor's input is closed".into()))?;
        writeln!(stdin, "{command}").map_err(io_err(&self.dir))?;
        stdin.flush().map_err(io_err(&self.dir))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while done(&self.dir) <= before {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Exited {
                    process: "testbed serve".into(),
                    status: status.to_string(),
                    log: self.dir.join("supervisor.log"),
                    tail: tail(&self.dir.join("supervisor.log"), 40),
                });
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("the supervisor command {command:?}"),
                    seconds: 120,
                    last: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stops the cluster and waits for every process to exit.
    pub fn stop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:06x}", nanos & 0xff_ffff)
}

static SHARED: OnceLock<Result<Mutex<TestCluster>, String>> = OnceLock::new();

/// The kubeconfig of the cluster shared by every test in this test binary, starting it on first
/// use. It stops when the test binary exits.
pub fn shared_kubeconfig() -> Result<PathBuf, String> {
    let shared = SHARED.get_or_init(|| {
        TestCluster::start("shared")
            .map(Mutex::new)
            .map_err(|e| e.to_string())
    });
    match shared {
        Ok(cluster) => cluster
            .lock()
            .map(|c| c.kubeconfig.clone())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    }
}

/// An admin client to the shared cluster.
pub async fn shared_client() -> Result<Client, Error> {
    let kubeconfig = shared_kubeconfig().map_err(Error::Binaries)?;
    crate::cluster::client_from_kubeconfig(&kubeconfig).await
}

/// Creates a fresh namespace `<prefix>-<random>`, optionally enforcing PodSecurity `restricted`.
pub async fn namespace(client: &Client, prefix: &str, restricted: bool) -> Result<String, Error> {
    let name = format!("{prefix}-{}", rand_suffix());
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("tator.io/test".to_string(), "true".to_string());
    if restricted {
        labels.insert(
            "pod-security.kubernetes.io/enforce".to_string(),
            "restricted".to_string(),
        );
        labels.insert(
            "pod-security.kubernetes.io/enforce-version".to_string(),
            "latest".to_string(),
        );
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|source| Error::Kube {
            action: format!("creating namespace {name}"),
            source,
        })?;
    Ok(name)
}

/// Reads every CustomResourceDefinition in a YAML file or in the `*.yaml` files of a folder.
pub fn read_crds(path: &Path) -> Result<Vec<CustomResourceDefinition>, Error> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).map_err(io_err(path))? {
            let p = entry.map_err(io_err(path))?.path();
            if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut crds = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| Error::Yaml {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_json::from_value(value).map_err(|e| Error::Yaml {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            crds.push(crd);
        }
    }
    Ok(crds)
}

/// Installs CRDs with server-side apply and waits until each is Established.
pub async fn install_crds(client: &Client, path: &Path) -> Result<Vec<String>, Error> {
    install_crd_objects(client, read_crds(path)?).await
}

/// Installs CRD objects with server-side apply and waits until each is Established and every
/// served version is listed by discovery (Established alone comes a moment before discovery
/// knows the resource, and clients that resolve kinds through discovery would see a 404).
pub async fn install_crd_objects(
    client: &Client,
    crds: Vec<CustomResourceDefinition>,
) -> Result<Vec<String>, Error> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    let mut served = Vec::new();
    for mut crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crd.metadata.managed_fields = None;
        crd.metadata.resource_version = None;
        crd.status = None;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|source| Error::Kube {
            action: format!("applying CRD {name}"),
            source,
        })?;
        for version in crd.spec.versions.iter().filter(|v| v.served) {
            served.push((
                format!("{}/{}", crd.spec.group, version.name),
                crd.spec.names.plural.clone(),
            ));
        }
        names.push(name);
    }
    for name in &names {
        let api = api.clone();
        wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.map_err(|e| e.to_string())?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    if established {
                        Ok(())
                    } else {
                        Err("not Established yet".to_string())
                    }
                }
            },
        )
        .await?;
    }
    for (group_version, plural) in &served {
        wait_for(
            &format!("discovery to list {plural} in {group_version}"),
            Duration::from_secs(30),
            || async {
                let list = client
                    .list_api_group_resources(group_version)
                    .await
                    .map_err(|e| e.to_string())?;
                if list.resources.iter().any(|r| &r.name == plural) {
                    Ok(())
                } else {
                    Err("not listed yet".to_string())
                }
            },
        )
        .await?;
    }
    Ok(names)
}

/// Polls `check` every 100 ms until it returns `Ok`, or fails after `timeout` with `what` and the
/// last state `check` described.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(state) if Instant::now() > deadline => {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    seconds: timeout.as_secs(),
                    last: format!(" (last seen: {state})"),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Resident memory of this process, in MiB (from `/proc/self/statm`).
pub fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// A loopback port nothing listens on (bound once, then released): for "unreachable" cases.
pub fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1)
}

/// Standard base64 of a string, to look for an encoded secret in logs.
pub fn base64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Every log line of this test binary (the operator's at trace level), captured in memory. The
/// first call installs the global subscriber.
pub fn captured_logs() -> std::sync::Arc<Mutex<Vec<u8>>> {
    use std::sync::Arc;
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let make = move || SharedWriter(writer.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("trace")
            .with_writer(make)
            .with_ansi(false)
            .try_init();
        buf
    })
    .clone()
}

struct SharedWriter(std::sync::Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(data);
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One request a [`serve_json`] stand-in received.
#[derive(Clone, Debug)]
pub struct JsonRequest {
    pub method: String,
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body as JSON (Null when empty or not JSON).
    pub body: serde_json::Value,
}

/// Serves HTTP/1.1 JSON on a loopback port (returned) with `handler` answering each request
/// with a status line (`"200 OK"`) and a JSON body: the plumbing of the stand-ins for Tator's
/// REST API in the tests.
pub async fn serve_json<F>(handler: F) -> u16
where
    F: Fn(JsonRequest) -> (String, serde_json::Value) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
        return 0;
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(i) = text.find("\r\n\r\n") {
                        let head = text[..i].to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            break (head, buf[i + 4..i + 4 + len].to_vec());
                        }
                    }
                };
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                let method = first.next().unwrap_or("").to_string();
                let path = first.next().unwrap_or("").to_string();
                let authorization = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization")
                        .then(|| v.trim().to_string())
                });
                let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                let (status, answer) = handler(JsonRequest {
                    method,
                    path,
                    authorization,
                    body,
                });
                let text = answer.to_string();
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                    text.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// A TCP relay to the API server that can be frozen: while frozen, bytes in either direction are
/// held back (connections stay open, requests hang), as when the API server stops answering.
/// Fault injection for one client (the leader-election test and the bench's failover figure);
/// the API server itself keeps serving the others. Listens on loopback.
pub struct Freezer {
    pub port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Freezer {
    pub async fn start(upstream: std::net::SocketAddr) -> Result<Self, Error> {
        let relay_err = |source| Error::Spawn {
            process: "the API-server relay".into(),
            source,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(relay_err)?;
        let port = listener.local_addr().map_err(relay_err)?.port();
        let (frozen, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Self::pipe(cr, sw, watch.clone()));
                tokio::spawn(Self::pipe(sr, cw, watch.clone()));
            }
        });
        Ok(Self { port, frozen, task })
    }

    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    /// Holds back (true) or lets through (false) every byte from now on.
    pub fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `kubeconfig` with its server replaced by 127.0.0.1:`port` (the certificate names 127.0.0.1),
/// written to `out/frozen.kubeconfig`; the path and the server it named.
pub fn through(
    kubeconfig: &Path,
    port: u16,
    out: &Path,
) -> Result<(PathBuf, std::net::SocketAddr), Error> {
    let invalid = |message: &str| Error::Yaml {
        path: kubeconfig.to_path_buf(),
        message: message.to_string(),
    };
    let text = std::fs::read_to_string(kubeconfig).map_err(io_err(kubeconfig))?;
    let mut config: kube::config::Kubeconfig =
        serde_yaml::from_str(&text).map_err(|e| invalid(&e.to_string()))?;
    let cluster = config
        .clusters
        .first_mut()
        .and_then(|c| c.cluster.as_mut())
        .ok_or_else(|| invalid("no cluster"))?;
    let server = cluster.server.clone().ok_or_else(|| invalid("no server"))?;
    let upstream = server
        .trim_start_matches("https://")
        .parse::<std::net::SocketAddr>()
        .map_err(|e| invalid(&format!("server {server}: {e}")))?;
    cluster.server = Some(format!("https://127.0.0.1:{port}"));
    let path = out.join("frozen.kubeconfig");
    let yaml = serde_yaml::to_string(&config).map_err(|e| invalid(&e.to_string()))?;
    std::fs::write(&path, yaml).map_err(io_err(&path))?;
    Ok((path, upstream))
}
