//! Status: conditions computed from the objects the API server returned when they were applied.
//!
//! Conditions follow kstatus: `Ready` is True only when the generation is observed and every
//! component is available; `Reconciling` while work is under way; `Stalled` when progress needs
//! a person (failed migration, refused downgrade, a rollout past its deadline, an invalid spec).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::Service,
    },
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::ResourceExt;
use tator_api::{ComponentStatus, TatorDeploymentStatus, labels};

use crate::{
    apply::Applied,
    builders::{
        features,
        logging::{self, FILEBEAT, KIBANA, KIBANA_SETUP},
        migrations::{self, JobState, Rollout},
        monitoring::{self, GRAFANA, PROMETHEUS, STATSD_EXPORTER},
        names::{API, DB_WORKER, IMAGE_WORKER, NGINX, TLS, UI},
        tls,
    },
    dependencies::Dependencies,
    validate::{ValidatedTator, VersionPlan},
    workload::{PROGRESS_DEADLINE_EXCEEDED, Workload},
};

/// One condition before timestamps are attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: String,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_: type_.into(),
            ok,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Extra facts status needs that are not in the applied objects.
#[derive(Clone, Debug, Default)]
pub struct Observations {
    /// The TLS Secret named in the spec is missing.
    pub tls_secret_missing: Option<String>,
    /// `ObjectStorageReady` (None where nothing was observed, as in `render`).
    pub object_storage: Option<crate::finding::Finding>,
    /// `BucketsRegistered` and the registrations (None: no buckets to register).
    pub registration: Option<crate::registration::Registration>,
    /// Conditions that describe but do not gate `Ready`: `WorkflowsReady` and one
    /// `JobCluster/<name>` per job cluster (Tator serves without them).
    pub informational: Vec<Cond>,
    /// status.jobClusters.
    pub job_clusters: Vec<tator_api::JobClusterStatus>,
}

/// Whether the REST API Deployment applied this round is available.
pub fn api_available(applied: &Applied) -> bool {
    let api: Vec<&Deployment> = applied
        .deployments
        .iter()
        .filter(|d| component_of(d) == API)
        .collect();
    deployment_cond("Api", &api, false).ok
}

fn component_of(d: &Deployment) -> String {
    d.labels()
        .get(labels::COMPONENT)
        .cloned()
        .unwrap_or_default()
}

fn deployment_cond(type_: &str, deps: &[&Deployment], waiting_for_migration: bool) -> Cond {
    if deps.is_empty() {
        return if waiting_for_migration {
            Cond::new(
                type_,
                false,
                "WaitingForMigrations",
                "starts once the database migrations have succeeded",
            )
        } else {
            Cond::new(type_, false, "NotApplied", "not created yet")
        };
    }
    let mut msgs = Vec::new();
    let mut all_ok = true;
    for d in deps {
        let s = Workload::of_deployment(d);
        if let Some(why) = &s.stalled {
            return Cond::new(
                type_,
                false,
                PROGRESS_DEADLINE_EXCEEDED,
                format!("{}: {why}", d.name_any()),
            );
        }
        all_ok &= s.rolled_out();
        msgs.push(format!("{}: {}/{} ready", d.name_any(), s.ready, s.desired));
    }
    if all_ok {
        Cond::new(type_, true, "Available", msgs.join("; "))
    } else {
        Cond::new(type_, false, "RollingOut", msgs.join("; "))
    }
}

fn deployments_of<'a>(applied: &'a Applied, component: &str) -> Vec<&'a Deployment> {
    applied
        .deployments
        .iter()
        .filter(|d| component_of(d) == component)
        .collect()
}

/// Whether a DaemonSet has an up-to-date, available pod on every node it should run on.
fn daemon_set_state(ds: &DaemonSet) -> (bool, String) {
    let st = ds.status.clone().unwrap_or_default();
    let observed = st.observed_generation.unwrap_or(0) >= ds.metadata.generation.unwrap_or(0);
    let desired = st.desired_number_scheduled;
    let ready = st.number_ready;
    let updated = st.updated_number_scheduled.unwrap_or(0);
    let ok = observed && desired > 0 && ready >= desired && updated >= desired;
    (ok, format!("{}: {ready}/{desired} ready", ds.name_any()))
}

