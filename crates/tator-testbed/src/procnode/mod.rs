//! The process node: a Node whose pods really run, as processes on this machine.
//!
//! kwok's nodes make pods Running without running anything. For end-to-end tests the test bed
//! can also register `procnode-0`, served by this module instead of kwok: it runs each
//! container with exactly the command, arguments, working directory, environment, user and
//! volumes the API server holds (see [`init`]), the files of its image from the image table
//! ([`images`]), in a network namespace of its pod ([`net`]); pod status follows the processes
//! and their probes ([`pod`]). Services, pod addresses and LoadBalancer addresses reach the pods
//! through a proxy on loopback. Every process is stopped, by PID, when the cluster stops.

pub mod env;
pub mod images;
pub mod init;
pub mod net;
pub mod pod;
pub mod volumes;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, Pod, Service},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, Time},
        util::intstr::IntOrString,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{debug, info, warn};

pub use images::ImageSources;
use net::{Backend, Netns};
use pod::{ContainerState, PodRun, PodState};

/// Service annotation with the DNS names of its load-balancer address (external-dns).
pub const EXTERNAL_DNS: &str = "external-dns.alpha.kubernetes.io/hostname";

/// Name of the process node.
pub const NODE_NAME: &str = "procnode-0";

/// What the pods of the process node share.
pub struct Shared {
    pub client: Client,
    pub dir: PathBuf,
    pub images: ImageSources,
    pub testbed_exe: PathBuf,
    /// PIDs of the `unshare` processes that hold running containers.
    pids: Mutex<BTreeSet<u32>>,
    /// Set when the node stops: no container starts or restarts after that.
    stopping: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
    fn register(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.insert(pid);
        }
    }
    fn unregister(&self, pid: u32) {
        if let Ok(mut p) = self.pids.lock() {
            p.remove(&pid);
        }
    }
}

