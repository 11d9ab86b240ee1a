//! The controller: watches TatorDeployments and their children and runs the reconcile pipeline
//! validate → [`fetch`] → build and apply the data tier → observe it → build and apply the web
//! tier, then prune → external writes (Tator's REST API, [`job_clusters`]) → status → requeue
//! ([`decide`]).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        events::{Event, EventType, Recorder, Reporter},
        predicates, reflector, watcher,
    },
};
use serde_json::json;
use tator_api::{TatorDeployment, TatorDeploymentStatus, labels};
use tracing::{Instrument, info, info_span, warn};

pub mod crds;
pub mod decide;
pub mod fetch;
pub mod job_clusters;

use crate::cache::{CacheWriters, Cached, Caches, Generations};
use crate::metrics::Metrics;
use crate::watched::{Unreadable, Watched};
use crate::{
    apply::{self, FIELD_MANAGER},
    builders::{
        self,
        children::child_kinds,
        migrations::{self, JobState},
    },
    consent, dependencies,
    error::Error,
    objstore, registration,
    status::{self, Observations},
    validate::{self, VersionPlan},
};

/// Settings of the controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Watch only this namespace (None: every namespace).
    pub namespace: Option<String>,
    /// Reconciles running at once.
    pub concurrency: u16,
    /// Requeue interval once Ready (a safety net: watches drive the work).
    pub resync: Duration,
    /// How long an installation's reconcile waits for its events to settle: the watch events of
    /// one step (a Deployment's rollout, a pod turning ready) come in bursts, and one reconcile
    /// after the burst does what one per event would. Every new event restarts the wait.
    pub debounce: Duration,
    /// What `podOverrides` may change.
    pub overrides: crate::overrides::Policy,
    /// Whether a Secret the spec names must consent (see [`crate::consent`]).
    pub secret_consent: consent::Mode,
    /// The operator's own namespace when it runs in the cluster (POD_NAMESPACE): the queue
    /// NetworkPolicies admit its pods when it scales workers itself.
    pub operator_namespace: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            concurrency: 4,
            resync: Duration::from_secs(600),
            debounce: DEBOUNCE,
            overrides: crate::overrides::Policy::default(),
            secret_consent: consent::Mode::default(),
            operator_namespace: None,
        }
    }
}

/// The default [`Settings::debounce`].
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub settings: Settings,
    failures: Mutex<HashMap<String, u32>>,
    /// When each TatorDeployment's dependencies were first seen unavailable.
    dependencies_down_since: Mutex<HashMap<String, std::time::Instant>>,
    /// The status last written for each TatorDeployment, until the watch delivers it.
    written: WrittenStatus,
    reconciles: AtomicU64,
    /// Reconciles ended (every write they made is done).
    finished: AtomicU64,
    /// Local copies of the children, filled by the watches `run` starts.
    pub caches: Caches,
    /// What `/metrics` exports.
    pub metrics: Arc<Metrics>,
    cache_writers: Mutex<Option<CacheWriters>>,
    /// The job-cluster workers.
    pub job_clusters: Arc<crate::remote::JobClusters>,
    /// The operator's own queue scalers.
    pub scalers: crate::scaler::Scalers,
    /// CRDs seen installed (the fetch stage asks again only after a while).
    crds_seen: fetch::CrdsSeen,
    /// The cluster's default StorageClass, as the fetch stage last read it.
    default_class: fetch::DefaultClass,
    /// Reconcile requests from the job-cluster workers (taken by `run`).
    job_cluster_triggers: Mutex<
        Option<futures::channel::mpsc::UnboundedReceiver<reflector::ObjectRef<TatorDeployment>>>,
    >,
}

impl Context {
    pub fn new(client: Client, settings: Settings) -> Self {
        Self::with_metrics(client, settings, Arc::new(Metrics::new()))
    }

