//! Job clusters: one background worker per cluster keeps its objects applied with a client of
//! its own, checks that the cluster answers, and reports what it saw.
//!
//! Reconciles never wait on another cluster: they hand the worker what is desired and read the
//! worker's last report. A worker checks every [`CHECK_INTERVAL`] while the cluster is healthy
//! and backs off (2 s doubling to [`MAX_BACKOFF`]) while it is not; every check re-reads the
//! kubeconfig Secret, so a rotated credential is used at the next check. When a report changes
//! the worker asks for a reconcile of its TatorDeployment.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::{
    core::v1::{Namespace, Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    runtime::reflector::ObjectRef,
};
use serde::{Serialize, de::DeserializeOwned};
use tator_api::{JobCluster, JobClusterStatus, KubeconfigSecret, TatorDeployment};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    apply::FIELD_MANAGER,
    build::{
        common::short_hash,
        remote::{self, CA_KEY, RemoteObjects, TOKEN_KEY},
        workflows::workflow_template_resource,
    },
};

/// Checks of a healthy cluster.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// Longest wait between attempts on a failing cluster.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest a single check (connect, apply, prune) may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// One condition of a job cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Check {
    fn new(ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            ok,
            reason: reason.into(),
            message: message.into(),
        }
    }
    fn pending() -> Self {
        Self::new(false, "Pending", "not checked yet")
    }
}

/// Tator's credentials for a cluster. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub token: String,
    pub ca: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(***)")
    }
}

/// What a worker last saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub reachable: Check,
    pub templates: Check,
    /// The API server URL from the kubeconfig.
    pub server: Option<String>,
    /// Tator's token and the cluster CA, once the token controller filled the Secret.
    pub credentials: Option<Credentials>,
    /// Objects the worker keeps in the cluster (Kind/name).
    pub objects: Vec<String>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            reachable: Check::pending(),
            templates: Check::pending(),
            server: None,
            credentials: None,
            objects: Vec::new(),
        }
    }
}

/// What a worker is asked to keep in its cluster (no Debug: it holds Secret copies).
#[derive(Clone, PartialEq)]
pub struct Desired {
    /// Namespace of the TatorDeployment (and of the kubeconfig Secret).
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub cluster: JobCluster,
    pub objects: RemoteObjects,
    /// Copies of the Secrets `objects.copied_secrets` names (read from this cluster).
    pub copies: Vec<Secret>,
    /// Digest of the objects and copies: a worker applies again when it changes.
    pub digest: String,
}

impl Desired {
    /// Digest of what a cluster should hold.
    pub fn digest_of(objects: &RemoteObjects, copies: &[Secret]) -> String {
        let text = serde_json::to_string(&(
            &objects.namespace,
            &objects.service_accounts,
            &objects.roles,
            &objects.role_bindings,
            &objects.token_secret,
            copies,
            objects.templates.as_ref().ok(),
            objects.templates.as_ref().err(),
        ))
        .unwrap_or_default();
        short_hash(text.as_bytes(), 32)
    }
}

struct Worker {
    desired: watch::Sender<Desired>,
    report: Arc<Mutex<Report>>,
    /// Checks the worker has finished.
    checks: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (uid of the TatorDeployment, job cluster name).
type ClusterKey = (String, String);

/// Every job-cluster worker of this operator.
pub struct JobClusters {
    main: Client,
    /// Whether kubeconfig Secrets must consent (re-checked at every read).
    consent: crate::consent::Mode,
    workers: Mutex<HashMap<ClusterKey, Worker>>,
    removals: Mutex<HashMap<ClusterKey, Arc<Mutex<Removal>>>>,
    trigger: Mutex<Option<UnboundedSender<ObjectRef<TatorDeployment>>>>,
    /// Installations whose one-off clean-ups this process has done.
    synced_once: Mutex<HashSet<String>>,
}

impl JobClusters {
    pub fn new(main: Client, consent: crate::consent::Mode) -> Self {
        Self {
            main,
            consent,
            workers: Mutex::new(HashMap::new()),
            removals: Mutex::new(HashMap::new()),
            trigger: Mutex::new(None),
            synced_once: Mutex::new(HashSet::new()),
        }
    }

    /// True the first time an installation's job clusters are synced by this process.
    fn first_sync(&self, uid: &str) -> bool {
        self.synced_once
            .lock()
            .map(|mut s| s.insert(uid.to_string()))
            .unwrap_or(false)
    }

    /// Where workers ask for reconciles.
    pub fn set_trigger(&self, tx: UnboundedSender<ObjectRef<TatorDeployment>>) {
        if let Ok(mut t) = self.trigger.lock() {
            *t = Some(tx);
        }
    }