/// `LoggingReady`, when logging is enabled: Filebeat is allowed and on every node, Kibana is
/// available and its data view has been created.
fn logging_cond(t: &ValidatedTator, applied: &Applied) -> Cond {
    let by_component = |c: &str| deployments_of(applied, c);
    const TYPE: &str = "LoggingReady";
    if features::filebeat_wanted(t)
        && let Err(why) = logging::filebeat_allowed(t)
    {
        return Cond::new(TYPE, false, "FilebeatForbidden", why);
    }
    let mut msgs = Vec::new();
    if features::filebeat_wanted(t) {
        match applied
            .daemon_sets
            .iter()
            .find(|d| d.name_any() == t.child_name(FILEBEAT))
        {
            Some(ds) => {
                let (ok, msg) = daemon_set_state(ds);
                if !ok {
                    return Cond::new(TYPE, false, "RollingOut", msg);
                }
                msgs.push(msg);
            }
            None => return Cond::new(TYPE, false, "NotApplied", "Filebeat not created yet"),
        }
    }
    if features::kibana_wanted(t) {
        let kibana = deployment_cond(TYPE, &by_component(KIBANA), false);
        if !kibana.ok {
            return kibana;
        }
        msgs.push(kibana.message);
        let job = applied
            .jobs
            .iter()
            .find(|j| j.labels().get(labels::COMPONENT).map(String::as_str) == Some(KIBANA_SETUP));
        match migrations::job_state(job) {
            JobState::Succeeded => {
                msgs.push(format!("data view {} created", logging::DATA_VIEW_TITLE))
            }
            JobState::Failed(why) => {
                return Cond::new(
                    TYPE,
                    false,
                    "DataViewJobFailed",
                    format!("the Job creating Kibana's data view failed: {why}"),
                );
            }
            _ => {
                return Cond::new(
                    TYPE,
                    false,
                    "CreatingDataView",
                    "waiting for the Job creating Kibana's data view",
                );
            }
        }
    }
    if msgs.is_empty() {
        msgs.push("every logging part is switched off".into());
    }
    Cond::new(TYPE, true, "Available", msgs.join("; "))
}

/// `MonitoringReady`, when monitoring is enabled: the statsd exporter, Prometheus (the
/// operator's own, or the ServiceMonitor and PodMonitor for prometheus-operator's) and Grafana.
fn monitoring_cond(t: &ValidatedTator, applied: &Applied) -> Cond {
    let by_component = |c: &str| deployments_of(applied, c);
    const TYPE: &str = "MonitoringReady";
    if applied.prometheus_operator_missing {
        return Cond::new(
            TYPE,
            false,
            "PrometheusOperatorNotInstalled",
            "prometheus-operator's CRDs went away while its monitors were applied; the next reconcile runs a Prometheus of the operator's own",
        );
    }
    let mut components = vec![STATSD_EXPORTER];
    if monitoring::own_prometheus(t) {
        components.push(PROMETHEUS);
    }
    if monitoring::grafana_wanted(t) {
        components.push(GRAFANA);
    }
    let deployments: Vec<&Deployment> = components.iter().flat_map(|c| by_component(c)).collect();
    let mut cond = deployment_cond(TYPE, &deployments, false);
    if cond.ok {
        let path = if monitoring::own_prometheus(t) {
            "the operator's own Prometheus"
        } else {
            "ServiceMonitor and PodMonitor for prometheus-operator"
        };
        cond.message = format!("{path}; {}", cond.message);
    }
    cond
}

fn ingress_address(svc: &Service) -> Option<String> {
    let ingress = svc
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    let first = ingress.first()?;
    first.ip.clone().or_else(|| first.hostname.clone())
}

