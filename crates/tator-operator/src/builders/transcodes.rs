//! Tator 1.5.0's transcode path: the REST API posts each video upload to the transcode service
//! (`POST $TRANSCODE_HOST/jobs`), which enqueues an rq job on the queue `transcodes` of its own
//! Redis; workers (`rq worker transcodes` in the tator_client image) run tator-py's transcoder
//! with ffmpeg and call back into the REST API at `GUNICORN_HOST`.
//!
//! tator-transcode reaches its Redis with `Redis(host=REDIS_HOST)`: default port, no password.
//! So the queue is a Redis of its own, holding nothing but transcode jobs, and a NetworkPolicy
//! admits only the service and the workers to it (the jobs carry the uploader's API token).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            ContainerPort, EmptyDirVolumeSource, HTTPGetAction, PodSpec, Probe, Service, Volume,
            VolumeMount,
        },
        networking::v1::{
            NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
            NetworkPolicySpec,
        },
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};

use super::{
    common::*,
    features::transcodes_enabled,
    names::{QUEUE_NAME, QUEUE_PORT, SERVICE_PORT, TRANSCODE, TRANSCODE_QUEUE, TRANSCODE_WORKER},
    queue_workers::queue_host,
};
use crate::validate::ValidatedTator;

/// User of the transcode service and workers (PodSecurity `restricted`: not root).
const UID: i64 = 1000;
/// User of the queue's Redis (the redis image's).
const REDIS_UID: i64 = 999;

/// Whether the workers scale on their queue.
pub fn autoscaled(t: &ValidatedTator) -> bool {
    super::queue_workers::autoscaled(t, TRANSCODE_WORKER)
}

/// Whether KEDA scales the workers.
pub fn uses_keda(t: &ValidatedTator) -> bool {
    t.spec
        .transcodes
        .workers
        .autoscaling
        .as_ref()
        .is_some_and(|a| transcodes_enabled(t) && super::features::uses_keda(t, a))
}

fn labels_in(t: &ValidatedTator, components: &[&str]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([
            (tator_api::labels::INSTANCE.to_string(), t.name.clone()),
            (
                tator_api::labels::NAME.to_string(),
                tator_api::labels::APP.to_string(),
            ),
        ])),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: tator_api::labels::COMPONENT.into(),
            operator: "In".into(),
            values: Some(components.iter().map(|c| c.to_string()).collect()),
        }]),
    }
}