    /// Hands each cluster's worker what is desired (starting workers as needed, stopping those
    /// of clusters no longer listed) and returns their last reports, in spec order.
    pub fn sync(&self, desired: Vec<Desired>, uid: &str) -> Vec<Report> {
        let Ok(mut workers) = self.workers.lock() else {
            return Vec::new();
        };
        let keep: BTreeSet<String> = desired.iter().map(|d| d.cluster.name.clone()).collect();
        workers.retain(|(u, name), _| u != uid || keep.contains(name));
        let mut out = Vec::new();
        for d in desired {
            let key = (uid.to_string(), d.cluster.name.clone());
            if let Some(w) = workers.get(&key) {
                w.desired.send_if_modified(|cur| {
                    if *cur == d {
                        false
                    } else {
                        *cur = d.clone();
                        true
                    }
                });
                out.push(w.report.lock().map(|r| r.clone()).unwrap_or_default());
                continue;
            }
            let (tx, rx) = watch::channel(d.clone());
            let report = Arc::new(Mutex::new(Report::default()));
            let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let trigger = self.trigger.lock().ok().and_then(|t| t.clone());
            let task = tokio::spawn(run_worker(
                self.main.clone(),
                self.consent,
                rx,
                (report.clone(), checks.clone()),
                trigger,
            ));
            out.push(Report::default());
            workers.insert(
                key,
                Worker {
                    desired: tx,
                    report,
                    checks,
                    task,
                },
            );
        }
        out
    }

    /// Checks the worker of one cluster has finished (None: no such worker): what tests wait on
    /// to see that a check happened.
    pub fn checks(&self, uid: &str, cluster: &str) -> Option<u64> {
        let workers = self.workers.lock().ok()?;
        let w = workers.get(&(uid.to_string(), cluster.to_string()))?;
        Some(w.checks.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Stops every worker of one TatorDeployment (it is being deleted).
    pub fn stop(&self, uid: &str) {
        if let Ok(mut workers) = self.workers.lock() {
            workers.retain(|(u, _), _| u != uid);
        }
    }
}

async fn run_worker(
    main: Client,
    consent: crate::consent::Mode,
    mut rx: watch::Receiver<Desired>,
    (report, checks): (Arc<Mutex<Report>>, Arc<std::sync::atomic::AtomicU64>),
    trigger: Option<UnboundedSender<ObjectRef<TatorDeployment>>>,
) {
    let mut session: Option<Session> = None;
    let mut last: Option<LastApply> = None;
    let mut failures: u32 = 0;
    loop {
        let d = rx.borrow_and_update().clone();
        let r = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            sync_once(&main, consent, &d, &mut session, &mut last),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                session = None;
                last = None;
                Report {
                    reachable: Check::new(
                        false,
                        "Unreachable",
                        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
                    ),
                    ..Report::default()
                }
            }
        };
        let healthy = r.reachable.ok && r.templates.ok;
        failures = if healthy {
            0
        } else {
            failures.saturating_add(1)
        };
        let changed = report
            .lock()
            .map(|mut cur| {
                let changed = *cur != r;
                *cur = r.clone();
                changed
            })
            .unwrap_or(false);
        if changed {
            info!(tator = %d.name, cluster = %d.cluster.name, reachable = %r.reachable.reason, templates = %r.templates.reason, "job cluster state changed");
            if let Some(tx) = &trigger {
                let _ = tx.unbounded_send(ObjectRef::new(&d.name).within(&d.namespace));
            }
        }
        checks.fetch_add(1, std::sync::atomic::Ordering::Release);
        let wait = if healthy {
            CHECK_INTERVAL
        } else {
            backoff(failures)
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// 2 s, 4 s, 8 s, … capped at [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.clamp(1, 5);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// A client for one kubeconfig (rebuilt when the kubeconfig changes).
struct Session {
    kubeconfig_hash: String,
    client: Client,
    server: String,
}

/// Why a kubeconfig cannot be used.
fn refuse(kc: &Kubeconfig) -> Option<String> {
    for a in &kc.auth_infos {
        let Some(info) = &a.auth_info else { continue };
        if info.exec.is_some() {
            return Some(format!(
                "user {:?} uses an exec plugin, which the operator does not run",
                a.name
            ));
        }
        if info.auth_provider.is_some() {
            return Some(format!("user {:?} uses an auth provider", a.name));
        }
        if info.token_file.is_some()
            || info.client_certificate.is_some()
            || info.client_key.is_some()
        {
            return Some(format!(
                "user {:?} refers to files: put the credentials inline (token, client-certificate-data, client-key-data)",
                a.name
            ));
        }
    }
    for c in &kc.clusters {
        let Some(cluster) = c.cluster.as_ref() else {
            continue;
        };
        // Credentials and copied Secrets go to this server: only over verified TLS.
        if !cluster
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("https://"))
        {
            return Some(format!(
                "cluster {:?} is not an https:// server: its credentials would cross the network in clear text",
                c.name
            ));
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Some(format!(
                "cluster {:?} skips TLS verification: give its CA as certificate-authority-data",
                c.name
            ));
        }
        if cluster.certificate_authority.is_some() {
            return Some(format!(
                "cluster {:?} refers to a CA file: use certificate-authority-data",
                c.name
            ));
        }
    }
    None
}

/// Reads the kubeconfig Secret and returns a client for it (the cached one if unchanged).
async fn session<'a>(
    main: &Client,
    namespace: &str,
    secret_ref: &KubeconfigSecret,
    who: Option<(&str, &str)>,
    cached: &'a mut Option<Session>,
) -> Result<&'a Session, Check> {
    let secrets: Api<Secret> = Api::namespaced(main.clone(), namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            Check::new(
                false,
                "SecretUnreadable",
                format!("Secret {}: {e}", secret_ref.name),
            )
        })?
        .ok_or_else(|| {
            Check::new(
                false,
                "SecretNotFound",
                format!("kubeconfig Secret {} does not exist", secret_ref.name),
            )
        })?;
    if let Some((name, uid)) = who
        && !crate::consent::consents(&secret.metadata, name, uid)
    {
        *cached = None;
        return Err(Check::new(
            false,
            "SecretNotAllowed",
            format!(
                "kubeconfig Secret {} does not list this TatorDeployment in its annotation {}",
                secret_ref.name,
                crate::consent::ANNOTATION
            ),
        ));
    }
    let bytes = secret
        .data
        .and_then(|mut m| m.remove(&secret_ref.key))
        .ok_or_else(|| {
            Check::new(
                false,
                "SecretNotFound",
                format!("Secret {} has no key {}", secret_ref.name, secret_ref.key),
            )
        })?;
    let hash = short_hash(&bytes.0, 32);
    if cached.as_ref().is_some_and(|s| s.kubeconfig_hash == hash) {
        return cached.as_ref().ok_or_else(Check::pending);
    }
    let text = String::from_utf8(bytes.0)
        .map_err(|_| Check::new(false, "InvalidKubeconfig", "the kubeconfig is not text"))?;
    // Parse errors can quote the input: report only where it failed.
    let kc = Kubeconfig::from_yaml(&text).map_err(|_| {
        Check::new(
            false,
            "InvalidKubeconfig",
            format!(
                "key {} of Secret {} is not a kubeconfig",
                secret_ref.key, secret_ref.name
            ),
        )
    })?;
    if let Some(why) = refuse(&kc) {
        return Err(Check::new(false, "UnsupportedKubeconfig", why));
    }
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Check::new(false, "InvalidKubeconfig", scrub_kube(&e.to_string())))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(15));
    config.write_timeout = Some(Duration::from_secs(15));
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| Check::new(false, "InvalidKubeconfig", scrub_kube(&e.to_string())))?;
    if cached.is_some() {
        info!(secret = %secret_ref.name, "kubeconfig changed: new client");
    }
    *cached = Some(Session {
        kubeconfig_hash: hash,
        client,
        server,
    });
    cached.as_ref().ok_or_else(Check::pending)
}