/// Computes the new status from what was applied this round.
pub fn compute(
    t: &ValidatedTator,
    rollout: &Rollout,
    applied: &Applied,
    obs: &Observations,
    deps: &Dependencies,
) -> (TatorDeploymentStatus, Vec<Cond>) {
    let by_component = |c: &str| -> Vec<&Deployment> {
        applied
            .deployments
            .iter()
            .filter(|d| component_of(d) == c)
            .collect()
    };
    let waiting = rollout.app_version.is_none();
    // Autoscaled workers come and go with their queue: their count is the scaler's, not a
    // rollout, so it does not make the installation less ready.
    let fixed = |c: &str| -> Vec<&Deployment> {
        if crate::builders::queue_workers::autoscaled(t, c) {
            Vec::new()
        } else {
            by_component(c)
        }
    };
    let workers = [fixed(DB_WORKER), fixed(IMAGE_WORKER)].concat();
    let workers = if workers.is_empty() && !waiting {
        Cond::new(
            "Workers",
            true,
            "Autoscaled",
            "the db and image workers follow their queues",
        )
    } else {
        deployment_cond("Workers", &workers, waiting)
    };
    let mut conds = vec![
        deployment_cond("Api", &by_component(API), waiting),
        workers,
        deployment_cond("Ui", &by_component(UI), waiting),
    ];
    if features::transcodes_enabled(t) {
        use crate::builders::names::{TRANSCODE, TRANSCODE_QUEUE, TRANSCODE_WORKER};
        conds.push(deployment_cond(
            "Transcodes",
            &[
                by_component(TRANSCODE_QUEUE),
                by_component(TRANSCODE),
                fixed(TRANSCODE_WORKER),
            ]
            .concat(),
            waiting,
        ));
    }

    let nginx_svc = applied
        .services
        .iter()
        .find(|s| s.name_any() == t.child_name(NGINX));
    let lb = t.spec.nginx.service.type_ == tator_api::ServiceType::LoadBalancer;
    let address = nginx_svc.and_then(ingress_address);
    let mut nginx = deployment_cond("Nginx", &by_component(NGINX), false);
    let cert_pending = applied.certificates.first().map(tls::certificate_ready);
    if applied.cert_manager_missing {
        nginx = Cond::new(
            "Nginx",
            false,
            "CertManagerNotInstalled",
            "tls.issuerRef needs cert-manager, but its Certificate CRD is not installed",
        );
    } else if let Some(Err(why)) = cert_pending {
        nginx = Cond::new(
            "Nginx",
            false,
            "CertificateNotReady",
            format!("Certificate {}: {why}", t.child_name(TLS)),
        );
    } else if let Some(secret) = &obs.tls_secret_missing {
        nginx = Cond::new(
            "Nginx",
            false,
            "TLSSecretNotFound",
            format!("TLS Secret {secret} does not exist"),
        );
    } else if nginx.ok && lb && address.is_none() {
        nginx = Cond::new(
            "Nginx",
            false,
            "WaitingForLoadBalancer",
            "the LoadBalancer Service has no ingress address yet",
        );
    }
    conds.push(nginx);

    let storage = match &t.spec.storage.shared.existing_claim {
        Some(claim) => Cond::new(
            "Storage",
            true,
            "ExistingClaim",
            format!("using claim {claim}"),
        ),
        None => match applied.claims.first() {
            Some(pvc) => {
                let phase = pvc
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Pending".into());
                let ok = phase == "Bound";
                Cond::new(
                    "Storage",
                    ok,
                    if ok { "Bound" } else { "Pending" },
                    format!("claim {} is {phase}", pvc.name_any()),
                )
            }
            None => Cond::new("Storage", false, "NotApplied", "claim not created yet"),
        },
    };
    conds.push(storage);
    if features::logging_enabled(t) {
        conds.push(logging_cond(t, applied));
    }
    if features::monitoring_enabled(t) {
        conds.push(monitoring_cond(t, applied));
    }
    for (type_, d) in [
        ("DatabaseReady", Some(&deps.database)),
        ("CacheReady", Some(&deps.cache)),
        // Only while something uses Elasticsearch (the logging stack; no Tator since 1.5.0).
        ("SearchReady", deps.search.as_ref()),
    ] {
        if let Some(d) = d {
            conds.push(Cond::new(type_, d.ok, &d.reason, d.message.clone()));
        }
    }
    if let Some(d) = &obs.object_storage {
        conds.push(Cond::new(
            "ObjectStorageReady",
            d.ok,
            &d.reason,
            d.message.clone(),
        ));
    }
    if let Some(r) = &obs.registration {
        conds.push(Cond::new(
            "BucketsRegistered",
            r.ok,
            &r.reason,
            r.message.clone(),
        ));
    }

    let mut stalled: Option<(String, String)> = None;
    let migrations = match (&rollout.plan, &rollout.migration_state) {
        (VersionPlan::Steady(v), _) => Cond::new(
            "Migrations",
            true,
            "UpToDate",
            format!("release {v} is migrated"),
        ),
        (VersionPlan::DowngradeRefused { serving, requested }, _) => {
            let msg = format!(
                "spec.version {requested} is older than the serving release {serving}; downgrades are refused (restore a backup of {requested} instead)"
            );
            stalled = Some(("DowngradeRefused".into(), msg.clone()));
            Cond::new("Migrations", false, "DowngradeRefused", msg)
        }
        (VersionPlan::Migrate { to, .. }, Some(JobState::Succeeded)) => Cond::new(
            "Migrations",
            true,
            "Succeeded",
            format!("migrations for {to} succeeded"),
        ),
        (VersionPlan::Migrate { from, to }, Some(JobState::Failed(why))) => {
            let serving = from
                .as_ref()
                .map_or("nothing".to_string(), |v| format!("release {v}"));
            let msg = format!(
                "migrations for {to} failed: {why}; {serving} keeps serving. Fix the cause, then delete the failed Job or change the spec to retry"
            );
            stalled = Some(("MigrationFailed".into(), msg.clone()));
            Cond::new("Migrations", false, "Failed", msg)
        }
        (VersionPlan::Migrate { to, .. }, Some(JobState::WaitingForDependencies)) => Cond::new(
            "Migrations",
            false,
            "WaitingForDependencies",
            if deps.search_required {
                format!(
                    "migrations for {to} start once PostgreSQL, Redis and Elasticsearch are ready"
                )
            } else {
                format!("migrations for {to} start once PostgreSQL and Redis are ready")
            },
        ),
        (VersionPlan::Migrate { to, .. }, _) => Cond::new(
            "Migrations",
            false,
            "Running",
            format!("running migrations for {to}"),
        ),
    };
    conds.push(migrations);

    if stalled.is_none() {
        stalled = conds
            .iter()
            .find(|c| c.reason == PROGRESS_DEADLINE_EXCEEDED)
            .map(|c| (PROGRESS_DEADLINE_EXCEEDED.to_string(), c.message.clone()));
    }
    let not_ready: Vec<&Cond> = conds.iter().filter(|c| !c.ok).collect();
    let all_ok = not_ready.is_empty();
    let ready = if all_ok {
        Cond::new(
            "Ready",
            true,
            "AllComponentsAvailable",
            "every component is available",
        )
    } else {
        let summary: Vec<String> = not_ready
            .iter()
            .map(|c| format!("{}: {}", c.type_, c.reason))
            .collect();
        let reason = stalled.as_ref().map_or("Progressing", |(r, _)| r.as_str());
        Cond::new("Ready", false, reason, summary.join(", "))
    };
    let reconciling = if all_ok || stalled.is_some() {
        Cond::new("Reconciling", false, "Idle", "")
    } else {
        Cond::new(
            "Reconciling",
            true,
            "Progressing",
            "waiting for components to become available",
        )
    };
    let stalled_cond = match &stalled {
        Some((reason, msg)) => Cond::new("Stalled", true, reason, msg.clone()),
        None => Cond::new("Stalled", false, "Progressing", ""),
    };
    let mut all = vec![ready, reconciling, stalled_cond];
    all.extend(conds);
    all.extend(obs.informational.iter().cloned());

    let phase = if all_ok {
        "Ready"
    } else if stalled.is_some() {
        "Failed"
    } else if matches!(rollout.plan, VersionPlan::Migrate { from: Some(_), .. }) {
        "Upgrading"
    } else {
        "Progressing"
    };
    let mut components = BTreeMap::new();
    for d in &applied.deployments {
        let s = Workload::of_deployment(d);
        components.insert(
            component_of(d),
            ComponentStatus {
                ready: s.ready,
                desired: s.desired,
            },
        );
    }
    let scheme = if t.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = if lb {
        address.map(|a| format!("{scheme}://{a}"))
    } else {
        Some(format!("{scheme}://{}", t.spec.domain))
    };
    let status = TatorDeploymentStatus {
        observed_generation: Some(t.generation),
        phase: Some(phase.into()),
        version: rollout.app_version.clone(),
        image_tag: rollout.app_version.as_deref().map(|v| t.image_tag(v)),
        url,
        conditions: Vec::new(),
        components,
        buckets: obs
            .registration
            .as_ref()
            .map(|r| r.buckets.clone())
            .unwrap_or_default(),
        job_clusters: obs.job_clusters.clone(),
    };
    (status, all)
}