fn scratch(size: Option<&str>) -> Volume {
    Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: size.map(|s| Quantity(s.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tmp_mount() -> VolumeMount {
    VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }
}

/// The transcode service Deployment: `uvicorn main:app` as its image runs it.
pub fn service_deployment(t: &ValidatedTator, version: &str) -> Deployment {
    let s = &t.spec.transcodes.service;
    let mut c = container(
        TRANSCODE,
        tator_image(t, "tator_transcode", version, &s.pod),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.command = Some(vec![
        "uvicorn".into(),
        "main:app".into(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        SERVICE_PORT.to_string(),
    ]);
    c.env = Some(vec![env("REDIS_HOST", queue_host(t)), env("HOME", "/tmp")]);
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: SERVICE_PORT,
        ..Default::default()
    }]);
    // FastAPI serves its OpenAPI document without touching Redis: the process answers.
    let probe = |initial: i32, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/openapi.json".into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    };
    c.readiness_probe = Some(probe(2, 5));
    c.liveness_probe = Some(probe(20, 20));
    c.volume_mounts = Some(vec![tmp_mount()]);
    c.resources = Some(resources_or(&s.pod, requirements("100m", "256Mi", "1Gi")));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![scratch(Some("1Gi"))]),
        security_context: Some(pod_security(UID)),
        topology_spread_constraints: Some(spread(t, TRANSCODE)),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(t, t.child_name(TRANSCODE), TRANSCODE, Some(version)),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            selector: label_selector(t, TRANSCODE),
            strategy: Some(zero_downtime()),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(t, TRANSCODE, Some(version), spec, BTreeMap::new(), &s.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// The worker Deployment: `rq worker` on the queue, from the tator_client image's /scripts.
pub fn worker_deployment(t: &ValidatedTator, version: &str) -> Deployment {
    let w = &t.spec.transcodes.workers;
    let mut c = container(
        TRANSCODE_WORKER,
        tator_image(t, "tator_client", version, &w.pod),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    // A worker that dies mid-job (OOM, kill -9, a lost node) leaves its job "started" until a
    // live worker's maintenance finds the job's heartbeat expired (90 s) and marks it failed,
    // which Tator's job list then shows. An idle worker runs maintenance only between blocking
    // waits for a job (worker TTL − 15 s): both at about a minute instead of rq's 7 and 10.
    c.command = Some(vec![
        "rq".into(),
        "worker".into(),
        "--url".into(),
        format!("redis://{}:{QUEUE_PORT}", queue_host(t)),
        "--worker-ttl".into(),
        "75".into(),
        "--maintenance-interval".into(),
        "60".into(),
        QUEUE_NAME.into(),
    ]);
    c.working_dir = Some("/scripts".into());
    // The job's arguments name /tmp as the work folder (tator-transcode's `work_dir`).
    c.env = Some(vec![env("HOME", "/tmp"), env("PYTHONUNBUFFERED", "1")]);
    c.volume_mounts = Some(vec![tmp_mount()]);
    c.resources = Some(resources_or(&w.pod, requirements("1", "1Gi", "8Gi")));
    let spec = PodSpec {
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![scratch(Some(&w.scratch_size))]),
        security_context: Some(pod_security(UID)),
        // rq lets the running job finish on SIGTERM (a warm shutdown); give it time.
        termination_grace_period_seconds: Some(600),
        topology_spread_constraints: Some(spread(t, TRANSCODE_WORKER)),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(
            t,
            t.child_name(TRANSCODE_WORKER),
            TRANSCODE_WORKER,
            Some(version),
        ),
        spec: Some(DeploymentSpec {
            // Autoscaled: the scaler owns replicas, the operator never sends it.
            replicas: (!autoscaled(t)).then_some(w.replicas),
            selector: label_selector(t, TRANSCODE_WORKER),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(
                t,
                TRANSCODE_WORKER,
                Some(version),
                spec,
                BTreeMap::new(),
                &w.pod,
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// The queue's Redis: one pod, no password (see the module doc), the queue kept in an
/// append-only file on an emptyDir so that it survives a restart of the container.
pub fn queue_deployment(t: &ValidatedTator) -> Deployment {
    let q = &t.spec.transcodes.queue;
    let mut c = container(
        TRANSCODE_QUEUE,
        q.pod
            .image
            .clone()
            .unwrap_or_else(|| super::names::REDIS_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    // Without a password Redis answers only on loopback unless told otherwise; the
    // NetworkPolicy is what keeps everyone else out. Jobs are never evicted.
    c.command = Some(vec![
        "redis-server".into(),
        "--port".into(),
        QUEUE_PORT.to_string(),
        "--protected-mode".into(),
        "no".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "yes".into(),
        "--dir".into(),
        "/data".into(),
        "--maxmemory-policy".into(),
        "noeviction".into(),
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some("redis".into()),
        container_port: QUEUE_PORT,
        ..Default::default()
    }]);
    c.volume_mounts = Some(vec![VolumeMount {
        name: "data".into(),
        mount_path: "/data".into(),
        ..Default::default()
    }]);
    let probe = |initial, period| {
        exec_probe(
            "redis-cli -h 127.0.0.1 ping | grep -q PONG",
            initial,
            period,
        )
    };
    c.readiness_probe = Some(probe(2, 10));
    c.liveness_probe = Some(probe(20, 20));
    c.resources = Some(resources_or(&q.pod, requirements("50m", "64Mi", "512Mi")));
    let spec = PodSpec {
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]),
        security_context: Some(pod_security(REDIS_UID)),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(t, t.child_name(TRANSCODE_QUEUE), TRANSCODE_QUEUE, None),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: label_selector(t, TRANSCODE_QUEUE),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: pod_template(t, TRANSCODE_QUEUE, None, spec, BTreeMap::new(), &q.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// Only the transcode service and workers of this installation may reach its queue, and the
/// scaler reading its length: the operator's pods (when it runs in the cluster and scales them)
/// or KEDA's operator.
pub fn queue_policy(t: &ValidatedTator) -> NetworkPolicy {
    let mut from = vec![NetworkPolicyPeer {
        pod_selector: Some(labels_in(t, &[TRANSCODE, TRANSCODE_WORKER])),
        ..Default::default()
    }];
    let name_label = |v: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([(
            tator_api::labels::NAME.to_string(),
            v.to_string(),
        )])),
        ..Default::default()
    };
    if uses_keda(t) {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: Some(name_label("keda-operator")),
            ..Default::default()
        });
    } else if autoscaled(t)
        && let Some(ns) = &t.cluster.operator_namespace
    {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    "kubernetes.io/metadata.name".to_string(),
                    ns.clone(),
                )])),
                ..Default::default()
            }),
            pod_selector: Some(name_label("tator-operator")),
            ..Default::default()
        });
    }
    NetworkPolicy {
        metadata: child_meta(t, t.child_name(TRANSCODE_QUEUE), TRANSCODE_QUEUE, None),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(label_selector(t, TRANSCODE_QUEUE)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(vec![NetworkPolicyPort {
                    port: Some(IntOrString::Int(QUEUE_PORT)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            }]),
            ..Default::default()
        }),
    }
}