/// Error texts keep only their first line, without anything that looks like a credential.
fn scrub_kube(m: &str) -> String {
    m.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

fn reach_error(e: &kube::Error) -> Check {
    match e {
        kube::Error::Api(s) if s.code == 401 => Check::new(
            false,
            "Unauthorized",
            "the API server refused the kubeconfig's credentials (401)",
        ),
        kube::Error::Api(s) if s.code == 403 => Check::new(
            false,
            "Forbidden",
            format!("the kubeconfig's user may not do this: {}", s.message),
        ),
        other => Check::new(
            false,
            "Unreachable",
            scrub_kube(
                &std::error::Error::source(other)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| other.to_string()),
            ),
        ),
    }
}

/// What the last full apply left in a cluster.
struct LastApply {
    /// [`Desired::digest`] of what was applied.
    digest: String,
    argo: bool,
    at: std::time::Instant,
    objects: Vec<String>,
}

/// How often a healthy cluster's objects are applied again although nothing changed (drift
/// repair); the checks in between only read.
pub const FULL_APPLY_INTERVAL: Duration = Duration::from_secs(300);

fn templates_check(d: &Desired, argo: bool, credentials: Option<&Credentials>) -> Check {
    match (&d.objects.templates, argo, credentials) {
        (Err(e), _, _) => Check::new(false, "InvalidTemplate", e.clone()),
        (Ok(_), false, _) => Check::new(
            false,
            "ArgoNotInstalled",
            "Argo Workflows' CRDs (workflowtemplates.argoproj.io) are not installed in the job cluster",
        ),
        (_, _, None) => Check::new(
            false,
            "TokenPending",
            "waiting for the token controller to fill Tator's token Secret",
        ),
        (Ok(t), _, Some(_)) => Check::new(
            true,
            "Applied",
            format!(
                "namespace {}, roles, token and {} WorkflowTemplate(s) applied",
                d.cluster.namespace,
                t.len()
            ),
        ),
    }
}

fn unreachable(check: Check, server: Option<String>) -> Report {
    Report {
        reachable: check,
        templates: Check::new(false, "Unreachable", "the cluster could not be reached"),
        server,
        ..Report::default()
    }
}

