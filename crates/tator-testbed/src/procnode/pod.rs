//! One pod on the process node: its containers as processes, their probes, and the pod status
//! computed from them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Container, Pod, Probe},
    apimachinery::pkg::{apis::meta::v1::Time, util::intstr::IntOrString},
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::{io::AsyncReadExt, io::AsyncWriteExt, sync::watch};
use tracing::{debug, warn};

use super::{
    Shared, env,
    images::{self, Image},
    init::{ContainerPlan, MountSpec},
    net::Netns,
    volumes,
};

/// What one container is doing, for the pod status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub restarts: i32,
    pub ready: bool,
    pub started_at: Option<Timestamp>,
    /// Set while waiting: (reason, message).
    pub waiting: Option<(String, String)>,
    /// Set once exited: (exit code, reason, started, finished).
    pub terminated: Option<(i32, String, Option<Timestamp>, Timestamp)>,
    pub last_terminated: Option<(i32, String, Option<Timestamp>, Timestamp)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodState {
    pub init: Vec<ContainerState>,
    pub containers: Vec<ContainerState>,
    pub initialized: bool,
    /// Final phase once nothing will run again.
    pub finished: Option<&'static str>,
    pub message: Option<String>,
}

/// Everything a running pod shares with its container tasks.
pub struct PodRun {
    pub key: String,
    pub pod: Pod,
    pub ip: String,
    pub dir: PathBuf,
    pub netns: Arc<Netns>,
    pub hosts_file: PathBuf,
    /// What `hosts_file` holds now (the proxy rewrites it only when this differs).
    pub hosts_text: std::sync::Mutex<String>,
    pub state: watch::Sender<PodState>,
    pub stop: watch::Receiver<bool>,
    /// Set once the proxy has written the pod's hosts file and listens on every Service address
    /// in its network namespace: no container starts before (kube-proxy and DNS are in place
    /// before a real pod's containers run; a process started earlier failed to resolve names).
    pub network: watch::Sender<bool>,
}

async fn stopping(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn stopped(run: &PodRun) -> bool {
    *run.stop.borrow()
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

/// Runs the pod until it is stopped or, for run-to-completion pods, until it finishes.
pub async fn run(shared: Arc<Shared>, run: Arc<PodRun>) {
    let pod = &run.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut network = run.network.subscribe();
    let mut stop = run.stop.clone();
    tokio::select! {
        _ = network.wait_for(|ready| *ready) => {}
        _ = stopping(&mut stop) => return,
    }
    let claims = shared.dir.join("claims");
    let vols = match volumes::prepare(&shared.client, pod, &run.dir, &claims, &run.ip).await {
        Ok(v) => v,
        Err(e) => {
            warn!(pod = %run.key, error = %e, "volumes");
            run.state.send_modify(|s| {
                s.message = Some(e.clone());
                for c in &mut s.containers {
                    c.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
                }
            });
            return;
        }
    };
    let vols = Arc::new(vols);
    // Init containers, one after the other.
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        loop {
            let code = container_once(&shared, &run, c, &vols, Some(i)).await;
            if stopped(&run) {
                return;
            }
            match code {
                Some(0) => break,
                _ if restart_policy(pod) == "Never" => {
                    run.state.send_modify(|s| s.finished = Some("Failed"));
                    return;
                }
                _ => {
                    let restarts = run.state.borrow().init[i].restarts;
                    backoff(&run, restarts).await;
                    run.state.send_modify(|s| s.init[i].restarts += 1);
                }
            }
        }
    }
    run.state.send_modify(|s| s.initialized = true);
    let tasks: Vec<_> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (shared, run, c, vols) = (shared.clone(), run.clone(), c.clone(), vols.clone());
            tokio::spawn(async move { supervise(shared, run, c, vols, i).await })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    if !stopped(&run) {
        let failed = run
            .state
            .borrow()
            .containers
            .iter()
            .any(|c| c.terminated.as_ref().is_some_and(|t| t.0 != 0));
        run.state
            .send_modify(|s| s.finished = Some(if failed { "Failed" } else { "Succeeded" }));
    }
}

async fn backoff(run: &PodRun, restarts: i32) {
    // The kubelet's crash-loop back-off, scaled down for tests: 1 s doubling up to 20 s.
    let secs = (1u64 << restarts.clamp(0, 5) as u64).min(20);
    let mut stop = run.stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
        _ = stopping(&mut stop) => {}
    }
}

