//! The REST API (gunicorn), the background workers and the UI.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            MetricSpec, MetricTarget, ResourceMetricSource,
        },
        core::v1::{ContainerPort, PodSpec, Probe, TCPSocketAction},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    common::*,
    names::{API, API_IDENTITY, API_PORT, DB_WORKER, UI, UI_PORT},
    tator_env::{secrets_annotation, tator_env, tator_volumes},
};
use crate::validate::ValidatedTator;

fn tcp_probe(port: i32, initial: i32, period: i32, failures: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(port),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The gunicorn REST API Deployment.
pub fn api_deployment(t: &ValidatedTator, version: &str) -> Deployment {
    let s = &t.spec.api;
    let mut c = container(
        API,
        tator_image(t, "tator_online", version, &s.pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    c.command = Some(vec!["gunicorn".into()]);
    // As Tator's compose.yaml runs it: threaded workers (its image has no gevent).
    c.args = Some(vec![
        "--workers".into(),
        s.gunicorn.workers.to_string(),
        "--worker-connections".into(),
        "100".into(),
        "--worker-class=gthread".into(),
        "--threads=10".into(),
        "--max-requests".into(),
        "10000".into(),
        "--timeout".into(),
        s.gunicorn.timeout_seconds.to_string(),
        "-b".into(),
        format!(":{API_PORT}"),
        "tator_online.wsgi".into(),
    ]);
    if let (Some(host), Some(args)) = (super::monitoring::statsd_host(t), c.args.as_mut()) {
        // gunicorn reports request counts, durations and workers to the statsd exporter.
        args.insert(args.len() - 1, format!("--statsd-host={host}"));
    }
    c.working_dir = Some("/tator_online".into());
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: API_PORT,
        ..Default::default()
    }]);
    c.env = Some(tator_env(t, version));
    let (volumes, mounts) = tator_volumes(t);
    c.volume_mounts = Some(mounts);
    c.readiness_probe = Some(tcp_probe(API_PORT, 5, 5, 3));
    c.liveness_probe = Some(tcp_probe(API_PORT, 60, 20, 6));
    c.resources = Some(resources_or(&s.pod, requirements("1", "4Gi", "16Gi")));
    let spec = PodSpec {
        containers: vec![c],
        volumes: Some(volumes),
        security_context: Some(pod_security(TATOR_UID)),
        termination_grace_period_seconds: Some(60),
        topology_spread_constraints: Some(spread(t, API)),
        service_account_name: Some(t.child_name(API_IDENTITY)),
        // The token submits workflows here; without local workflows there is nothing to mount.
        automount_service_account_token: Some(super::workflows::LocalWorkflows::of(t).any()),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(t, t.child_name(API), API, Some(version)),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns the replica count: leave the field out of our apply.
            replicas: s.autoscaling.is_none().then_some(s.replicas),
            selector: label_selector(t, API),
            strategy: Some(zero_downtime()),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(t, API, Some(version), spec, secrets_annotation(t), &s.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// A worker Deployment (`python3 worker.py <queue>`).
pub fn worker_deployment(t: &ValidatedTator, version: &str, component: &str) -> Deployment {
    let (settings, queue) = if component == DB_WORKER {
        (&t.spec.workers.db, "db_jobs")
    } else {
        (&t.spec.workers.image, "image_jobs")
    };
    let mut c = container(
        component,
        tator_image(t, "tator_online", version, &settings.pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    // As Tator's compose.yaml runs it, from the image's WORKDIR.
    c.command = Some(vec![
        "python3".into(),
        "/tator_online/main/worker.py".into(),
        queue.into(),
    ]);
    c.working_dir = Some("/tator_online".into());
    c.env = Some(tator_env(t, version));
    let (volumes, mounts) = tator_volumes(t);
    c.volume_mounts = Some(mounts);
    c.resources = Some(resources_or(
        &settings.pod,
        requirements("500m", "1Gi", "4Gi"),
    ));
    let spec = PodSpec {
        containers: vec![c],
        volumes: Some(volumes),
        security_context: Some(pod_security(TATOR_UID)),
        termination_grace_period_seconds: Some(60),
        service_account_name: Some(t.child_name(API_IDENTITY)),
        automount_service_account_token: Some(super::workflows::LocalWorkflows::of(t).any()),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(t, t.child_name(component), component, Some(version)),
        spec: Some(DeploymentSpec {
            // Autoscaled: the replicas are the scaler's (KEDA's or the operator's).
            replicas: (!super::queue_workers::autoscaled(t, component))
                .then_some(settings.replicas),
            selector: label_selector(t, component),
            template: pod_template(
                t,
                component,
                Some(version),
                spec,
                secrets_annotation(t),
                &settings.pod,
            ),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            ..Default::default()
        }),
        status: None,
    }
}

/// The UI Deployment.
pub fn ui_deployment(t: &ValidatedTator, version: &str) -> Deployment {
    let s = &t.spec.ui;
    let mut c = container(
        UI,
        tator_image(t, "tator_ui", version, &s.pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    c.command = Some(vec!["npm".into()]);
    // As Tator's compose.yaml runs it. The server binds localhost unless told otherwise, and
    // the static path must be the one the REST API's pages link to: /static/<Git.sha>, the tag.
    c.args = Some(vec![
        "run".into(),
        "serve".into(),
        "--".into(),
        "--backend=".into(),
        "--host=0.0.0.0".into(),
        format!("--max_age={}", s.static_max_age_seconds),
        format!("--static_path=/static/{}", t.image_tag(version)),
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: UI_PORT,
        ..Default::default()
    }]);
    c.readiness_probe = Some(tcp_probe(UI_PORT, 3, 5, 3));
    c.liveness_probe = Some(tcp_probe(UI_PORT, 30, 20, 6));
    c.resources = Some(resources_or(&s.pod, requirements("250m", "512Mi", "2Gi")));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        security_context: Some(pod_security(TATOR_UID)),
        topology_spread_constraints: Some(spread(t, UI)),
        ..Default::default()
    };
    Deployment {
        metadata: child_meta(t, t.child_name(UI), UI, Some(version)),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            selector: label_selector(t, UI),
            strategy: Some(zero_downtime()),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(t, UI, Some(version), spec, BTreeMap::new(), &s.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// The API's HorizontalPodAutoscaler, when autoscaling is on.
pub fn api_hpa(t: &ValidatedTator) -> Option<HorizontalPodAutoscaler> {
    let a = t.spec.api.autoscaling.as_ref()?;
    Some(HorizontalPodAutoscaler {
        metadata: child_meta(t, t.child_name(API), API, None),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: t.child_name(API),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(a.target_cpu_utilization_percentage),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{builders::names::IMAGE_WORKER, test_fixtures::minimal, validate::validate};

    const SHA: &str = "dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a";

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
    fn gunicorn_runs_threaded_workers_as_tator_does() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let c = main_container(&api_deployment(&t, "1.5.0"));
        let args = c.args.unwrap();
        assert!(
            args.contains(&"--worker-class=gthread".to_string()),
            "{args:?}"
        );
        assert!(args.contains(&"--threads=10".to_string()), "{args:?}");
        assert!(!args.iter().any(|a| a.contains("gevent")), "{args:?}");
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("--workers"), "3");
        assert_eq!(after("--timeout"), "600");
        assert_eq!(after("-b"), ":8000");
        assert_eq!(args.last().map(String::as_str), Some("tator_online.wsgi"));
        assert_eq!(
            c.image.as_deref(),
            Some(&*format!("cvisionai/tator_online:{SHA}"))
        );
    }

    #[test]
    fn ui_listens_on_every_address_and_serves_static_under_the_release_commit() {
        let mut td = minimal("1.5.0");
        td.spec.ui.static_max_age_seconds = 600;
        let t = validate(&td).unwrap();
        let c = main_container(&ui_deployment(&t, "1.5.0"));
        assert_eq!(
            c.args.unwrap(),
            [
                "run",
                "serve",
                "--",
                "--backend=",
                "--host=0.0.0.0",
                "--max_age=600",
                &format!("--static_path=/static/{SHA}"),
            ]
        );
        assert_eq!(
            c.image.as_deref(),
            Some(&*format!("cvisionai/tator_ui:{SHA}"))
        );

        // A release the catalog does not know: spec.image.tag is the tag and the static path.
        let mut td = minimal("1.6.0");
        td.spec.image.tag = Some("0123abc".into());
        let t = validate(&td).unwrap();
        let c = main_container(&ui_deployment(&t, "1.6.0"));
        assert!(
            c.args
                .unwrap()
                .contains(&"--static_path=/static/0123abc".to_string())
        );
        assert_eq!(c.image.as_deref(), Some("cvisionai/tator_ui:0123abc"));
    }

    #[test]
    fn workers_run_worker_py_from_the_image_workdir() {
        let t = validate(&minimal("1.5.0")).unwrap();
        for (component, queue) in [(DB_WORKER, "db_jobs"), (IMAGE_WORKER, "image_jobs")] {
            let c = main_container(&worker_deployment(&t, "1.5.0", component));
            assert_eq!(
                c.command.unwrap(),
                ["python3", "/tator_online/main/worker.py", queue]
            );
            assert_eq!(c.working_dir.as_deref(), Some("/tator_online"));
        }
    }

    #[test]
    fn tator_env_has_what_1_5_reads_and_nothing_it_does_not() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let c = main_container(&api_deployment(&t, "1.5.0"));
        let env = c.env.unwrap();
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(value("PGPORT").as_deref(), Some("5432"));
        assert_eq!(value("POSTGRES_PORT").as_deref(), Some("5432"));
        // Always set (Tator splits it unconditionally); without any class known, empty.
        assert_eq!(value("WORKFLOW_STORAGE_CLASSES").as_deref(), Some(""));
        for gone in [
            "ELASTICSEARCH_HOST",
            "TRANSCODER_MAX_RAM_DISK_SIZE",
            "TRANSCODER_CPU_LIMIT",
            "TRANSCODER_MEMORY_LIMIT",
            "TRANSCODER_CODEC_NODE_SELECTORS",
            "TATOR_DEBUG",
            "TATOR_USE_MIN_JS",
            "DOCKER_REGISTRY",
            "POSTGRES_USERNAME",
            "POSTGRES_DB",
            "POD_GC_STRATEGY",
            "SCRATCH_STORAGE_CLASS",
            "SYSTEM_IMAGES_REGISTRY",
        ] {
            assert!(env.iter().all(|e| e.name != gone), "{gone} is set");
        }

        // A managed database on another port; the storage classes from the spec, then the
        // scratch class, then the cluster default.
        let mut td = minimal("1.5.0");
        td.spec.postgres = serde_json::from_value(serde_json::json!({"external": {
            "host": "db.example.com", "port": 6543, "credentialsSecret": {"name": "pg"}}}))
        .unwrap();
        td.spec.workflows.transcode.scratch_storage_class = Some("scratch".into());
        let mut t = validate(&td).unwrap();
        t.cluster.default_storage_class = Some("standard".into());
        let env = main_container(&api_deployment(&t, "1.5.0")).env.unwrap();
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(value("PGPORT").as_deref(), Some("6543"));
        assert_eq!(
            value("WORKFLOW_STORAGE_CLASSES").as_deref(),
            Some("scratch")
        );
        t.spec.workflows.transcode.scratch_storage_class = None;
        assert_eq!(
            super::super::tator_env::workflow_storage_classes(&t),
            "standard"
        );
        t.spec.workflows.storage_classes = vec!["fast".into(), "slow".into()];
        assert_eq!(
            super::super::tator_env::workflow_storage_classes(&t),
            "fast,slow"
        );
    }
}