async fn sync_once(
    main: &Client,
    consent: crate::consent::Mode,
    d: &Desired,
    cached: &mut Option<Session>,
    last: &mut Option<LastApply>,
) -> Report {
    let who =
        (consent == crate::consent::Mode::Required).then_some((d.name.as_str(), d.uid.as_str()));
    let s = match session(
        main,
        &d.namespace,
        &d.cluster.kubeconfig_secret,
        who,
        cached,
    )
    .await
    {
        Ok(s) => s,
        Err(check) => return unreachable(check, None),
    };
    let client = s.client.clone();
    let server = Some(s.server.clone());
    if let Err(e) = client.apiserver_version().await {
        *cached = None;
        *last = None;
        return unreachable(reach_error(&e), server);
    }
    let reachable = Check::new(true, "Connected", format!("{} answers", s.server));
    // Nothing changed since the last apply: read only (Argo's CRDs and Tator's token).
    if let Some(l) = last.as_ref()
        && l.digest == d.digest
        && l.at.elapsed() < FULL_APPLY_INTERVAL
    {
        let ns = d.cluster.namespace.as_str();
        let read = async {
            let argo = crd_present(&client, ns, &workflow_template_resource()).await?;
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            let token = secrets
                .get_opt(&d.objects.token_secret.name_any())
                .await
                .map_err(err("Secret token"))?;
            Ok::<_, RemoteError>((argo, token.as_ref().and_then(credentials_of)))
        };
        match read.await {
            Ok((argo, credentials)) if argo == l.argo && credentials.is_some() => {
                return Report {
                    reachable,
                    templates: templates_check(d, argo, credentials.as_ref()),
                    server,
                    credentials,
                    objects: l.objects.clone(),
                };
            }
            Ok(_) => {}
            Err(e) => {
                let failed = reach_error(&e.source);
                if failed.reason == "Unreachable" {
                    *cached = None;
                    *last = None;
                    return unreachable(failed, server);
                }
            }
        }
    }
    *last = None;
    match apply_remote(&client, d).await {
        Ok((objects, argo, credentials)) => {
            let templates = templates_check(d, argo, credentials.as_ref());
            if templates.ok {
                *last = Some(LastApply {
                    digest: d.digest.clone(),
                    argo,
                    at: std::time::Instant::now(),
                    objects: objects.clone(),
                });
            }
            Report {
                reachable,
                templates,
                server,
                credentials,
                objects,
            }
        }
        Err(e) => {
            let failed = reach_error(&e.source);
            // A connection that broke mid-way is unreachability; anything else is an apply error.
            if failed.reason == "Unreachable" {
                *cached = None;
                return unreachable(failed, server);
            }
            Report {
                reachable,
                templates: Check::new(
                    false,
                    "ApplyFailed",
                    format!("{}: {}", e.what, failed.message),
                ),
                server,
                ..Report::default()
            }
        }
    }
}

fn credentials_of(token: &Secret) -> Option<Credentials> {
    let data = token.data.as_ref()?;
    let token = String::from_utf8(data.get(TOKEN_KEY)?.0.clone()).ok()?;
    let ca = String::from_utf8(data.get(CA_KEY)?.0.clone()).ok()?;
    (!token.is_empty()).then_some(Credentials { token, ca })
}

struct RemoteError {
    what: String,
    source: kube::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> RemoteError {
    let what = what.into();
    move |source| RemoteError { what, source }
}

async fn ssa<K>(client: &Client, ns: &str, obj: &K) -> Result<K, RemoteError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(err(format!("{} {name}", K::kind(&()))))
}

/// Applies the desired objects, prunes the ones no longer desired, and reads the token back.
async fn apply_remote(
    client: &Client,
    d: &Desired,
) -> Result<(Vec<String>, bool, Option<Credentials>), RemoteError> {
    let o = &d.objects;
    let ns = d.cluster.namespace.as_str();
    // The namespace: created when missing, never taken over when it exists.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_metadata_opt(ns)
        .await
        .map_err(err(format!("Namespace {ns}")))?
        .is_none()
    {
        match namespaces
            .create(&PostParams::default(), &o.namespace)
            .await
        {
            Ok(_) => info!(cluster = %d.cluster.name, namespace = ns, "created the job namespace"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(err(format!("Namespace {ns}"))(e)),
        }
    }
    let mut objects = Vec::new();
    for sa in &o.service_accounts {
        ssa(client, ns, sa).await?;
        objects.push(format!("ServiceAccount/{}", sa.name_any()));
    }
    for r in &o.roles {
        ssa(client, ns, r).await?;
        objects.push(format!("Role/{}", r.name_any()));
    }
    for b in &o.role_bindings {
        ssa(client, ns, b).await?;
        objects.push(format!("RoleBinding/{}", b.name_any()));
    }
    let token = ssa(client, ns, &o.token_secret).await?;
    objects.push(format!("Secret/{}", o.token_secret.name_any()));
    for c in &d.copies {
        ssa(client, ns, c).await?;
        objects.push(format!("Secret/{}", c.name_any()));
    }
    let wt = workflow_template_resource();
    let argo = crd_present(client, ns, &wt).await?;
    if argo && let Ok(templates) = &o.templates {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &wt);
        for t in templates {
            let name = t.name_any();
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(t),
            )
            .await
            .map_err(err(format!("WorkflowTemplate {name}")))?;
            objects.push(format!("WorkflowTemplate/{name}"));
        }
    }
    prune(client, ns, &d.uid, &objects, argo).await?;
    let credentials = credentials_of(&token);
    objects.sort();
    Ok((objects, argo, credentials))
}

async fn crd_present(client: &Client, ns: &str, r: &ApiResource) -> Result<bool, RemoteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, r);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(err(format!("{} (is its CRD installed?)", r.plural))(e)),
    }
}

/// Deletes the objects of one kind that carry the owner's label and are not in `keep`.
async fn prune_api<K>(
    api: Api<K>,
    uid: &str,
    kind: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, RemoteError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list_metadata(&ListParams::default().labels(&remote::owner_selector(uid)))
        .await
        .map_err(err(format!("{kind} list")))?;
    let mut deleted = Vec::new();
    for m in list.items {
        let id = format!("{kind}/{}", m.name_any());
        if keep.contains(&id) || m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&m.name_any(), &DeleteParams::background()).await {
            Ok(_) => deleted.push(id),
            Err(kube::Error::Api(s)) if s.code == 404 => deleted.push(id),
            Err(e) => return Err(err(format!("deleting {id}"))(e)),
        }
    }
    Ok(deleted)
}