async fn supervise(
    shared: Arc<Shared>,
    run: Arc<PodRun>,
    c: Container,
    vols: Arc<BTreeMap<String, PathBuf>>,
    index: usize,
) {
    let policy = restart_policy(&run.pod);
    loop {
        let code = container_once(&shared, &run, &c, &vols, None).await;
        if stopped(&run) || shared.stopping() {
            return;
        }
        let again = match policy.as_str() {
            "Never" => false,
            "OnFailure" => code != Some(0),
            _ => true,
        };
        if !again {
            return;
        }
        let restarts = run.state.borrow().containers[index].restarts;
        backoff(&run, restarts).await;
        if stopped(&run) {
            return;
        }
        run.state.send_modify(|s| s.containers[index].restarts += 1);
    }
}

fn set(run: &PodRun, init: Option<usize>, name: &str, f: impl FnOnce(&mut ContainerState)) {
    run.state.send_modify(|s| {
        let list = if init.is_some() {
            &mut s.init
        } else {
            &mut s.containers
        };
        if let Some(c) = list.iter_mut().find(|c| c.name == name) {
            f(c);
        }
    });
}

/// Builds the container's plan: image files, volumes, hosts file, environment, user.
async fn plan(
    shared: &Shared,
    run: &PodRun,
    c: &Container,
    image: &Image,
    vols: &BTreeMap<String, PathBuf>,
    state_dir: &Path,
) -> Result<ContainerPlan, String> {
    let pod = &run.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let env = env::resolve(&shared.client, pod, c, &run.ip, &image.env)
        .await
        .map_err(|e| e.0)?;
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let expand = |v: &Option<Vec<String>>| {
        v.as_ref()
            .map(|v| v.iter().map(|a| env::expand(a, &vars)).collect::<Vec<_>>())
    };
    let argv = images::argv(
        image,
        expand(&c.command).as_deref(),
        expand(&c.args).as_deref(),
    );
    if argv.is_empty() {
        return Err("no command: the image has no entrypoint and the pod gives none".into());
    }
    let mut mounts: Vec<MountSpec> = image
        .files
        .iter()
        .map(|(src, target)| MountSpec {
            source: src.clone(),
            target: target.clone(),
            read_only: true,
        })
        .collect();
    for m in c.volume_mounts.iter().flatten() {
        let base = vols
            .get(&m.name)
            .ok_or_else(|| format!("volume mount {}: no volume of that name", m.name))?;
        let source = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                let p = base.join(sub);
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                    let _ = std::fs::set_permissions(
                        &p,
                        std::os::unix::fs::PermissionsExt::from_mode(0o777),
                    );
                }
                p
            }
            None => base.clone(),
        };
        mounts.push(MountSpec {
            source,
            target: m.mount_path.clone(),
            read_only: m.read_only == Some(true),
        });
    }
    mounts.push(MountSpec {
        source: run.hosts_file.clone(),
        target: "/etc/hosts".into(),
        read_only: true,
    });
    if !image.passwd.is_empty() {
        let mut passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        for line in &image.passwd {
            passwd.push_str(line);
            passwd.push('\n');
        }
        let file = state_dir.join("passwd");
        std::fs::write(&file, passwd).map_err(|e| format!("{}: {e}", file.display()))?;
        mounts.push(MountSpec {
            source: file,
            target: "/etc/passwd".into(),
            read_only: true,
        });
    }
    let psc = spec.security_context.clone().unwrap_or_default();
    let csc = c.security_context.clone().unwrap_or_default();
    let uid = csc.run_as_user.or(psc.run_as_user).unwrap_or(0);
    let gid = csc.run_as_group.or(psc.run_as_group).unwrap_or(0);
    let mut groups: Vec<u32> = psc
        .supplemental_groups
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|g| *g as u32)
        .collect();
    if let Some(fs) = psc.fs_group {
        groups.push(fs as u32);
    }
    Ok(ContainerPlan {
        state_dir: state_dir.to_path_buf(),
        mounts,
        argv,
        env,
        cwd: c
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| image.workdir.clone()),
        uid: uid as u32,
        gid: gid as u32,
        groups,
        read_only_root: csc.read_only_root_filesystem == Some(true),
    })
}