struct Running {
    uid: String,
    run: Arc<PodRun>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// A running process node; [`ProcNode::stop`] ends every process.
pub struct ProcNode {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ProcNode {
    /// Registers the node and starts serving its pods.
    pub async fn start(
        client: Client,
        dir: PathBuf,
        images: ImageSources,
        labels: BTreeMap<String, String>,
    ) -> Result<Self, crate::Error> {
        std::fs::create_dir_all(dir.join("pods")).map_err(crate::io_err(&dir))?;
        let testbed_exe = std::env::current_exe().map_err(crate::io_err(&dir))?;
        register_node(&client, &labels).await?;
        let shared = Arc::new(Shared {
            client,
            dir,
            images,
            testbed_exe,
            pids: Mutex::new(BTreeSet::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        let task = tokio::spawn(serve(shared.clone()));
        Ok(Self { shared, task })
    }

    /// Stops every container: SIGTERM to each container's first process, up to 10 s, then
    /// SIGKILL (which ends the container's whole PID namespace).
    pub fn stop(&mut self) {
        // First no more starts or restarts (the pods' tasks run on until the runtime ends).
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.task.abort();
        let registered = || -> Vec<u32> {
            self.shared
                .pids
                .lock()
                .map(|p| p.iter().copied().collect())
                .unwrap_or_default()
        };
        let alive = |pid: u32| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        };
        for pid in registered() {
            pod::signal_init(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while registered().into_iter().any(alive) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in registered() {
            pod::signal_init(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        // Unbind every pod network namespace.
        if let Ok(entries) = std::fs::read_dir(self.shared.dir.join("pods")) {
            for e in entries.flatten() {
                let ns = e.path().join("netns");
                let _ = nix::mount::umount2(&ns, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

impl Drop for ProcNode {
    fn drop(&mut self) {
        if !self.task.is_finished() {
            self.stop();
        }
    }
}

async fn register_node(
    client: &Client,
    labels: &BTreeMap<String, String>,
) -> Result<(), crate::Error> {
    let api: Api<Node> = Api::all(client.clone());
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu", "32"),
        ("memory", "256Gi"),
        ("pods", "250"),
        ("ephemeral-storage", "1Ti"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
    .collect();
    let mut labels = labels.clone();
    labels.insert("kubernetes.io/hostname".into(), NODE_NAME.into());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), "amd64".into());
    labels.insert("type".into(), "procnode".into());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE_NAME.into()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(source) => {
            return Err(crate::Error::Kube {
                action: "registering the process node".into(),
                source,
            });
        }
    }
    let status = json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
        "nodeInfo": {"kubeletVersion": "procnode", "containerRuntimeVersion": "procnode://1",
                     "operatingSystem": "linux", "architecture": "amd64", "kernelVersion": "", "osImage": "",
                     "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""},
    }});
    api.patch_status(NODE_NAME, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|source| crate::Error::Kube {
            action: "writing the process node's status".into(),
            source,
        })?;
    heartbeat(client).await;
    Ok(())
}

/// Renews the node's Lease and its Ready condition (the node lifecycle controller taints and
/// evicts a node whose heartbeats stop).
async fn heartbeat(client: &Client) {
    let now = Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let ready = json!({"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "the process node runs pods as local processes",
        "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now),
    }]}});
    if let Err(e) = nodes
        .patch_status(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Strategic(&ready),
        )
        .await
    {
        debug!(error = %e, "node heartbeat");
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(NODE_NAME.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(NODE_NAME.into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    };
    let pp = PatchParams::apply("procnode").force();
    if let Err(e) = leases.patch(NODE_NAME, &pp, &Patch::Apply(&lease)).await {
        debug!(error = %e, "node lease");
    }
}

fn key(p: &Pod) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

async fn serve(shared: Arc<Shared>) {
    let client = shared.client.clone();
    let pods_api: Api<Pod> = Api::all(client.clone());
    let svc_api: Api<Service> = Api::all(client.clone());
    let (pods, pod_writer) = reflector::store::<Pod>();
    let (svcs, svc_writer) = reflector::store::<Service>();
    let (changed_tx, mut changed) = watch::channel(0u64);
    let tx1 = changed_tx.clone();
    let pod_stream = reflector(
        pod_writer,
        watcher(
            pods_api,
            watcher::Config::default().fields(&format!("spec.nodeName={NODE_NAME}")),
        ),
    )
    .default_backoff()
    .touched_objects()
    .for_each(move |_| {
        tx1.send_modify(|n| *n += 1);
        async {}
    });
    let tx2 = changed_tx.clone();
    let svc_stream = reflector(svc_writer, watcher(svc_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .for_each(move |_| {
            tx2.send_modify(|n| *n += 1);
            async {}
        });
    tokio::spawn(pod_stream);
    tokio::spawn(svc_stream);
    let hb_client = client.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            heartbeat(&hb_client).await;
        }
    });
    let host = match Netns::host() {
        Ok(h) => Arc::new(h),
        Err(e) => {
            warn!(error = %e, "no socket thread for the host namespace");
            return;
        }
    };
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    // Pods whose containers have run to the end: never started again, even while the watch
    // still shows them Running (their final phase is written after they leave `running`).
    let mut done: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    let mut next_ip: u32 = 0;
    let proxy = Arc::new(Proxy::default());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = changed.changed() => {}
            _ = tick.tick() => {}
        }
        let current: BTreeMap<String, Arc<Pod>> =
            pods.state().into_iter().map(|p| (key(&p), p)).collect();
        // Stop pods that are gone, replaced, deleted or finished.
        let keys: Vec<String> = running.keys().cloned().collect();
        for k in keys {
            let Some(r) = running.get(&k) else { continue };
            let gone = match current.get(&k) {
                None => true,
                Some(p) => {
                    p.uid().as_deref() != Some(r.uid.as_str())
                        || p.metadata.deletion_timestamp.is_some()
                }
            };
            let finished = r.run.state.borrow().finished.is_some();
            if finished {
                done.insert(r.uid.clone());
            }
            if (gone || finished)
                && let Some(r) = running.remove(&k)
            {
                let _ = r.stop.send(true);
                let deleting = current
                    .get(&k)
                    .filter(|p| p.uid().as_deref() == Some(r.uid.as_str()))
                    .cloned();
                let client = client.clone();
                tokio::spawn(async move {
                    for t in r.tasks {
                        let _ = t.await;
                    }
                    r.run.netns.remove();
                    if let Some(p) = deleting.filter(|p| p.metadata.deletion_timestamp.is_some()) {
                        // The kubelet's last word: the pod's processes are gone.
                        let api: Api<Pod> =
                            Api::namespaced(client, &p.namespace().unwrap_or_default());
                        let _ = api
                            .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                            .await;
                    }
                });
            }
        }
        done.retain(|uid| {
            current
                .values()
                .any(|p| p.uid().as_deref() == Some(uid.as_str()))
        });
        // Start new pods.
        for (k, p) in &current {
            if running.contains_key(k)
                || p.metadata.deletion_timestamp.is_some()
                || p.uid().is_some_and(|u| done.contains(&u))
            {
                continue;
            }
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            if phase == "Succeeded" || phase == "Failed" {
                continue;
            }
            next_ip += 1;
            match start_pod(&shared, p, next_ip) {
                Ok(r) => {
                    info!(pod = %k, ip = %r.run.ip, "starting pod");
                    running.insert(k.clone(), r);
                }
                Err(e) => warn!(pod = %k, error = %e, "could not start pod"),
            }
        }
        let services: Vec<Arc<Service>> = svcs.state();
        proxy.update(&running, &services, &host).await;
        // Every pod now has its hosts file and its Service listeners: its containers may start.
        for r in running.values() {
            r.run
                .network
                .send_if_modified(|ready| !std::mem::replace(ready, true));
        }
    }
}

fn start_pod(shared: &Arc<Shared>, p: &Pod, n: u32) -> Result<Running, String> {
    let uid = p.uid().unwrap_or_default();
    let dir = shared.dir.join("pods").join(format!(
        "{}_{}_{}",
        p.namespace().unwrap_or_default(),
        p.name_any(),
        &uid
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let netns = Arc::new(Netns::create(&dir.join("netns")).map_err(|e| e.to_string())?);
    let ip = Ipv4Addr::new(127, 244, ((n >> 8) & 0xff) as u8, (n & 0xff) as u8).to_string();
    let hosts_file = dir.join("hosts");
    let hosts_text = "127.0.0.1\tlocalhost\n".to_string();
    std::fs::write(&hosts_file, &hosts_text).map_err(|e| e.to_string())?;
    let spec = p.spec.clone().unwrap_or_default();
    let states = |cs: &[k8s_openapi::api::core::v1::Container]| {
        cs.iter()
            .map(|c| ContainerState {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    let (state, _) = watch::channel(PodState {
        init: states(spec.init_containers.as_deref().unwrap_or_default()),
        containers: states(&spec.containers),
        initialized: spec.init_containers.as_ref().is_none_or(|i| i.is_empty()),
        ..Default::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = Arc::new(PodRun {
        key: key(p),
        pod: p.clone(),
        ip,
        dir,
        netns,
        hosts_file,
        hosts_text: Mutex::new(hosts_text),
        state,
        stop: stop_rx,
        network: watch::channel(false).0,
    });
    let tasks = vec![
        tokio::spawn(pod::report(shared.clone(), run.clone())),
        tokio::spawn(pod::run(shared.clone(), run.clone())),
    ];
    Ok(Running {
        uid,
        run,
        stop: stop_tx,
        tasks,
    })
}

/// Listening sockets by (namespace owner, address), and where each address forwards to.
#[derive(Default)]
struct Proxy {
    routes: Mutex<BTreeMap<(String, SocketAddr), Vec<Backend>>>,
    listeners: tokio::sync::Mutex<BTreeMap<(String, SocketAddr), JoinHandle<()>>>,
    netns: Mutex<BTreeMap<String, Arc<Netns>>>,
    rr: AtomicUsize,
}

fn selects(svc: &Service, p: &Pod) -> bool {
    let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
        return false;
    };
    if sel.is_empty() || svc.namespace() != p.namespace() {
        return false;
    }
    let labels = p.labels();
    sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The API server behind the `default/kubernetes` Service: the address it advertises
/// (127.0.0.1, which an EndpointSlice may not hold, so the Service has none) and its secure port
/// (the Service's target port), reached from the host's network namespace.
fn api_server(target: &IntOrString) -> Option<Backend> {
    let IntOrString::Int(port) = target else {
        return None;
    };
    Some(Backend {
        pod: String::new(), // the host's namespace
        addr: SocketAddr::new(IpAddr::from([127, 0, 0, 1]), u16::try_from(*port).ok()?),
    })
}

fn target_port(p: &Pod, port: &IntOrString) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => p
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

impl Proxy {
    async fn update(
        self: &Arc<Self>,
        running: &BTreeMap<String, Running>,
        services: &[Arc<Service>],
        host: &Arc<Netns>,
    ) {
        let ready = |r: &Running| {
            r.run.state.borrow().containers.iter().all(|c| c.ready)
                && !r.run.state.borrow().containers.is_empty()
        };
        // address -> backends, and the names every pod resolves.
        let mut by_addr: BTreeMap<SocketAddr, Vec<Backend>> = BTreeMap::new();
        let mut lb: BTreeMap<SocketAddr, Vec<Backend>> = BTreeMap::new();
        let mut names: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        // external-dns names -> load-balancer address
        let mut public: BTreeMap<String, String> = BTreeMap::new(); // ns -> name -> ip
        for svc in services {
            let Some(spec) = &svc.spec else { continue };
            let ns = svc.namespace().unwrap_or_default();
            let name = svc.name_any();
            let headless = spec.cluster_ip.as_deref() == Some("None");
            let publish = spec.publish_not_ready_addresses == Some(true);
            let members: Vec<&Running> = running
                .values()
                .filter(|r| selects(svc, &r.run.pod) && (publish || ready(r)))
                .collect();
            let svc_ip: Option<IpAddr> = if headless {
                members.first().and_then(|r| r.run.ip.parse().ok())
            } else {
                spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok())
            };
            let lb_ips: Vec<IpAddr> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().and_then(|i| i.parse().ok()))
                .collect();
            // The DNS names external-dns would publish for the load balancer's address: how
            // pods (and people) reach an installation by its public name, as in a cluster whose
            // DNS points the name at the load balancer.
            if let (Some(ip), Some(hosts)) = (lb_ips.first(), svc.annotations().get(EXTERNAL_DNS)) {
                for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    public.insert(h.to_string(), ip.to_string());
                }
            }
            if let Some(ip) = svc_ip {
                let n = names.entry(ns.clone()).or_default();
                for form in [
                    name.clone(),
                    format!("{name}.{ns}"),
                    format!("{name}.{ns}.svc"),
                    format!("{name}.{ns}.svc.cluster.local"),
                ] {
                    n.insert(form, ip.to_string());
                }
            }
            for port in spec.ports.iter().flatten() {
                let tp = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                let mut backends: Vec<Backend> = members
                    .iter()
                    .filter_map(|r| {
                        let p = target_port(&r.run.pod, &tp)?;
                        let ip: IpAddr = r.run.ip.parse().ok()?;
                        Some(Backend {
                            pod: r.run.key.clone(),
                            addr: SocketAddr::new(ip, p),
                        })
                    })
                    .collect();
                if ns == "default" && name == "kubernetes" {
                    backends.extend(api_server(&tp));
                }
                let Ok(port_no) = u16::try_from(port.port) else {
                    continue;
                };
                if !headless && let Some(ip) = svc_ip {
                    by_addr
                        .entry(SocketAddr::new(ip, port_no))
                        .or_default()
                        .extend(backends.clone());
                }
                for ip in &lb_ips {
                    lb.entry(SocketAddr::new(*ip, port_no))
                        .or_default()
                        .extend(backends.clone());
                }
                // Headless Services (and StatefulSet pod names) resolve to pod addresses.
                if headless {
                    for b in &backends {
                        by_addr
                            .entry(SocketAddr::new(b.addr.ip(), port_no))
                            .or_default()
                            .push(Backend {
                                pod: b.pod.clone(),
                                addr: SocketAddr::new(b.addr.ip(), b.addr.port()),
                            });
                    }
                }
            }
            if headless {
                for r in running.values().filter(|r| selects(svc, &r.run.pod)) {
                    let spec = r.run.pod.spec.as_ref();
                    let (Some(h), Some(sub)) = (
                        spec.and_then(|s| s.hostname.clone()),
                        spec.and_then(|s| s.subdomain.clone()),
                    ) else {
                        continue;
                    };
                    if sub != name {
                        continue;
                    }
                    let n = names.entry(ns.clone()).or_default();
                    for form in [
                        format!("{h}.{sub}"),
                        format!("{h}.{sub}.{ns}"),
                        format!("{h}.{sub}.{ns}.svc"),
                        format!("{h}.{sub}.{ns}.svc.cluster.local"),
                    ] {
                        n.insert(form, r.run.ip.clone());
                    }
                }
            }
        }
        // Every pod's declared ports answer on its address from every other pod.
        for r in running.values() {
            let Ok(ip) = r.run.ip.parse::<IpAddr>() else {
                continue;
            };
            for c in r.run.pod.spec.iter().flat_map(|s| s.containers.iter()) {
                for cp in c.ports.iter().flatten() {
                    if let Ok(p) = u16::try_from(cp.container_port) {
                        let b = by_addr.entry(SocketAddr::new(ip, p)).or_default();
                        if !b.iter().any(|x| x.pod == r.run.key) {
                            b.push(Backend {
                                pod: r.run.key.clone(),
                                addr: SocketAddr::new(ip, p),
                            });
                        }
                    }
                }
            }
        }
        // Routes per namespace owner: every pod sees every address except its own pod address.
        let mut routes: BTreeMap<(String, SocketAddr), Vec<Backend>> = BTreeMap::new();
        for r in running.values() {
            // A pod's own ports stay free for its processes: a listener on a Service address
            // would make their bind to 0.0.0.0 fail (kube-proxy rewrites packets instead).
            let own: BTreeSet<u16> = r
                .run
                .pod
                .spec
                .iter()
                .flat_map(|s| {
                    s.containers
                        .iter()
                        .chain(s.init_containers.iter().flatten())
                })
                .flat_map(|c| c.ports.iter().flatten())
                .filter_map(|p| u16::try_from(p.container_port).ok())
                .collect();
            for (addr, backends) in &by_addr {
                if addr.ip().to_string() == r.run.ip || own.contains(&addr.port()) {
                    continue;
                }
                routes.insert((r.run.key.clone(), *addr), backends.clone());
            }
            // Hosts file: the pod's own names, then every Service (short names in its namespace).
            let ns = r.run.pod.namespace().unwrap_or_default();
            let mut list: BTreeMap<String, String> = BTreeMap::new();
            for (n_ns, entries) in &names {
                for (name, ip) in entries {
                    if n_ns == &ns || name.contains('.') {
                        list.insert(name.clone(), ip.clone());
                    }
                }
            }
            for (name, ip) in &public {
                list.insert(name.clone(), ip.clone());
            }
            let spec = r.run.pod.spec.as_ref();
            let hostname = spec
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| r.run.pod.name_any());
            let text = net::hosts_file(&r.run.ip, &hostname, &list);
            if let Ok(mut last) = r.run.hosts_text.lock()
                && *last != text
            {
                // Written in place: the file is bound into the pod's containers.
                if std::fs::write(&r.run.hosts_file, &text).is_ok() {
                    *last = text;
                }
            }
        }
        for (addr, backends) in lb {
            // Load-balancer addresses answer on the host and, as kube-proxy arranges, in pods.
            for r in running.values() {
                if !backends.iter().any(|b| b.pod == r.run.key) {
                    routes.insert((r.run.key.clone(), addr), backends.clone());
                }
            }
            routes.insert((String::new(), addr), backends);
        }
        {
            let mut ns = match self.netns.lock() {
                Ok(n) => n,
                Err(_) => return,
            };
            ns.clear();
            ns.insert(String::new(), host.clone());
            for r in running.values() {
                ns.insert(r.run.key.clone(), r.run.netns.clone());
            }
        }
        let wanted: BTreeSet<(String, SocketAddr)> = routes.keys().cloned().collect();
        if let Ok(mut rt) = self.routes.lock() {
            *rt = routes;
        }
        let mut listeners = self.listeners.lock().await;
        listeners.retain(|k, h| {
            let keep = wanted.contains(k) && !h.is_finished();
            if !keep {
                h.abort();
            }
            keep
        });
        for k in wanted {
            if listeners.contains_key(&k) {
                continue;
            }
            let Some(ns) = self.netns.lock().ok().and_then(|n| n.get(&k.0).cloned()) else {
                continue;
            };
            match ns.listen(k.1).await {
                Ok(l) => {
                    let me = self.clone();
                    let key = k.clone();
                    listeners.insert(k, tokio::spawn(async move { me.accept(key, l).await }));
                }
                Err(e) => debug!(owner = %k.0, addr = %k.1, error = %e, "listen"),
            }
        }
    }

    async fn accept(self: Arc<Self>, key: (String, SocketAddr), l: tokio::net::TcpListener) {
        loop {
            let Ok((mut inbound, _)) = l.accept().await else {
                return;
            };
            let backends = self
                .routes
                .lock()
                .ok()
                .and_then(|r| r.get(&key).cloned())
                .unwrap_or_default();
            if backends.is_empty() {
                continue; // no ready endpoint: the connection is closed, as with no endpoints
            }
            let b = backends[self.rr.fetch_add(1, Ordering::Relaxed) % backends.len()].clone();
            let Some(ns) = self.netns.lock().ok().and_then(|n| n.get(&b.pod).cloned()) else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = ns.connect(b.addr).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }
}