async fn prune(
    client: &Client,
    ns: &str,
    uid: &str,
    keep: &[String],
    argo: bool,
) -> Result<Vec<String>, RemoteError> {
    let keep: BTreeSet<String> = keep.iter().cloned().collect();
    let c = || client.clone();
    let mut deleted = Vec::new();
    deleted.extend(
        prune_api(
            Api::<RoleBinding>::namespaced(c(), ns),
            uid,
            "RoleBinding",
            &keep,
        )
        .await?,
    );
    deleted.extend(prune_api(Api::<Role>::namespaced(c(), ns), uid, "Role", &keep).await?);
    deleted.extend(
        prune_api(
            Api::<ServiceAccount>::namespaced(c(), ns),
            uid,
            "ServiceAccount",
            &keep,
        )
        .await?,
    );
    deleted.extend(prune_api(Api::<Secret>::namespaced(c(), ns), uid, "Secret", &keep).await?);
    if argo {
        let api: Api<DynamicObject> = Api::namespaced_with(c(), ns, &workflow_template_resource());
        deleted.extend(prune_api(api, uid, "WorkflowTemplate", &keep).await?);
    }
    if !deleted.is_empty() {
        info!(namespace = ns, ?deleted, "pruned job cluster objects");
    }
    Ok(deleted)
}

/// Where a TatorDeployment's objects in one job cluster are.
#[derive(Clone, Debug)]
pub struct Placement {
    pub namespace: String,
    /// The TatorDeployment (asked to reconcile after a removal attempt).
    pub owner_name: Option<String>,
    pub cluster: String,
    pub kubeconfig: KubeconfigSecret,
    pub remote_namespace: String,
    pub uid: String,
}

impl Placement {
    /// Where status says a cluster's objects were made.
    pub fn recorded(
        namespace: &str,
        uid: &str,
        owner_name: Option<String>,
        p: &JobClusterStatus,
    ) -> Self {
        let key = if p.kubeconfig_key.is_empty() {
            "kubeconfig".to_string()
        } else {
            p.kubeconfig_key.clone()
        };
        Self {
            namespace: namespace.to_string(),
            owner_name,
            cluster: p.name.clone(),
            kubeconfig: KubeconfigSecret {
                name: p.kubeconfig_secret.clone(),
                key,
            },
            remote_namespace: p.namespace.clone(),
            uid: uid.to_string(),
        }
    }

    /// Where the spec puts a cluster's objects.
    pub fn of(namespace: &str, uid: &str, c: &JobCluster) -> Self {
        Self {
            namespace: namespace.to_string(),
            owner_name: None,
            cluster: c.name.clone(),
            kubeconfig: c.kubeconfig_secret.clone(),
            remote_namespace: c.namespace.clone(),
            uid: uid.to_string(),
        }
    }
}

/// Removes every object one TatorDeployment made in a job cluster (and the namespace, when the
/// operator created it). Err lists what is left and why.
pub async fn cleanup(main: &Client, p: &Placement) -> Result<(), String> {
    let work = async {
        let mut cached = None;
        // Removal only deletes what the operator made there; consent was checked when the
        // entry was last in the spec (and by the reconcile while it is being removed).
        let s = session(main, &p.namespace, &p.kubeconfig, None, &mut cached)
            .await
            .map_err(|c| format!("{}: {}", c.reason, c.message))?;
        let client = s.client.clone();
        let ns = p.remote_namespace.as_str();
        let argo = crd_present(&client, ns, &workflow_template_resource())
            .await
            .map_err(|e| format!("{}: {}", e.what, reach_error(&e.source).message))?;
        let deleted = prune(&client, ns, &p.uid, &[], argo)
            .await
            .map_err(|e| format!("{}: {}", e.what, reach_error(&e.source).message))?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if let Some(m) = namespaces
            .get_metadata_opt(ns)
            .await
            .map_err(|e| format!("Namespace {ns}: {}", reach_error(&e).message))?
        {
            let ours = m.labels().get(crate::build::workflows::OWNER_UID_LABEL) == Some(&p.uid);
            if ours && m.metadata.deletion_timestamp.is_none() {
                namespaces
                    .delete(ns, &DeleteParams::background())
                    .await
                    .map_err(|e| format!("Namespace {ns}: {}", reach_error(&e).message))?;
            }
        }
        debug!(cluster = %p.cluster, ?deleted, "job cluster cleaned up");
        Ok::<(), String>(())
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
    }
}

/// Reads the Secrets a job cluster gets copies of (missing ones are skipped: a pull Secret that
/// does not exist here would not work there either).
pub async fn read_copies(
    main: &Client,
    ns: &str,
    names: &[String],
) -> Result<Vec<Secret>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(main.clone(), ns);
    let mut out = Vec::new();
    for n in names {
        if let Some(s) = api.get_opt(n).await? {
            out.push(s);
        } else {
            warn!(secret = %n, "a Secret to copy to job clusters does not exist");
        }
    }
    Ok(out)
}