/// Starts the container once and waits until it exits or is stopped; returns its exit code.
async fn container_once(
    shared: &Arc<Shared>,
    run: &Arc<PodRun>,
    c: &Container,
    vols: &BTreeMap<String, PathBuf>,
    init: Option<usize>,
) -> Option<i32> {
    if shared.stopping() {
        return None;
    }
    let image_ref = c.image.clone().unwrap_or_default();
    let Some(image) = shared.images.image(&image_ref) else {
        set(run, init, &c.name, |s| {
            s.waiting = Some((
                "ErrImagePull".into(),
                format!("{image_ref} is not in the process node's image table"),
            ));
        });
        let mut stop = run.stop.clone();
        let _ = stop.wait_for(|s| *s).await;
        return None;
    };
    let restarts = {
        let st = run.state.borrow();
        let list = if init.is_some() {
            &st.init
        } else {
            &st.containers
        };
        list.iter()
            .find(|x| x.name == c.name)
            .map(|x| x.restarts)
            .unwrap_or(0)
    };
    let state_dir = run
        .dir
        .join("containers")
        .join(format!("{}-{restarts}", c.name));
    let _ = std::fs::create_dir_all(&state_dir);
    let plan = match plan(shared, run, c, &image, vols, &state_dir).await {
        Ok(p) => p,
        Err(e) => {
            set(run, init, &c.name, |s| {
                s.waiting = Some(("CreateContainerConfigError".into(), e.clone()));
            });
            return Some(-1);
        }
    };
    let plan_file = state_dir.join("plan.json");
    if let Err(e) = serde_json::to_vec(&plan)
        .map_err(|e| e.to_string())
        .and_then(|b| std::fs::write(&plan_file, b).map_err(|e| e.to_string()))
    {
        warn!(error = %e, "writing the plan");
        return Some(-1);
    }
    let log = run.dir.join("logs").join(format!("{}.log", c.name));
    let _ = std::fs::create_dir_all(run.dir.join("logs"));
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--pdeathsig", "KILL", "nsenter"])
        .arg(format!("--net={}", run.netns.path.display()))
        .args(["unshare", "--mount", "--pid", "--fork", "--kill-child"])
        .arg(&shared.testbed_exe)
        .arg("container-init")
        .arg(&plan_file)
        .stdin(Stdio::null())
        // Pipes, as a container runtime gives: a program may open /dev/stderr as any user.
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(ch) => ch,
        Err(e) => {
            set(run, init, &c.name, |s| {
                s.waiting = Some(("RunContainerError".into(), e.to_string()));
            });
            return Some(-1);
        }
    };
    let outer = child.id().unwrap_or(0);
    shared.register(outer);
    let copiers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    .map(|mut pipe| {
        let log = log.clone();
        tokio::spawn(async move {
            if let Ok(mut file) = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .await
            {
                let _ = tokio::io::copy(&mut pipe, &mut file).await;
            }
        })
    })
    .collect();
    let started = now();
    set(run, init, &c.name, |s| {
        s.waiting = None;
        if s.terminated.is_some() {
            s.last_terminated = s.terminated.take();
        }
        s.started_at = Some(started);
        s.ready = false;
    });
    debug!(pod = %run.key, container = %c.name, pid = outer, "started");
    let ctx = ProbeCtx {
        shared: shared.clone(),
        run: run.clone(),
        plan: plan.clone(),
        plan_file: state_dir.join("probe.json"),
        outer,
    };
    let probes = init.is_none().then(|| {
        let ctx = ctx.clone();
        let c = c.clone();
        tokio::spawn(async move { ctx.probe_loop(&c).await })
    });
    let mut stop = run.stop.clone();
    let grace = run
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .clamp(0, 30) as u64;
    let status = tokio::select! {
        s = child.wait() => s.ok(),
        _ = stopping(&mut stop) => {
            signal_init(outer, nix::sys::signal::Signal::SIGTERM);
            match tokio::time::timeout(Duration::from_secs(grace), child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    signal_init(outer, nix::sys::signal::Signal::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
    };
    if let Some(p) = probes {
        p.abort();
    }
    for c in copiers {
        // The pipes close when the container's last process is gone.
        let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
    }
    shared.unregister(outer);
    let code = status.map(|s| {
        use std::os::unix::process::ExitStatusExt;
        s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
    });
    let finished = now();
    let c_code = code.unwrap_or(-1);
    set(run, init, &c.name, |s| {
        s.ready = false;
        s.terminated = Some((
            c_code,
            if c_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            s.started_at,
            finished,
        ));
    });
    code
}

/// The PID of the container's first process (the only child of the `unshare` that forked it).
pub fn init_pid(outer: u32) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

pub fn signal_init(outer: u32, sig: nix::sys::signal::Signal) {
    if let Some(pid) = init_pid(outer) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

#[derive(Clone)]
struct ProbeCtx {
    shared: Arc<Shared>,
    run: Arc<PodRun>,
    plan: ContainerPlan,
    plan_file: PathBuf,
    outer: u32,
}

impl ProbeCtx {
    fn port(&self, c: &Container, port: &IntOrString) -> Option<u16> {
        match port {
            IntOrString::Int(p) => u16::try_from(*p).ok(),
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .and_then(|p| u16::try_from(p.container_port).ok()),
        }
    }

    /// One probe: true on success.
    async fn once(&self, c: &Container, p: &Probe) -> bool {
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let ip: IpAddr = match self.run.ip.parse() {
            Ok(ip) => ip,
            Err(_) => return false,
        };
        if let Some(t) = &p.tcp_socket {
            let Some(port) = self.port(c, &t.port) else {
                return false;
            };
            return tokio::time::timeout(
                timeout,
                self.run.netns.connect(SocketAddr::new(ip, port)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
        }
        if let Some(h) = &p.http_get {
            let Some(port) = self.port(c, &h.port) else {
                return false;
            };
            let path = h.path.clone().unwrap_or_else(|| "/".into());
            let mut headers = String::new();
            let mut host = format!("{ip}:{port}");
            for hd in h.http_headers.iter().flatten() {
                if hd.name.eq_ignore_ascii_case("host") {
                    host = hd.value.clone();
                } else {
                    headers.push_str(&format!("{}: {}\r\n", hd.name, hd.value));
                }
            }
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.37\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
            );
            let fut = async {
                let mut s = self
                    .run
                    .netns
                    .connect(SocketAddr::new(ip, port))
                    .await
                    .ok()?;
                s.write_all(req.as_bytes()).await.ok()?;
                let mut buf = vec![0u8; 64];
                let n = s.read(&mut buf).await.ok()?;
                let line = String::from_utf8_lossy(&buf[..n]).to_string();
                let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
                Some((200..400).contains(&code))
            };
            return matches!(tokio::time::timeout(timeout, fut).await, Ok(Some(true)));
        }
        if let Some(e) = &p.exec {
            let Some(init) = init_pid(self.outer) else {
                return false;
            };
            let mut plan = self.plan.clone();
            let mut argv = vec![
                "/usr/bin/timeout".to_string(),
                "-s".into(),
                "KILL".into(),
                timeout.as_secs().to_string(),
            ];
            argv.extend(e.command.clone().unwrap_or_default());
            plan.argv = argv;
            if std::fs::write(
                &self.plan_file,
                serde_json::to_vec(&plan).unwrap_or_default(),
            )
            .is_err()
            {
                return false;
            }
            let out = tokio::process::Command::new("nsenter")
                .arg(format!("--target={init}"))
                .args(["--net", "--mount", "--pid", "--"])
                .arg(&self.shared.testbed_exe)
                .args(["container-init", "--enter"])
                .arg(&self.plan_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status();
            return matches!(
                tokio::time::timeout(timeout + Duration::from_secs(2), out).await,
                Ok(Ok(s)) if s.success()
            );
        }
        false
    }

    async fn probe_loop(&self, c: &Container) {
        let started = Instant::now();
        let name = c.name.clone();
        // Startup probe first: readiness and liveness wait for it.
        if let Some(p) = &c.startup_probe
            && !self.until(c, p, started, true).await
        {
            signal_init(self.outer, nix::sys::signal::Signal::SIGKILL);
            return;
        }
        set(&self.run, None, &name, |s| {
            s.started_at = s.started_at.or(Some(now()))
        });
        let readiness = c.readiness_probe.clone();
        let liveness = c.liveness_probe.clone();
        if readiness.is_none() {
            set(&self.run, None, &name, |s| s.ready = true);
        }
        let ready_task = readiness.map(|p| {
            let me = self.clone();
            let c = c.clone();
            tokio::spawn(async move { me.readiness(&c, &p, started).await })
        });
        if let Some(p) = liveness
            && !self.until(c, &p, started, false).await
        {
            warn!(pod = %self.run.key, container = %name, "liveness probe failed: restarting");
            signal_init(self.outer, nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(t) = ready_task {
            let _ = t.await;
        }
    }

    /// For startup (`until_success`) probes: true once it succeeds, false after
    /// failureThreshold failures. For liveness: runs until failureThreshold failures in a row.
    async fn until(&self, c: &Container, p: &Probe, started: Instant, until_success: bool) -> bool {
        let initial = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let threshold = p.failure_threshold.unwrap_or(3).max(1);
        tokio::time::sleep_until((started + initial).into()).await;
        let mut failures = 0;
        loop {
            if self.once(c, p).await {
                if until_success {
                    return true;
                }
                failures = 0;
            } else {
                failures += 1;
                if failures >= threshold {
                    return false;
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    async fn readiness(&self, c: &Container, p: &Probe, started: Instant) {
        let initial = Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        let fail_threshold = p.failure_threshold.unwrap_or(3).max(1);
        let ok_threshold = p.success_threshold.unwrap_or(1).max(1);
        tokio::time::sleep_until((started + initial).into()).await;
        let (mut ok, mut failed) = (0, 0);
        loop {
            let was_ready = self
                .run
                .state
                .borrow()
                .containers
                .iter()
                .any(|s| s.name == c.name && s.ready);
            if self.once(c, p).await {
                ok += 1;
                failed = 0;
                if !was_ready && ok >= ok_threshold {
                    set(&self.run, None, &c.name, |s| s.ready = true);
                }
            } else {
                failed += 1;
                ok = 0;
                if was_ready && failed >= fail_threshold {
                    set(&self.run, None, &c.name, |s| s.ready = false);
                }
            }
            // Until the first success, probe every second (the kubelet probes at once too;
            // a shorter first wait only makes readiness come sooner, never wrongly).
            let wait = if was_ready || ok > 0 {
                period
            } else {
                period.min(Duration::from_secs(1))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

fn time(t: &Timestamp) -> Time {
    Time(*t)
}

fn container_status(c: &ContainerState) -> serde_json::Value {
    let state = |t: &(i32, String, Option<Timestamp>, Timestamp)| {
        json!({"terminated": {
            "exitCode": t.0, "reason": t.1,
            "startedAt": t.2.as_ref().map(time), "finishedAt": time(&t.3),
        }})
    };
    let current = if let Some((reason, message)) = &c.waiting {
        json!({"waiting": {"reason": reason, "message": message}})
    } else if let Some(t) = &c.terminated {
        state(t)
    } else if let Some(s) = &c.started_at {
        json!({"running": {"startedAt": time(s)}})
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    };
    let running = c.waiting.is_none() && c.terminated.is_none() && c.started_at.is_some();
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": format!("procnode://{}", c.image),
        "containerID": format!("procnode://{}", c.name),
        "ready": c.ready,
        "started": running,
        "restartCount": c.restarts,
        "state": current,
        "lastState": c.last_terminated.as_ref().map(state).unwrap_or(json!({})),
    })
}

/// The pod status for `state`.
pub fn status(state: &PodState, ip: &str, start: &Timestamp) -> serde_json::Value {
    let all_ready = !state.containers.is_empty() && state.containers.iter().all(|c| c.ready);
    let phase = match state.finished {
        Some(p) => p,
        None if state.initialized && state.containers.iter().any(|c| c.started_at.is_some()) => {
            "Running"
        }
        None => "Pending",
    };
    let cond = |t: &str, ok: bool| {
        json!({"type": t, "status": if ok { "True" } else { "False" },
               "lastTransitionTime": time(start)})
    };
    json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "hostIPs": [{"ip": "127.0.0.1"}],
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": time(start),
        "message": state.message,
        "conditions": [
            cond("PodScheduled", true),
            cond("Initialized", state.initialized),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
        ],
        "initContainerStatuses": state.init.iter().map(container_status).collect::<Vec<_>>(),
        "containerStatuses": state.containers.iter().map(container_status).collect::<Vec<_>>(),
    })
}

/// Writes the pod status whenever the state changes, until the pod is stopped.
pub async fn report(shared: Arc<Shared>, run: Arc<PodRun>) {
    let api: Api<Pod> = Api::namespaced(
        shared.client.clone(),
        run.pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let name = run.pod.metadata.name.clone().unwrap_or_default();
    let start = now();
    let mut rx = run.state.subscribe();
    let mut stop = run.stop.clone();
    let mut last = serde_json::Value::Null;
    // Once the pod stops (finished, or deleted), its last state is still written: a Job's pod
    // that ended must show Succeeded or Failed, and nothing runs it again.
    let mut last_round = false;
    let mut failures = 0u32;
    loop {
        let body = status(&rx.borrow_and_update().clone(), &run.ip, &start);
        if body != last {
            let patch = json!({"status": body});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => last = body,
                Err(kube::Error::Api(s)) if s.code == 404 => return,
                Err(e) => {
                    debug!(pod = %run.key, error = %e, "status write failed; trying again");
                    failures += 1;
                    if last_round && failures > 20 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if last_round {
            return;
        }
        tokio::select! {
            biased;
            r = rx.changed() => if r.is_err() { last_round = true },
            _ = stopping(&mut stop) => last_round = true,
        }
    }
}