/// `WorkflowsReady`: whether workflows can run in this cluster (it does not gate `Ready`).
pub fn workflows_ready(t: &ValidatedTator, rollout: &Rollout, applied: &Applied) -> Cond {
    use crate::builders::workflows::{self, LocalWorkflows};
    const T: &str = "WorkflowsReady";
    let local = LocalWorkflows::of(t);
    if !local.any() {
        return Cond::new(
            T,
            true,
            "AllRemote",
            "every workflow runs on a job cluster: nothing runs here",
        );
    }
    if !t.cluster.argo || applied.argo_missing {
        return Cond::new(
            T,
            false,
            "ArgoNotInstalled",
            "Argo Workflows' CRDs (workflowtemplates.argoproj.io) are not installed in this cluster: install Argo Workflows to run transcodes and algorithms here",
        );
    }
    if !local.transcode {
        return Cond::new(
            T,
            true,
            "RolesApplied",
            "algorithm workflows may be submitted here; transcodes run on a job cluster",
        );
    }
    let Some(v) = rollout.app_version.as_deref() else {
        return Cond::new(
            T,
            false,
            "WaitingForMigrations",
            "WorkflowTemplates are applied once a release is migrated",
        );
    };
    // Built and checked once, in build: they were applied unless the checks refused them.
    let refused = if applied.workflow_templates.is_empty() {
        workflows::templates(t, v, &workflows::Target::local(t)).err()
    } else {
        None
    };
    match refused {
        Some(e) => Cond::new(T, false, "InvalidTemplate", e),
        None => Cond::new(
            T,
            true,
            "TemplatesApplied",
            format!(
                "{} WorkflowTemplate(s) and the workflow roles applied",
                applied.workflow_templates.len()
            ),
        ),
    }
}