/// Conditions of a cluster as status shows them.
pub fn conditions(r: &Report, registered: Option<&Check>) -> BTreeMap<&'static str, Check> {
    let mut m = BTreeMap::from([
        ("Reachable", r.reachable.clone()),
        ("TemplatesReady", r.templates.clone()),
    ]);
    if let Some(reg) = registered {
        m.insert("Registered", reg.clone());
    }
    m
}

// ---- the reconcile stages ---------------------------------------------------------------------

/// The finalizer that holds deletion until job clusters are cleaned up.
pub const FINALIZER: &str = "tator.io/job-clusters";
/// Annotation that lets deletion go ahead without waiting for unreachable job clusters.
pub const FORCE_DELETE_ANNOTATION: &str = "tator.io/force-delete";

/// What the first stage learnt: each cluster's last report, in spec order.
pub struct Synced {
    pub reports: Vec<(JobCluster, Report)>,
}

/// Hands every job cluster's worker its desired objects. Never waits on another cluster.
pub async fn sync(
    main: &Client,
    jc: &JobClusters,
    t: &crate::validate::ValidatedTator,
) -> Result<Synced, crate::error::Error> {
    use crate::error::Error;
    let version = t
        .serving_version
        .as_ref()
        .unwrap_or(&t.target_version)
        .to_string();
    let mut desired = Vec::new();
    for c in &t.spec.job_clusters {
        let objects = remote::objects(t, c, &version);
        let copies = read_copies(main, &t.namespace, &objects.copied_secrets)
            .await
            .map_err(|source| Error::Fetch {
                what: "Secrets copied to job clusters".into(),
                source,
            })?
            .iter()
            .map(|s| remote::copied_secret(t, c, s))
            .collect();
        let copies: Vec<Secret> = copies;
        desired.push(Desired {
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            uid: t.owner.uid.clone(),
            cluster: c.clone(),
            digest: Desired::digest_of(&objects, &copies),
            objects,
            copies,
        });
    }
    let reports = jc.sync(desired, &t.owner.uid);
    let reports: Vec<(JobCluster, Report)> =
        t.spec.job_clusters.iter().cloned().zip(reports).collect();
    if jc.first_sync(&t.owner.uid) {
        remove_legacy_transcode_secret(main, t).await?;
    }
    Ok(Synced { reports })
}

/// Removes the REMOTE_TRANSCODE_* Secret earlier operator versions wrote (Tator 1.5.0 never
/// reads it). Done once per installation and operator process.
async fn remove_legacy_transcode_secret(
    main: &Client,
    t: &crate::validate::ValidatedTator,
) -> Result<(), crate::error::Error> {
    use crate::error::Error;
    let secrets: Api<Secret> = Api::namespaced(main.clone(), &t.namespace);
    let name = remote::legacy_remote_transcode_secret_name(t);
    let owned = secrets
        .get_metadata_opt(&name)
        .await
        .map_err(|source| Error::Fetch {
            what: format!("Secret {name}"),
            source,
        })?
        .is_some_and(|m| {
            m.metadata
                .owner_references
                .unwrap_or_default()
                .iter()
                .any(|o| o.uid == t.owner.uid)
        });
    if owned {
        secrets
            .delete(&name, &DeleteParams::background())
            .await
            .map_err(|source| Error::Prune {
                kind: "Secret",
                name: name.clone(),
                source,
            })?;
        info!(secret = %name, "removed the REMOTE_TRANSCODE_* Secret Tator never reads");
    }
    Ok(())
}

fn condition(
    type_: &str,
    c: &Check,
    previous: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    generation: i64,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    let s = if c.ok { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|p| p.type_ == type_ && p.status == s)
        .map(|p| p.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: type_.into(),
        status: s.into(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        last_transition_time: since,
        observed_generation: Some(generation),
    }
}

/// Inputs of the second stage.
pub struct Finish<'a> {
    pub api_ready: bool,
    /// Tator's API token (apiAccess), when readable.
    pub api_token: Option<&'a str>,
    pub previous: &'a [tator_api::JobClusterStatus],
    /// spec.paused: nothing is registered or removed.
    pub paused: bool,
}