    /// A context recording into `metrics`.
    pub fn with_metrics(client: Client, settings: Settings, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (caches, writers) = Caches::new();
        let job_clusters = Arc::new(crate::remote::JobClusters::new(
            client.clone(),
            settings.secret_consent,
        ));
        let (tx, rx) = futures::channel::mpsc::unbounded();
        job_clusters.set_trigger(tx);
        Self {
            job_clusters,
            scalers: crate::scaler::Scalers::new(client.clone()),
            crds_seen: fetch::CrdsSeen::default(),
            default_class: fetch::DefaultClass::default(),
            job_cluster_triggers: Mutex::new(Some(rx)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            failures: Mutex::new(HashMap::new()),
            dependencies_down_since: Mutex::new(HashMap::new()),
            written: WrittenStatus::default(),
            reconciles: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            caches,
            cache_writers: Mutex::new(Some(writers)),
            metrics,
        }
    }

    /// Reconciles started since this context was created.
    pub fn reconcile_count(&self) -> u64 {
        self.reconciles.load(Ordering::Relaxed)
    }

    /// Reconciles ended since this context was created: once it passes a value
    /// `reconcile_count` had, every write of those reconciles is done (what tests wait on
    /// before checking that nothing happened).
    pub fn finished_count(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// How long to wait before checking unavailable dependencies again: as long as they have been
    /// down (10 s to 5 min), so checks back off however many events trigger reconciles.
    fn dependency_backoff(&self, key: &str, down: bool) -> Duration {
        let Ok(mut map) = self.dependencies_down_since.lock() else {
            return Duration::from_secs(10);
        };
        if !down {
            map.remove(key);
            return Duration::from_secs(10);
        }
        let since = *map
            .entry(key.to_string())
            .or_insert_with(std::time::Instant::now);
        since
            .elapsed()
            .clamp(Duration::from_secs(10), Duration::from_secs(300))
    }

    /// Consecutive failed reconciles of one TatorDeployment: +1, or reset to 0.
    fn failures(&self, key: &str, reset: bool) -> u32 {
        let Ok(mut map) = self.failures.lock() else {
            return 0;
        };
        if reset {
            map.remove(key);
            0
        } else {
            let n = map.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        }
    }
}

fn key(td: &TatorDeployment) -> String {
    meta_key(td.meta())
}

fn meta_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The status the operator last wrote for each installation, with the resourceVersion of the
/// object it was computed from. The next reconcile can start before the watch has delivered that
/// write (a child's event queued meanwhile): while the watched copy still has that
/// resourceVersion, nothing has changed it since but the write, so the status written is the
/// current one. Comparing against the watched copy's older status would write the same status
/// again and repeat its Events.
#[derive(Default)]
struct WrittenStatus(Mutex<HashMap<String, (String, TatorDeploymentStatus)>>);

impl WrittenStatus {
    fn record(&self, meta: &ObjectMeta, status: &TatorDeploymentStatus) {
        let (Some(rv), Ok(mut map)) = (meta.resource_version.clone(), self.0.lock()) else {
            return;
        };
        map.insert(meta_key(meta), (rv, status.clone()));
    }

    /// The status written from this very version of `td`, if the watch has not delivered it
    /// yet; once it has (the resourceVersion moved on), the entry is dropped.
    fn newer_than(&self, td: &TatorDeployment) -> Option<TatorDeploymentStatus> {
        let mut map = self.0.lock().ok()?;
        let key = key(td);
        match map.get(&key)? {
            (rv, st) if td.meta().resource_version.as_ref() == Some(rv) => Some(st.clone()),
            _ => {
                map.remove(&key);
                None
            }
        }
    }

    fn forget(&self, meta: &ObjectMeta) {
        if let Ok(mut map) = self.0.lock() {
            map.remove(&meta_key(meta));
        }
    }
}

async fn publish(
    ctx: &Context,
    td: &TatorDeployment,
    type_: EventType,
    reason: &str,
    note: String,
) {
    publish_to(ctx, &td.object_ref(&()), type_, reason, note).await;
}

async fn publish_to(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        // The Events API refuses a longer note, and the record would be lost.
        note: Some(crate::bounded::one_line(&note, crate::bounded::MESSAGE_MAX)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, reference).await {
        warn!(error = %e, "could not publish an Event");
    }
}

async fn write_status(
    ctx: &Context,
    td: &TatorDeployment,
    status: &TatorDeploymentStatus,
) -> Result<bool, Error> {
    write_status_of(ctx, td.meta(), td.status.as_ref(), status).await
}

/// Writes `status` (server-side apply of the status subresource) unless it equals `previous`
/// but for timestamps; whether it wrote.
async fn write_status_of(
    ctx: &Context,
    meta: &ObjectMeta,
    previous: Option<&TatorDeploymentStatus>,
    status: &TatorDeploymentStatus,
) -> Result<bool, Error> {
    if !status::differs(previous, status) {
        return Ok(false);
    }
    let api: Api<TatorDeployment> = Api::namespaced(
        ctx.client.clone(),
        meta.namespace.as_deref().unwrap_or_default(),
    );
    let body = json!({
        "apiVersion": TatorDeployment::api_version(&()),
        "kind": TatorDeployment::kind(&()),
        "status": status,
    });
    api.patch_status(
        meta.name.as_deref().unwrap_or_default(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Status)?;
    ctx.written.record(meta, status);
    Ok(true)
}

/// How long one reconcile may take. Every outside call has a shorter timeout of its own; this
/// bounds their sum. A reconcile cut short loses nothing (applies are idempotent) and is retried.
pub const RECONCILE_DEADLINE: Duration = Duration::from_secs(120);

/// How soon a TatorDeployment held back by a Secret without consent looks again.
pub const CONSENT_RECHECK: Duration = Duration::from_secs(20);

/// One reconcile of one TatorDeployment.
pub async fn reconcile(obj: Arc<Watched>, ctx: Arc<Context>) -> Result<Action, Error> {
    let td = match obj.as_ref() {
        Watched::Decoded(td) => td,
        Watched::Undecodable(u) => return undecodable(&ctx, &obj, u).await,
    };
    // The status this operator wrote last, when the watched copy does not have it yet.
    let fresher;
    let td = match ctx.written.newer_than(td) {
        Some(status) => {
            fresher = TatorDeployment {
                status: Some(status),
                ..(**td).clone()
            };
            &fresher
        }
        None => td,
    };
    let span = info_span!("reconcile", tator = %key(td), generation = td.meta().generation.unwrap_or_default());
    ctx.reconciles.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.reconciles.inc();
    tracing::debug!(tator = %key(td), "reconcile started");
    let started = std::time::Instant::now();
    // One installation cannot hold a reconcile slot forever, whatever it waits on.
    let result =
        match tokio::time::timeout(RECONCILE_DEADLINE, pipeline(td, &ctx).instrument(span)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Deadline(RECONCILE_DEADLINE.as_secs())),
        };
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .get_or_create(&crate::metrics::CategoryLabels {
                category: e.category().into(),
            })
            .inc();
    }
    if let Err(e) = &result
        && !e.is_permanent()
    {
        // Invalid specs announce themselves once, from the pipeline, when their status is written.
        publish(&ctx, td, EventType::Warning, e.category(), e.to_string()).await;
        report_failure(&ctx, td, e).await;
    }
    ctx.finished.fetch_add(1, Ordering::Release);
    tracing::debug!(tator = %key(td), seconds = started.elapsed().as_secs_f64(), ok = result.is_ok(), "reconcile ended");
    result
}

/// An object that could not be decoded: its status says why (InvalidSpec), nothing is applied
/// or deleted, and it waits for a change. The other installations are not affected.
async fn undecodable(ctx: &Context, obj: &Watched, what: &Unreadable) -> Result<Action, Error> {
    let meta = &what.metadata;
    let message = format!(
        "the object could not be read ({}); free-form fields such as podOverrides must stay within the decoder's nesting limit. Nothing was applied or deleted",
        what.error
    );
    warn!(tator = %format!("{}/{}", meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default()),
          error = %what.error, "a TatorDeployment could not be decoded");
    let st = status::invalid_spec(
        what.status.as_ref(),
        meta.generation.unwrap_or_default(),
        "InvalidSpec",
        &message,
    );
    if write_status_of(ctx, meta, what.status.as_ref(), &st).await? {
        let reference = obj.object_ref(&());
        publish_to(ctx, &reference, EventType::Warning, "InvalidSpec", message).await;
    }
    Ok(Action::await_change())
}

/// A reconcile that failed part-way says so in the status: Ready=False with the error's
/// category as reason, naming the object, and observedGeneration left behind, so `kubectl wait`
/// and GitOps tools see why the spec is not what runs (a new object gets its first status).
async fn report_failure(ctx: &Context, td: &TatorDeployment, e: &Error) {
    // A status that cannot be written cannot report itself; a deleted object has no status.
    if matches!(e, Error::Status(_)) || td.meta().deletion_timestamp.is_some() {
        return;
    }
    let st = status::reconcile_failed(
        td.status.as_ref(),
        td.meta().generation.unwrap_or_default(),
        e.category(),
        &e.to_string(),
        e.refused(),
    );
    if let Err(e) = write_status(ctx, td, &st).await {
        warn!(tator = %key(td), error = %e, "could not record a failed reconcile in the status");
    }
}

/// One reconcile of a live TatorDeployment, stage by stage (see the module documentation).
async fn pipeline(td: &TatorDeployment, ctx: &Context) -> Result<Action, Error> {
    if td.meta().deletion_timestamp.is_some() {
        if has_finalizer(td) {
            // Objects in job clusters have no owner references: remove them first.
            return finalize(td, ctx).await;
        }
        ctx.metrics.forget(
            &td.namespace().unwrap_or_default(),
            &td.name_any(),
            td.status.as_ref(),
        );
        ctx.scalers.stop(&td.uid().unwrap_or_default());
        // Children go with their owner references.
        return Ok(Action::await_change());
    }
    // validate
    let mut t = match validate::validate_with(td, ctx.settings.overrides) {
        Ok(t) => t,
        Err(e) => {
            let generation = td.meta().generation.unwrap_or_default();
            let msg = e.to_string();
            // Nothing is applied or deleted: the conditions say why.
            let st = status::invalid_spec(td.status.as_ref(), generation, e.category(), &msg);
            if write_status(ctx, td, &st).await? {
                publish(ctx, td, EventType::Warning, e.category(), msg).await;
            }
            return Err(e);
        }
    };
    if td.status.is_none() {
        // A first status at once, before anything that may wait (checks of outside services).
        let st = status::first(t.generation);
        write_status(ctx, td, &st).await?;
    }
    // fetch: every read before building, at once (Secret values only with consent)
    let removed_clusters: Vec<String> = td
        .status
        .iter()
        .flat_map(|s| &s.job_clusters)
        .filter(|c| !t.spec.job_clusters.iter().any(|j| j.name == c.name))
        .map(|c| c.kubeconfig_secret.clone())
        .collect();
    let facts = fetch::fetch(ctx, td, &t, &removed_clusters).await?;
    if !facts.refused.is_empty() {
        // Nothing is applied, deleted or read: the status says which Secret and how to
        // consent; the Secret is looked at again shortly (Secrets are not watched).
        let refused: Vec<&consent::Named> = facts.refused.iter().collect();
        let msg = consent::refusal_message(&t, &refused);
        let st = status::invalid_spec(td.status.as_ref(), t.generation, "SecretNotAllowed", &msg);
        if write_status(ctx, td, &st).await? {
            publish(ctx, td, EventType::Warning, "SecretNotAllowed", msg).await;
        }
        return Ok(Action::requeue(CONSENT_RECHECK));
    }
    facts.fill_in(&mut t);
    let had_clusters = td
        .status
        .as_ref()
        .is_some_and(|s| !s.job_clusters.is_empty());
    if (had_clusters || !t.spec.job_clusters.is_empty()) && !has_finalizer(td) {
        set_finalizer(ctx, td, true).await?;
    }
    // spec.paused: build and compare, but write nothing but status.
    let paused = t.spec.paused;
    let mut pending: Vec<String> = Vec::new();
    let local_workflows = builders::workflows::LocalWorkflows::of(&t);
    let caches = Some(&ctx.caches);
    // data tier first: the web tier waits for it
    if !paused {
        apply::ensure_generated_secrets(&ctx.client, &t, caches).await?;
    }
    // read after the generated Secrets exist: the in-cluster store's keys are among them
    let storage_secrets = objstore::read_secrets(&ctx.client, &t).await?;
    let mut data_tier = builders::build_data(&t);
    let mut storage_problem = None;
    if !paused {
        match builders::build_storage_secrets(&t, &storage_secrets) {
            Ok(secrets) => data_tier.extend(secrets),
            Err(problem) => storage_problem = Some(problem),
        }
    }
    let mut applied = if paused {
        let (held, p) = apply::held_back(&t, data_tier, caches);
        pending.extend(p);
        held
    } else {
        apply::apply(&ctx.client, &t, data_tier, caches).await?
    };
    let deps = dependencies::observe(&ctx.client, &t, &applied).await;
    // the rollout: which release the web tier runs, and whether the migrations Job is due
    let plan = t.plan();
    let (job, state) = match &plan {
        VersionPlan::Migrate { to, .. } => (
            Some(migrations::job(&t, &to.to_string())),
            migrations::job_state(facts.migration_job.as_ref()),
        ),
        _ => (None, JobState::Missing),
    };
    let rollout = migrations::decide(plan, job, state, deps.all_ready());
    let mut obs = Observations {
        tls_secret_missing: facts.tls_secret_missing.clone(),
        ..Observations::default()
    };
    // job clusters: hand the workers what they keep (never waits on another cluster)
    let synced = if paused || (!had_clusters && t.spec.job_clusters.is_empty()) {
        None
    } else {
        Some(job_clusters::sync(&ctx.client, &ctx.job_clusters, &t).await?)
    };
    // build and apply the web tier, then prune what neither tier wants
    let desired = builders::build(&t, &rollout);
    if paused {
        let (held, p) = apply::held_back(&t, desired, caches);
        pending.extend(p);
        applied.extend(held);
    } else {
        applied.extend(apply::apply(&ctx.client, &t, desired, caches).await?);
        let spared = dependencies::spared_components(&t, &deps);
        if !spared.is_empty() {
            info!(
                ?spared,
                "keeping the in-cluster data services until the managed ones are ready"
            );
        }
        let pruned = apply::prune(&ctx.client, &t, &applied, caches, &spared).await?;
        if pruned > 0 {
            info!(pruned, "deleted orphaned children");
        }
    }
    // the operator's own queue scalers (none while paused or stopped)
    let scale = if paused || t.spec.stopped {
        Vec::new()
    } else {
        builders::queue_workers::scaler_targets(&t, rollout.app_version.is_some())
    };
    ctx.scalers.sync(&t.owner.uid, scale);
    // object storage and bucket registration
    obs.object_storage =
        Some(objstore::observe(&t, &storage_secrets, &applied, storage_problem.as_ref()).await);
    let token = facts.api_token.as_deref();
    let previous = td
        .status
        .as_ref()
        .map(|s| s.buckets.clone())
        .unwrap_or_default();
    obs.registration = if paused {
        // Registering is a change in Tator: held back too; what was recorded stays.
        status::previous_registration(td.status.as_ref())
    } else {
        registration::register(
            &t,
            registration::Inputs {
                api_ready: status::api_available(&applied),
                token,
                configs: registration::configs(&t, &storage_secrets),
                previous: &previous,
            },
        )
        .await
    };
    // workflows and job clusters: described, never gating Ready
    obs.informational
        .push(status::workflows_ready(&t, &rollout, &applied));
    let previous_clusters = td
        .status
        .as_ref()
        .map(|s| s.job_clusters.clone())
        .unwrap_or_default();
    match &synced {
        Some(synced) => {
            let (conds, statuses) = job_clusters::finish(
                &ctx.job_clusters,
                &t,
                synced,
                job_clusters::Finish {
                    api_ready: status::api_available(&applied),
                    api_token: token,
                    previous: &previous_clusters,
                    paused,
                },
            )
            .await;
            obs.informational.extend(conds);
            obs.job_clusters = statuses;
        }
        None => {
            // Paused (or no clusters): what was recorded stays.
            obs.informational
                .extend(status::previous_job_cluster_conditions(td.status.as_ref()));
            obs.job_clusters = previous_clusters;
        }
    }
    // status
    let (mut st, mut conds) = status::compute(&t, &rollout, &applied, &obs, &deps);
    status::pause_and_stop(&t, &pending, &mut st, &mut conds);
    let st = status::with_conditions(st, &conds, td.status.as_ref(), t.generation);
    ctx.metrics
        .observe_status(&t.namespace, &t.name, td.status.as_ref(), &st);
    let written = write_status(ctx, td, &st).await?;
    for e in decide::status_events(td.status.as_ref(), &st, written) {
        publish(ctx, td, e.type_, &e.reason, e.note).await;
    }
    ctx.failures(&key(td), true);
    if deps.all_ready() {
        ctx.dependency_backoff(&key(td), false);
    }
    let facts = decide::RequeueFacts {
        ready: st.phase.as_deref() == Some("Ready"),
        settling: !matches!(rollout.plan, VersionPlan::Steady(_)),
        managed_services: dependencies::has_managed_services(&t),
        awaiting_argo: local_workflows.any() && !t.cluster.argo,
        dependencies_ready: deps.all_ready(),
    };
    // Only a requeue that uses it starts or extends the back-off.
    let backoff = if facts.ready || facts.dependencies_ready {
        Duration::ZERO
    } else {
        ctx.dependency_backoff(&key(td), true)
    };
    Ok(Action::requeue(decide::requeue(
        facts,
        ctx.settings.resync,
        backoff,
    )))
}

fn has_finalizer(td: &TatorDeployment) -> bool {
    td.finalizers().iter().any(|f| f == job_clusters::FINALIZER)
}

/// Adds or removes the job-cluster finalizer (server-side apply of that list entry only).
async fn set_finalizer(ctx: &Context, td: &TatorDeployment, on: bool) -> Result<(), Error> {
    let api: Api<TatorDeployment> =
        Api::namespaced(ctx.client.clone(), &td.namespace().unwrap_or_default());
    let finalizers: Vec<&str> = if on {
        vec![job_clusters::FINALIZER]
    } else {
        Vec::new()
    };
    let body = json!({
        "apiVersion": TatorDeployment::api_version(&()),
        "kind": TatorDeployment::kind(&()),
        "metadata": {"name": td.name_any(), "finalizers": finalizers},
    });
    let params = PatchParams::apply(&format!("{FIELD_MANAGER}-finalizer")).force();
    match api
        .patch(&td.name_any(), &params, &Patch::Apply(&body))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 && !on => Ok(()),
        Err(source) => Err(Error::Apply {
            kind: "TatorDeployment",
            name: td.name_any(),
            source,
        }),
    }
}