/// The `JobCluster/<name>` conditions of the previous status, unchanged.
pub fn previous_job_cluster_conditions(old: Option<&TatorDeploymentStatus>) -> Vec<Cond> {
    old.map(|s| {
        s.conditions
            .iter()
            .filter(|c| c.type_.starts_with("JobCluster/"))
            .map(|c| Cond {
                type_: c.type_.clone(),
                ok: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// The registrations and `BucketsRegistered` of the previous status, unchanged (while paused).
pub fn previous_registration(
    old: Option<&TatorDeploymentStatus>,
) -> Option<crate::registration::Registration> {
    let old = old?;
    let cond = old
        .conditions
        .iter()
        .find(|c| c.type_ == "BucketsRegistered");
    if cond.is_none() && old.buckets.is_empty() {
        return None;
    }
    Some(crate::registration::Registration {
        ok: cond.is_none_or(|c| c.status == "True"),
        reason: cond.map_or_else(|| "Registered".into(), |c| c.reason.clone()),
        message: cond.map(|c| c.message.clone()).unwrap_or_default(),
        buckets: old.buckets.clone(),
    })
}

/// `Paused` (always present) and what `spec.paused` and `spec.stopped` do to `Ready`,
/// `Reconciling` and the phase: paused with changes held back is not Ready (the spec is not
/// what runs); stopped is not Ready and not reconciling (nothing is meant to run).
pub fn pause_and_stop(
    t: &ValidatedTator,
    pending: &[String],
    st: &mut TatorDeploymentStatus,
    conds: &mut Vec<Cond>,
) {
    let set = |conds: &mut Vec<Cond>, c: Cond| match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => *x = c,
        None => conds.push(c),
    };
    let paused = if !t.spec.paused {
        Cond::new("Paused", false, "NotPaused", "")
    } else if pending.is_empty() {
        Cond::new(
            "Paused",
            true,
            "Paused",
            "spec.paused is true; nothing is held back",
        )
    } else {
        let shown: Vec<&str> = pending.iter().take(10).map(String::as_str).collect();
        let more = pending.len().saturating_sub(shown.len());
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        Cond::new(
            "Paused",
            true,
            "ChangesPending",
            format!("spec.paused is true; held back: {}{tail}", shown.join(", ")),
        )
    };
    let held = paused.reason == "ChangesPending";
    set(conds, paused);
    if t.spec.stopped {
        set(
            conds,
            Cond::new(
                "Ready",
                false,
                "Stopped",
                "spec.stopped is true: every workload is scaled to zero; volumes and Secrets are kept",
            ),
        );
        set(conds, Cond::new("Reconciling", false, "Stopped", ""));
        set(conds, Cond::new("Stalled", false, "Stopped", ""));
        st.phase = Some("Stopped".into());
    } else if held {
        set(
            conds,
            Cond::new(
                "Ready",
                false,
                "Paused",
                "spec.paused is true and the spec asks for changes that are held back",
            ),
        );
        set(conds, Cond::new("Reconciling", false, "Paused", ""));
        st.phase = Some("Paused".into());
    }
}

/// Attaches timestamps, keeping `lastTransitionTime` of conditions whose status did not change.
pub fn with_conditions(
    mut status: TatorDeploymentStatus,
    conds: &[Cond],
    previous: Option<&TatorDeploymentStatus>,
    generation: i64,
) -> TatorDeploymentStatus {
    let now = Time(Timestamp::now());
    status.conditions = conds
        .iter()
        .map(|c| {
            let s = if c.ok { "True" } else { "False" };
            let prev = previous.and_then(|p| p.conditions.iter().find(|x| x.type_ == c.type_));
            let since = match prev {
                Some(p) if p.status == s => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: c.type_.clone(),
                status: s.into(),
                reason: c.reason.clone(),
                message: crate::bounded::one_line(&c.message, crate::bounded::MESSAGE_MAX),
                last_transition_time: since,
                observed_generation: Some(generation),
            }
        })
        .collect();
    status
}

/// A status for a spec that failed validation: the last known state, marked Stalled, with
/// `reason` (InvalidSpec, UnknownRelease) on Ready, Reconciling and Stalled.
pub fn invalid_spec(
    previous: Option<&TatorDeploymentStatus>,
    generation: i64,
    reason: &str,
    message: &str,
) -> TatorDeploymentStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.observed_generation = Some(generation);
    status.phase = Some("Failed".into());
    let mut conds: Vec<Cond> = status
        .conditions
        .iter()
        .filter(|c| !matches!(c.type_.as_str(), "Ready" | "Reconciling" | "Stalled"))
        .map(|c| Cond {
            type_: c.type_.clone(),
            ok: c.status == "True",
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    conds.insert(0, Cond::new("Stalled", true, reason, message));
    conds.insert(0, Cond::new("Reconciling", false, reason, ""));
    conds.insert(0, Cond::new("Ready", false, reason, message));
    with_conditions(status, &conds, previous, generation)
}

/// The first status of a new object, written before anything that may wait: Pending, Ready=False
/// and Reconciling=True; no generation is observed yet.
pub fn first(generation: i64) -> TatorDeploymentStatus {
    let status = TatorDeploymentStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    };
    let conds = [
        Cond::new(
            "Ready",
            false,
            "Reconciling",
            "the operator is creating the installation",
        ),
        Cond::new(
            "Reconciling",
            true,
            "Reconciling",
            "the operator is creating the installation",
        ),
        Cond::new("Stalled", false, "Reconciling", ""),
    ];
    with_conditions(status, &conds, None, generation)
}

/// A status for a reconcile that failed part-way (an apply, a prune or a read of the cluster):
/// the last known state with `Ready=False` and `reason` (ApplyFailed, PruneFailed, FetchFailed)
/// naming what failed; the other conditions keep theirs. While the operator retries
/// (Reconciling, phase Progressing), `observedGeneration` stays where it was: this generation is
/// not handled yet. `refused`: the API server refused the object itself (invalid), so retrying
/// cannot help until something changes: Stalled, phase Failed, and the generation counts as
/// observed (with that outcome), so GitOps tools report a failure instead of waiting.
pub fn reconcile_failed(
    previous: Option<&TatorDeploymentStatus>,
    generation: i64,
    reason: &str,
    message: &str,
    refused: bool,
) -> TatorDeploymentStatus {
    let mut status = previous.cloned().unwrap_or_default();
    status.phase = Some(if refused { "Failed" } else { "Progressing" }.into());
    if refused {
        status.observed_generation = Some(generation);
    }
    let stalled = if refused {
        Cond::new("Stalled", true, reason, message)
    } else {
        Cond::new("Stalled", false, reason, "")
    };
    let reconciling = if refused {
        Cond::new("Reconciling", false, reason, "")
    } else {
        Cond::new("Reconciling", true, reason, format!("retrying: {message}"))
    };
    let fresh = [
        Cond::new("Ready", false, reason, message),
        reconciling,
        stalled,
    ];
    let stamped = with_conditions(
        TatorDeploymentStatus::default(),
        &fresh,
        previous,
        generation,
    );
    let kept = status
        .conditions
        .iter()
        .filter(|c| !matches!(c.type_.as_str(), "Ready" | "Reconciling" | "Stalled"))
        .cloned();
    status.conditions = stamped.conditions.into_iter().chain(kept).collect();
    status
}

/// Whether two statuses differ in anything but condition timestamps.
pub fn differs(a: Option<&TatorDeploymentStatus>, b: &TatorDeploymentStatus) -> bool {
    let Some(a) = a else { return true };
    let strip = |s: &TatorDeploymentStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s.conditions.sort_by(|x, y| x.type_.cmp(&y.type_));
        s
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        builders::{build, migrations::decide},
        test_fixtures::minimal,
        validate::validate,
    };

    #[test]
    fn nothing_available_is_not_ready() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let r = decide(
            VersionPlan::Steady(t.target_version.clone()),
            None,
            JobState::Missing,
            true,
        );
        let d = build(&t, &r);
        let applied = Applied {
            live: d,
            ..Default::default()
        };
        let (status, conds) = compute(
            &t,
            &r,
            &applied,
            &Observations::default(),
            &Dependencies::assumed_ready(),
        );
        assert_eq!(status.phase.as_deref(), Some("Progressing"));
        let ready = conds.iter().find(|c| c.type_ == "Ready").unwrap();
        assert!(!ready.ok);
        assert!(
            ready.message.contains("Api: RollingOut"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn failed_migration_stalls_and_keeps_old_version() {
        let mut td = minimal("1.6.0");
        td.spec.image.tag = Some("a-build-of-1.6.0".into());
        td.status = Some(TatorDeploymentStatus {
            version: Some("1.5.0".into()),
            ..Default::default()
        });
        let t = validate(&td).unwrap();
        let r = decide(
            t.plan(),
            None,
            JobState::Failed("BackoffLimitExceeded".into()),
            true,
        );
        assert_eq!(r.app_version.as_deref(), Some("1.5.0"));
        let (status, conds) = compute(
            &t,
            &r,
            &Applied::default(),
            &Observations::default(),
            &Dependencies::assumed_ready(),
        );
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.version.as_deref(), Some("1.5.0"));
        // The serving release's tag is recorded, not the requested one's.
        assert_eq!(
            status.image_tag.as_deref(),
            Some("dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        let stalled = conds.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert!(stalled.ok && stalled.reason == "MigrationFailed");
    }

    #[test]
    fn an_unknown_release_is_reported_with_its_own_reason() {
        let previous = TatorDeploymentStatus {
            version: Some("1.5.0".into()),
            ..Default::default()
        };
        let st = invalid_spec(
            Some(&previous),
            3,
            "UnknownRelease",
            "spec.version 9.9.9 ...",
        );
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "UnknownRelease")
        );
        assert_eq!(st.version.as_deref(), Some("1.5.0"));
        assert_eq!(st.observed_generation, Some(3));
    }

    #[test]
    fn elasticsearch_neither_gates_migrations_nor_shows_for_1_5() {
        let t = validate(&minimal("1.5.0")).unwrap();
        assert!(!crate::builders::data::elasticsearch_used(&t));
        let r = decide(
            crate::validate::VersionPlan::Steady(t.target_version.clone()),
            None,
            JobState::Missing,
            true,
        );
        let mut deps = Dependencies::assumed_ready();
        assert!(deps.all_ready());
        let (_, conds) = compute(&t, &r, &Applied::default(), &Observations::default(), &deps);
        assert!(conds.iter().all(|c| c.type_ != "SearchReady"));
        // Used by the logging stack: checked and shown, but migrations still do not wait for it.
        deps.search = Some(crate::finding::Finding::not_ready("NotReady", "down"));
        assert!(deps.all_ready());
        let (_, conds) = compute(&t, &r, &Applied::default(), &Observations::default(), &deps);
        assert!(conds.iter().any(|c| c.type_ == "SearchReady" && !c.ok));
        // A release that uses it waits for it.
        deps.search_required = true;
        assert!(!deps.all_ready());
    }

    #[test]
    fn timestamps_survive_unchanged_conditions() {
        let conds = vec![Cond::new("Ready", false, "Progressing", "x")];
        let first = with_conditions(TatorDeploymentStatus::default(), &conds, None, 1);
        let mut old = first.clone();
        old.conditions[0].last_transition_time = Time(Timestamp::UNIX_EPOCH);
        let second = with_conditions(TatorDeploymentStatus::default(), &conds, Some(&old), 1);
        assert_eq!(
            second.conditions[0].last_transition_time,
            Time(Timestamp::UNIX_EPOCH)
        );
        assert!(!differs(Some(&first), &second));
    }
}