/// Registers algorithm clusters with Tator, removes what clusters dropped from the spec left
/// behind, and returns the `JobCluster/<name>` conditions and status.jobClusters.
pub async fn finish(
    jc: &JobClusters,
    t: &crate::validate::ValidatedTator,
    synced: &Synced,
    f: Finish<'_>,
) -> (Vec<crate::status::Cond>, Vec<tator_api::JobClusterStatus>) {
    use crate::status::Cond;
    use tator_api::{JobClusterStatus, JobKind};
    let mut conds = Vec::new();
    let mut statuses = Vec::new();
    for (c, r) in &synced.reports {
        let prev = f.previous.iter().find(|p| p.name == c.name);
        let mut entry = JobClusterStatus {
            name: c.name.clone(),
            kubeconfig_secret: c.kubeconfig_secret.name.clone(),
            kubeconfig_key: c.kubeconfig_secret.key.clone(),
            namespace: c.namespace.clone(),
            server: r.server.clone(),
            registered_id: prev.and_then(|p| p.registered_id),
            registered_digest: prev.and_then(|p| p.registered_digest.clone()),
            conditions: Vec::new(),
            objects: if r.objects.is_empty() {
                prev.map(|p| p.objects.clone()).unwrap_or_default()
            } else {
                r.objects.clone()
            },
        };
        // A cluster moved to another namespace or Secret leaves its old objects: record the new
        // place only once the old one is clean (the previous entry is kept until then).
        let registered = if c.runs.contains(&JobKind::Algorithms) {
            Some(
                register(
                    t,
                    c,
                    r,
                    &f,
                    prev.and_then(|p| p.registered_id.zip(p.registered_digest.clone())),
                )
                .await
                .map(|(id, d)| {
                    entry.registered_id = Some(id);
                    entry.registered_digest = Some(d);
                    Check::new(
                        true,
                        "Registered",
                        format!(
                            "registered in Tator as JobCluster {id} of organization {}",
                            c.organization.unwrap_or_default()
                        ),
                    )
                })
                .unwrap_or_else(|e| e),
            )
        } else {
            None
        };
        let all = conditions(r, registered.as_ref());
        let prev_conds = prev.map(|p| p.conditions.as_slice()).unwrap_or_default();
        entry.conditions = all
            .iter()
            .map(|(k, v)| condition(k, v, prev_conds, t.generation))
            .collect();
        let failing: Vec<String> = all
            .iter()
            .filter(|(_, v)| !v.ok)
            .map(|(k, v)| format!("{k}: {} ({})", v.reason, v.message))
            .collect();
        let first_reason = all
            .iter()
            .find(|(_, v)| !v.ok)
            .map(|(_, v)| v.reason.clone());
        conds.push(match first_reason {
            None => Cond::new(
                &format!("JobCluster/{}", c.name),
                true,
                "Ready",
                format!(
                    "reachable at {}; objects applied in namespace {}",
                    r.server.clone().unwrap_or_default(),
                    c.namespace
                ),
            ),
            Some(reason) => Cond::new(
                &format!("JobCluster/{}", c.name),
                false,
                &reason,
                failing.join("; "),
            ),
        });
        statuses.push(entry);
    }
    // Entries dropped from the spec: remove their objects, then the registration.
    for p in f.previous {
        if t.spec.job_clusters.iter().any(|c| c.name == p.name) {
            continue;
        }
        let type_ = format!("JobCluster/{}", p.name);
        if f.paused {
            statuses.push(p.clone());
            continue;
        }
        let placement = Placement::recorded(&t.namespace, &t.owner.uid, Some(t.name.clone()), p);
        match jc.remove(placement) {
            Some(Ok(())) => {
                if let (Some(id), Some(token)) = (p.registered_id, f.api_token)
                    && let Err((reason, message)) =
                        crate::registration::unregister_job_cluster(t, token, id).await
                {
                    let mut keep = p.clone();
                    keep.objects.clear();
                    statuses.push(keep);
                    conds.push(Cond::new(&type_, false, &reason, message));
                    continue;
                }
                jc.forget_removal(&t.owner.uid, &p.name);
                info!(cluster = %p.name, "job cluster removed");
            }
            Some(Err(e)) => {
                // Without its kubeconfig Secret the cluster cannot be reached however long this
                // waits; otherwise it is retried for REMOVAL_GIVE_UP.
                let hopeless = e.starts_with("SecretNotFound");
                let age = jc.removal_age(&t.owner.uid, &p.name);
                if hopeless || age >= REMOVAL_GIVE_UP {
                    let why = if hopeless {
                        "its kubeconfig Secret is gone".to_string()
                    } else {
                        format!("gave up after {} s", REMOVAL_GIVE_UP.as_secs())
                    };
                    warn!(cluster = %p.name, %why, "job cluster removed from the spec; its objects are left behind");
                    if let (Some(id), Some(token)) = (p.registered_id, f.api_token)
                        && let Err((_, message)) =
                            crate::registration::unregister_job_cluster(t, token, id).await
                    {
                        warn!(cluster = %p.name, %message, "could not unregister the job cluster");
                    }
                    jc.forget_removal(&t.owner.uid, &p.name);
                    // Reported once; the entry is dropped from the status.
                    conds.push(Cond::new(
                        &type_,
                        false,
                        "LeftBehind",
                        format!(
                            "removed from the spec; {why}, so its objects in namespace {} were left behind ({}): {e}",
                            p.namespace,
                            if p.objects.is_empty() { "none recorded".to_string() } else { p.objects.join(", ") }
                        ),
                    ));
                    continue;
                }
                statuses.push(p.clone());
                conds.push(Cond::new(
                    &type_,
                    false,
                    "CleanupFailed",
                    format!(
                        "removed from the spec; its objects could not be deleted yet (retrying for {} s more): {e}",
                        REMOVAL_GIVE_UP.saturating_sub(age).as_secs()
                    ),
                ));
            }
            None => {
                statuses.push(p.clone());
                conds.push(Cond::new(
                    &type_,
                    false,
                    "Removing",
                    "removed from the spec; deleting its objects",
                ));
            }
        }
    }
    (conds, statuses)
}