/// Deletion: removes what this TatorDeployment made in job clusters, then lets go. A cluster
/// that cannot be cleaned up holds deletion for its cleanupTimeoutSeconds (the condition says
/// what is left), or until the force-delete annotation is set.
async fn finalize(td: &TatorDeployment, ctx: &Context) -> Result<Action, Error> {
    use crate::remote::{Placement, cleanup};
    use job_clusters::FORCE_DELETE_ANNOTATION;
    let uid = td.uid().unwrap_or_default();
    let ns = td.namespace().unwrap_or_default();
    ctx.job_clusters.stop(&uid);
    let previous = td
        .status
        .as_ref()
        .map(|s| s.job_clusters.clone())
        .unwrap_or_default();
    let mut places: Vec<(Placement, i32, Vec<String>)> = Vec::new();
    for p in &previous {
        let timeout = td
            .spec
            .job_clusters
            .iter()
            .find(|c| c.name == p.name)
            .map_or(300, |c| c.cleanup_timeout_seconds);
        places.push((
            Placement::recorded(&ns, &uid, None, p),
            timeout,
            p.objects.clone(),
        ));
    }
    for c in &td.spec.job_clusters {
        if places.iter().any(|(p, _, _)| p.cluster == c.name) {
            continue;
        }
        places.push((
            Placement::of(&ns, &uid, c),
            c.cleanup_timeout_seconds,
            Vec::new(),
        ));
    }
    let results =
        futures::future::join_all(places.iter().map(|(p, _, _)| cleanup(&ctx.client, p))).await;
    let failed: Vec<(&Placement, i32, &Vec<String>, String)> = places
        .iter()
        .zip(results)
        .filter_map(|((p, timeout, objects), r)| r.err().map(|e| (p, *timeout, objects, e)))
        .collect();
    let forget = || ctx.metrics.forget(&ns, &td.name_any(), td.status.as_ref());
    if failed.is_empty() {
        info!(tator = %key(td), "job clusters cleaned up");
        set_finalizer(ctx, td, false).await?;
        forget();
        return Ok(Action::await_change());
    }
    // Without its kubeconfig Secret (deleted with the namespace, say) a cluster cannot be
    // reached however long deletion waits.
    let hopeless = failed.iter().all(|f| f.3.starts_with("SecretNotFound"));
    let force = td
        .annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v == "true");
    let waited = td
        .meta()
        .deletion_timestamp
        .as_ref()
        .and_then(|t| {
            let now = k8s_openapi::jiff::Timestamp::now();
            now.duration_since(t.0).try_into().ok()
        })
        .unwrap_or(Duration::ZERO);
    let limit = failed.iter().map(|f| f.1).min().unwrap_or(0);
    let left: Vec<String> = failed
        .iter()
        .map(|(p, _, objects, e)| {
            let what = if objects.is_empty() {
                format!("objects in namespace {}", p.remote_namespace)
            } else {
                format!("{} in namespace {}", objects.join(", "), p.remote_namespace)
            };
            format!("job cluster {}: {what} ({e})", p.cluster)
        })
        .collect();
    let remaining = match decide::deletion(force, hopeless, waited, limit) {
        decide::Deletion::Wait { remaining } => remaining,
        decide::Deletion::GoAhead(why) => {
            warn!(tator = %key(td), left = ?left, "deleting without cleaning up job clusters");
            publish(
                ctx,
                td,
                EventType::Warning,
                "LeftBehind",
                format!("{why}; left behind: {}", left.join("; ")),
            )
            .await;
            set_finalizer(ctx, td, false).await?;
            forget();
            return Ok(Action::await_change());
        }
    };
    let mut st = td.status.clone().unwrap_or_default();
    for (p, _, _, _) in &failed {
        let msg = format!(
            "deletion waits for this cluster: could not remove {}; deletion goes ahead without it in {remaining} s, or at once with the annotation {FORCE_DELETE_ANNOTATION}=\"true\"",
            left.iter()
                .find(|l| l.starts_with(&format!("job cluster {}:", p.cluster)))
                .cloned()
                .unwrap_or_default()
        );
        let type_ = format!("JobCluster/{}", p.cluster);
        st.conditions.retain(|c| c.type_ != type_);
        st.conditions
            .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_,
                status: "False".into(),
                reason: "CleanupPending".into(),
                message: msg,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ),
                observed_generation: td.meta().generation,
            });
    }
    write_status(ctx, td, &st).await?;
    Ok(Action::requeue(Duration::from_secs(5)))
}