/// Everything of the transcode path, once a release serves (`version`; None: nothing yet).
pub struct TranscodeChildren {
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub network_policies: Vec<NetworkPolicy>,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
}

pub fn build(t: &ValidatedTator, version: Option<&str>) -> TranscodeChildren {
    let mut out = TranscodeChildren {
        deployments: Vec::new(),
        services: Vec::new(),
        network_policies: Vec::new(),
        disruption_budgets: Vec::new(),
    };
    let Some(v) = version.filter(|_| transcodes_enabled(t)) else {
        return out;
    };
    out.deployments.push(queue_deployment(t));
    out.services
        .push(cluster_service(t, TRANSCODE_QUEUE, "redis", QUEUE_PORT));
    out.network_policies.push(queue_policy(t));
    out.services
        .push(cluster_service(t, TRANSCODE, "http", SERVICE_PORT));
    out.disruption_budgets.push(pdb(t, TRANSCODE));
    out.deployments.push(service_deployment(t, v));
    out.deployments.push(worker_deployment(t, v));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        builders::queue_workers, builders::tator_env::api_env, test_fixtures::minimal,
        validate::validate,
    };

    fn tator() -> ValidatedTator {
        validate(&minimal("1.5.0")).unwrap()
    }

    fn main_container(d: &Deployment) -> k8s_openapi::api::core::v1::Container {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    }

    #[test]
    fn the_service_and_workers_run_as_tator_runs_them() {
        let t = tator();
        let c = build(&t, Some("1.5.0"));
        let names: Vec<String> = c
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "tator-transcode-queue",
                "tator-transcode",
                "tator-transcode-worker"
            ]
        );
        let svc = main_container(&c.deployments[1]);
        assert_eq!(
            svc.image.as_deref(),
            Some("cvisionai/tator_transcode:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        assert_eq!(svc.command.unwrap()[..2], ["uvicorn", "main:app"]);
        assert!(
            svc.env
                .unwrap()
                .iter()
                .any(|e| e.name == "REDIS_HOST"
                    && e.value.as_deref() == Some("tator-transcode-queue"))
        );
        let worker = main_container(&c.deployments[2]);
        assert_eq!(
            worker.image.as_deref(),
            Some("cvisionai/tator_client:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        assert_eq!(
            worker.command.unwrap(),
            [
                "rq",
                "worker",
                "--url",
                "redis://tator-transcode-queue:6379",
                "--worker-ttl",
                "75",
                "--maintenance-interval",
                "60",
                "transcodes"
            ]
        );
        assert_eq!(worker.working_dir.as_deref(), Some("/scripts"));
        // No release serves yet: nothing.
        let early = build(&t, None);
        assert!(early.deployments.is_empty() && early.services.is_empty());
    }

    #[test]
    fn the_queue_admits_only_the_service_and_workers() {
        let t = tator();
        let p = queue_policy(&t);
        let spec = p.spec.unwrap();
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let rule = &spec.ingress.unwrap()[0];
        let peer = &rule.from.as_ref().unwrap()[0];
        assert!(peer.namespace_selector.is_none() && peer.ip_block.is_none());
        let sel = peer.pod_selector.as_ref().unwrap();
        assert_eq!(
            sel.match_labels.as_ref().unwrap()[tator_api::labels::INSTANCE],
            "tator"
        );
        assert_eq!(
            sel.match_expressions.as_ref().unwrap()[0]
                .values
                .as_ref()
                .unwrap(),
            &["transcode", "transcode-worker"]
        );
    }

    #[test]
    fn autoscaled_workers_leave_replicas_to_the_scaler() {
        let mut td = minimal("1.5.0");
        td.spec.transcodes.workers.autoscaling = Some(
            serde_json::from_value(serde_json::json!({"maxReplicas": 3, "cooldownSeconds": 30}))
                .unwrap(),
        );
        let mut t = validate(&td).unwrap();
        t.cluster.operator_namespace = Some("operators".into());
        let w = worker_deployment(&t, "1.5.0");
        assert_eq!(w.spec.unwrap().replicas, None);
        // Auto without KEDA: the operator scales, and may read the queue.
        let targets = queue_workers::scaler_targets(&t, true);
        assert_eq!(targets.len(), 1);
        assert_eq!((targets[0].min, targets[0].max), (0, 3));
        assert_eq!(targets[0].redis.host, "tator-transcode-queue.tator.svc");
        assert_eq!(targets[0].redis.password, None);
        assert!(queue_workers::scaler_targets(&t, false).is_empty());
        assert!(queue_workers::scaled_objects(&t).is_empty());
        let peers = queue_policy(&t).spec.unwrap().ingress.unwrap()[0]
            .from
            .clone()
            .unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[1]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "operators"
        );
        // With KEDA's CRDs: a ScaledObject on the rq list, and no operator scaler.
        t.cluster.keda = true;
        assert!(queue_workers::scaler_targets(&t, true).is_empty());
        let so = queue_workers::scaled_objects(&t);
        assert_eq!(so.len(), 1);
        assert_eq!(so[0].data["spec"]["maxReplicaCount"], 3);
        let m = &so[0].data["spec"]["triggers"][0]["metadata"];
        assert_eq!(m["listName"], "rq:queue:transcodes");
        assert!(m.get("passwordFromEnv").is_none());
        let peers = queue_policy(&t).spec.unwrap().ingress.unwrap()[0]
            .from
            .clone()
            .unwrap();
        assert!(
            peers[1]
                .pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()
                .values()
                .any(|v| v == "keda-operator")
        );
    }

    #[test]
    fn the_api_knows_where_to_send_transcodes_and_where_workers_call_back() {
        let t = tator();
        let env: BTreeMap<String, String> = api_env(&t)
            .into_iter()
            .map(|e| (e.name, e.value.unwrap()))
            .collect();
        assert_eq!(env["TRANSCODE_HOST"], "http://tator-transcode:8080");
        assert_eq!(env["GUNICORN_HOST"], "http://tator-api:8000");
        assert_eq!(env["COMPOSE_DEPLOY"], "true");
        let mut off = minimal("1.5.0");
        off.spec.transcodes.enabled = false;
        let off = validate(&off).unwrap();
        assert!(api_env(&off).is_empty());
        assert!(build(&off, Some("1.5.0")).deployments.is_empty());
    }
}