async fn register(
    t: &crate::validate::ValidatedTator,
    c: &JobCluster,
    r: &Report,
    f: &Finish<'_>,
    previous: Option<(i64, String)>,
) -> Result<(i64, String), Check> {
    if f.paused {
        return previous
            .ok_or_else(|| Check::new(false, "Paused", "spec.paused holds registration back"));
    }
    let (Some(creds), Some((host, port))) = (
        &r.credentials,
        c.api_server
            .clone()
            .or_else(|| r.server.clone())
            .as_deref()
            .and_then(remote::host_port),
    ) else {
        // Tator keeps what it was given while the cluster cannot be asked for its token.
        return previous.ok_or_else(|| {
            Check::new(
                false,
                "WaitingForCluster",
                "registered once the cluster answers and Tator's token exists",
            )
        });
    };
    let body = crate::registration::JobClusterBody {
        name: &c.name,
        host: &host,
        port,
        token: &creds.token,
        cert: &creds.ca,
    };
    // Already registered as it is: nothing to ask of Tator's API.
    if let Some((id, d)) = &previous
        && *d == crate::registration::job_cluster_digest(&body)
    {
        return Ok((*id, d.clone()));
    }
    if !f.api_ready {
        return Err(Check::new(
            false,
            "WaitingForApi",
            "registered once Tator's REST API is available",
        ));
    }
    let Some(api_token) = f.api_token else {
        return Err(Check::new(
            false,
            "TokenNotFound",
            "the apiAccess token Secret could not be read",
        ));
    };
    crate::registration::register_job_cluster(
        t,
        api_token,
        c.organization.unwrap_or_default(),
        &body,
        previous.as_ref().map(|(id, d)| (*id, d.as_str())),
    )
    .await
    .map_err(|(reason, message)| Check::new(false, &reason, message))
}

#[derive(Default)]
struct Removal {
    result: Option<Result<(), String>>,
    started: Option<std::time::Instant>,
}

/// How long the objects of a cluster removed from the spec are retried before they are left
/// behind (the default cleanupTimeoutSeconds; the entry's own setting left with it).
pub const REMOVAL_GIVE_UP: Duration = Duration::from_secs(300);

impl JobClusters {
    /// Starts (once) the removal of one cluster's objects; returns its outcome when known. A
    /// failed attempt is retried with backoff; each attempt asks for a reconcile.
    pub fn remove(&self, p: Placement) -> Option<Result<(), String>> {
        let key = (p.uid.clone(), p.cluster.clone());
        let Ok(mut map) = self.removals.lock() else {
            return None;
        };
        if let Some(r) = map.get(&key) {
            return r.lock().ok().and_then(|r| r.result.clone());
        }
        let slot = Arc::new(Mutex::new(Removal {
            result: None,
            started: Some(std::time::Instant::now()),
        }));
        map.insert(key, slot.clone());
        let main = self.main.clone();
        let trigger = self.trigger.lock().ok().and_then(|t| t.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                let r = cleanup(&main, &p).await;
                let done = r.is_ok();
                if let Ok(mut s) = slot.lock() {
                    s.result = Some(r);
                }
                if let Some(tx) = &trigger
                    && let Some(name) = p.owner_name.clone()
                {
                    let _ = tx.unbounded_send(ObjectRef::new(&name).within(&p.namespace));
                }
                if done {
                    return;
                }
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                if Arc::strong_count(&slot) == 1 {
                    // Forgotten (the TatorDeployment is gone).
                    return;
                }
            }
        });
        None
    }

    /// How long the removal of one cluster's objects has been going on.
    pub fn removal_age(&self, uid: &str, cluster: &str) -> Duration {
        self.removals
            .lock()
            .ok()
            .and_then(|map| {
                map.get(&(uid.to_string(), cluster.to_string()))
                    .and_then(|r| r.lock().ok().and_then(|r| r.started))
            })
            .map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Drops a finished removal.
    pub fn forget_removal(&self, uid: &str, cluster: &str) {
        if let Ok(mut map) = self.removals.lock() {
            map.remove(&(uid.to_string(), cluster.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(4), Duration::from_secs(16));
        assert_eq!(backoff(9), MAX_BACKOFF);
    }

    #[test]
    fn kubeconfigs_that_run_commands_or_read_files_are_refused() {
        let exec = r#"
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"#;
        let kc = Kubeconfig::from_yaml(exec).unwrap();
        assert!(refuse(&kc).unwrap().contains("exec plugin"));
        let file = exec.replace(
            "{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}",
            "{tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}",
        );
        let kc = Kubeconfig::from_yaml(&file).unwrap();
        assert!(refuse(&kc).unwrap().contains("refers to files"));
        let ok = exec.replace(
            "{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh}}",
            "{token: abc}",
        );
        assert!(refuse(&Kubeconfig::from_yaml(&ok).unwrap()).is_none());
        let plain = ok.replace("https://127.0.0.1:1", "http://127.0.0.1:1");
        assert!(
            refuse(&Kubeconfig::from_yaml(&plain).unwrap())
                .unwrap()
                .contains("not an https:// server")
        );
        let skip = ok.replace(
            "{server: \"https://127.0.0.1:1\"}",
            "{server: \"https://127.0.0.1:1\", insecure-skip-tls-verify: true}",
        );
        assert!(
            refuse(&Kubeconfig::from_yaml(&skip).unwrap())
                .unwrap()
                .contains("skips TLS verification")
        );
    }

    #[test]
    fn credentials_never_print() {
        let c = Credentials {
            token: "secret-token".into(),
            ca: "ca".into(),
        };
        assert!(!format!("{c:?}").contains("secret-token"));
        let r = Report {
            credentials: Some(c),
            ..Report::default()
        };
        assert!(!format!("{r:?}").contains("secret-token"));
    }
}