/// Permanent errors wait for a spec change; transient ones back off exponentially.
pub fn error_policy(obj: Arc<Watched>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    );
    let n = ctx.failures(&key, false);
    warn!(tator = %key, category = error.category(), error = %error, attempt = n, "reconcile failed");
    error.action(n)
}

fn child_config() -> watcher::Config {
    watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER))
}

fn api_for<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A backoff that never waits: used for the controller's merged trigger stream.
struct NoJointBackoff;

impl Iterator for NoJointBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoJointBackoff {
    fn reset(&mut self) {}
}

/// Runs the controller until SIGINT/SIGTERM.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let settings = ctx.settings.clone();
    let ns = settings.namespace.clone();
    let ns = ns.as_deref();
    let tds: Api<Watched> = api_for(&client, ns);
    let (reader, writer) = reflector::store();
    // Only spec changes (generation) trigger from the resource itself: our own status writes do not.
    // Managed fields are never read: the copies do not keep them (with the status's, they were
    // most of an installation's watched bytes).
    let forget = ctx.clone();
    let trigger = watcher(tds, watcher::Config::default())
        .default_backoff()
        .modify(|w: &mut Watched| w.meta_mut().managed_fields = None)
        .inspect(move |e| {
            if let Ok(watcher::Event::Delete(w)) = e {
                forget.written.forget(w.meta());
            }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    // Job-cluster workers ask for reconciles when what they see changes.
    let extra = ctx
        .job_cluster_triggers
        .lock()
        .ok()
        .and_then(|mut r| r.take());
    let store = reader.clone();
    let extra = futures::stream::iter(extra).flatten().filter_map(
        move |r: reflector::ObjectRef<TatorDeployment>| {
            let mut watched = reflector::ObjectRef::<Watched>::new(&r.name);
            watched.namespace = r.namespace;
            futures::future::ready(store.get(&watched).map(|o| Ok((*o).clone())))
        },
    );
    let trigger = futures::stream::select(trigger, extra);
    // Whether the third-party CRDs are installed: a change reconciles every installation.
    let (crds_changed, crd_changes) = futures::channel::mpsc::unbounded();
    let crd_watches: Vec<_> = crds::watched()
        .iter()
        .map(|r| {
            tokio::spawn(crds::watch(
                client.clone(),
                crate::cache::crd_name(r),
                ctx.caches.crds.clone(),
                crds_changed.clone(),
            ))
        })
        .collect();
    let writers = ctx.cache_writers.lock().ok().and_then(|mut w| w.take());
    let Some(w) = writers else {
        warn!("this context already ran a controller; create a new one");
        return;
    };
    // Each watch both triggers reconciles of the owner and fills the local copy apply reads.
    // `trim` drops what the copy does not keep; children compared by generation (see `cache`)
    // are forgotten when deleted.
    fn cached<K>(
        api: Api<K>,
        writer: reflector::store::Writer<K>,
        trim: fn(&mut K),
        by_generation: Option<(Generations, &'static str)>,
    ) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
    where
        K: Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        watcher(api, child_config())
            .default_backoff()
            .modify(trim)
            .inspect(move |event| {
                if let (Some((generations, kind)), Ok(watcher::Event::Delete(o))) =
                    (&by_generation, event)
                {
                    generations.forget(kind, o.meta());
                }
            })
            .reflect(writer)
            .touched_objects()
    }
    // Managed fields are never compared: no copy keeps them (`Cached::trim` for the kinds kept
    // as objects, this for those kept as metadata).
    fn meta_only<K: Resource>(o: &mut K) {
        o.meta_mut().managed_fields = None;
    }
    let by_generation = |kind| Some((ctx.caches.generations.clone(), kind));
    let controller = Controller::for_stream(trigger, reader)
        .with_config(
            ControllerConfig::default()
                .concurrency(settings.concurrency)
                .debounce(settings.debounce),
        )
        // Every watch backs off on its own (`default_backoff` above). The controller's joint
        // backoff over all of them would pause watches that are mid-request whenever another
        // one fails, and after an API server restart it never let them reconnect (the watches
        // kept reporting stale connection errors until the process restarted).
        .trigger_backoff(NoJointBackoff);
    // One watch per watched kind of the table of child kinds (`builders::children`).
    macro_rules! watch_children {
        ([$c:ident] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {
            $( let $c = watch_children!(@one $c, $how, $ty, $field); )*
        };
        // Not watched: Secrets (that would take the right to list them all) and third-party
        // kinds (their CRDs are watched instead).
        (@one $c:ident, composed, $ty:ty, $field:ident) => { $c };
        (@one $c:ident, crd, $ty:ty, $field:ident) => { $c };
        (@one $c:ident, whole, $ty:ty, $field:ident) => {
            $c.owns_stream(cached(api_for::<$ty>(&client, ns), w.$field, <$ty as Cached>::trim, None))
        };
        (@one $c:ident, slim, $ty:ty, $field:ident) => {
            $c.owns_stream(cached(
                api_for::<$ty>(&client, ns),
                w.$field,
                <$ty as Cached>::trim,
                by_generation(<$ty as k8s_openapi::Resource>::KIND),
            ))
        };
        (@one $c:ident, meta, $ty:ty, $field:ident) => {
            $c.owns_stream(cached(
                api_for::<PartialObjectMeta<$ty>>(&client, ns),
                w.$field,
                meta_only,
                by_generation(<$ty as k8s_openapi::Resource>::KIND),
            ))
        };
        // Reconciles the installation its instance label names (it may have no owner).
        (@one $c:ident, labelled, $ty:ty, $field:ident) => {
            $c.watches_stream(
                cached(api_for::<$ty>(&client, ns), w.$field, <$ty as Cached>::trim, None),
                |o| {
                    let instance = o.labels().get(labels::INSTANCE).cloned()?;
                    Some(reflector::ObjectRef::new(&instance).within(&o.namespace()?))
                },
            )
        };
    }
    child_kinds!(watch_children, controller);
    controller
        .reconcile_all_on(crd_changes)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    for w in crd_watches {
        w.abort();
    }
    info!("controller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rv: &str, phase: &str) -> TatorDeployment {
        let mut td = crate::test_fixtures::minimal("1.5.0");
        td.metadata.namespace = Some("ns".into());
        td.metadata.resource_version = Some(rv.into());
        td.status = Some(TatorDeploymentStatus {
            phase: Some(phase.into()),
            ..Default::default()
        });
        td
    }

    #[test]
    fn the_written_status_stands_until_the_watch_delivers_it() {
        let written = WrittenStatus::default();
        let before = at("10", "Progressing");
        let ready = TatorDeploymentStatus {
            phase: Some("Ready".into()),
            ..Default::default()
        };
        assert_eq!(written.newer_than(&before), None);
        written.record(before.meta(), &ready);
        // The watched copy is still the one the status was computed from.
        assert_eq!(written.newer_than(&before), Some(ready.clone()));
        // The watch delivered the write (or anything newer): its copy counts, the entry goes.
        assert_eq!(written.newer_than(&at("11", "Ready")), None);
        assert_eq!(written.newer_than(&before), None);
        written.record(before.meta(), &ready);
        written.forget(before.meta());
        assert_eq!(written.newer_than(&before), None);
    }
}
