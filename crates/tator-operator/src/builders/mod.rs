//! Builders: every desired child from pure functions of the validated spec and the rollout.
//!
//! Imports form a DAG. Leaves import no component: `names`, `buckets`, `common` (nothing),
//! `features` (names), `children` (common), `tator_env` (names, buckets, common, features).
//! Components import leaves and only these components: nginx→logging, monitoring, objects;
//! web→monitoring, queue_workers, workflows; data→monitoring, objects; maintenance,
//! migrations→data; transcodes→queue_workers; objects→storage; remote→workflows. This file
//! assembles them all.

pub mod buckets;
pub mod children;
pub mod common;
pub mod data;
pub mod features;
pub mod logging;
pub mod maintenance;
pub mod migrations;
pub mod monitoring;
pub mod names;
pub mod nginx;
pub mod objects;
pub mod queue_workers;
pub mod remote;
pub mod storage;
pub mod tator_env;
pub mod tls;
pub mod transcodes;
pub mod web;
pub mod workflows;

use crate::validate::ValidatedTator;
use children::Children;
use migrations::Rollout;

/// Builds the data tier: in-cluster PostgreSQL (and pgbouncer), Redis and Elasticsearch. It is
/// applied first, and the web tier waits for it.
pub fn build_data(t: &ValidatedTator) -> Children {
    let mut d = Children::default();
    let (sts, deployments, services) = data::postgres(t, &data::server_version(t));
    d.stateful_sets.extend(sts);
    d.deployments.extend(deployments);
    d.services.extend(services);
    let (deployments, services) = data::redis(t);
    d.deployments.extend(deployments);
    d.services.extend(services);
    let (sts, services) = data::elasticsearch(t);
    d.stateful_sets.extend(sts);
    d.services.extend(services);
    let (sts, services) = objects::store(t);
    d.stateful_sets.extend(sts);
    d.services.extend(services);
    d.jobs.extend(objects::bucket_job(t));
    stop_if_stopped(t, &mut d);
    d.stamp_applied_hashes();
    d
}

/// The Secrets whose values the operator composes for object storage, from the keys and
/// credentials the controller read (see [`objects::composed_secrets`]); applied with the data
/// tier. A bucket whose settings cannot be composed yields the problem instead, and the Secrets
/// already there stay as they are.
pub fn build_storage_secrets(
    t: &ValidatedTator,
    read: &objects::StorageSecrets,
) -> Result<Children, objects::ConfigProblem> {
    let mut d = Children {
        secrets: objects::composed_secrets(t, read)?,
        ..Children::default()
    };
    d.stamp_applied_hashes();
    Ok(d)
}

/// With `spec.stopped`, every workload asks for zero pods and nothing scales it back up.
fn stop_if_stopped(t: &ValidatedTator, d: &mut Children) {
    if !t.spec.stopped {
        return;
    }
    for spec in d.deployments.iter_mut().filter_map(|x| x.spec.as_mut()) {
        spec.replicas = Some(0);
    }
    for spec in d.stateful_sets.iter_mut().filter_map(|x| x.spec.as_mut()) {
        spec.replicas = Some(0);
    }
    d.autoscalers.clear();
    d.scaled_objects.clear();
    // Jobs would start pods: migrations wait for the start, buckets exist already.
    d.jobs.clear();
    // Maintenance is kept, suspended: no new Jobs until Tator starts again.
    for spec in d.cron_jobs.iter_mut().filter_map(|x| x.spec.as_mut()) {
        spec.suspend = Some(true);
    }
}

/// Builds the web tier: the API, workers, UI, NGINX, the shared volume, the migrations Job and
/// the maintenance CronJobs.
pub fn build(t: &ValidatedTator, rollout: &Rollout) -> Children {
    let mut d = Children::default();
    d.claims.extend(storage::shared_claim(t));

    let conf = nginx::render_conf(&nginx::NginxConfig::from_spec(t));
    d.config_maps.push(nginx::config_map(t, &conf));
    d.certificates.extend(tls::certificate(t));

    d.services.push(common::cluster_service(
        t,
        names::API,
        "http",
        names::API_PORT,
    ));
    d.services.push(common::cluster_service(
        t,
        names::UI,
        "http",
        names::UI_PORT,
    ));
    d.services.push(nginx::service(t));

    d.jobs.extend(rollout.migration_job.clone());

    // Workflow identities and roles; the templates once Argo is there and a release serves.
    let (sas, roles, bindings) = workflows::local_rbac(t);
    d.service_accounts.extend(sas);
    d.roles.extend(roles);
    d.role_bindings.extend(bindings);
    if let Some(v) = rollout.app_version.as_deref()
        && t.cluster.argo
        && workflows::LocalWorkflows::of(t).transcode
        && let Ok(templates) = workflows::templates(t, v, &workflows::Target::local(t))
    {
        d.workflow_templates.extend(templates);
    }

    // Tator's own processes run only once a release is migrated.
    if let Some(v) = rollout.app_version.as_deref() {
        d.deployments.push(web::api_deployment(t, v));
        for w in [names::DB_WORKER, names::IMAGE_WORKER] {
            d.deployments.push(web::worker_deployment(t, v, w));
        }
        d.deployments.push(web::ui_deployment(t, v));
        d.cron_jobs.extend(maintenance::cron_jobs(t, v));
    }
    d.deployments.push(nginx::deployment(t, &conf));

    // Tator's transcode path (service, queue, workers), once a release serves.
    let tc = transcodes::build(t, rollout.app_version.as_deref());
    d.deployments.extend(tc.deployments);
    d.services.extend(tc.services);
    d.network_policies.extend(tc.network_policies);
    d.disruption_budgets.extend(tc.disruption_budgets);
    if rollout.app_version.is_some() {
        d.scaled_objects.extend(queue_workers::scaled_objects(t));
    }

    d.autoscalers.extend(web::api_hpa(t));
    d.disruption_budgets.push(common::pdb(t, names::API));
    d.disruption_budgets.push(common::pdb(t, names::NGINX));
    // The administration stacks, each behind its switch.
    d.extend(logging::build(t));
    d.extend(monitoring::build(t));
    stop_if_stopped(t, &mut d);
    d.stamp_applied_hashes();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};
    use migrations::{JobState, decide};

    fn steady(td: &tator_api::TatorDeployment) -> (ValidatedTator, Rollout) {
        let t = validate(td).unwrap();
        let r = decide(
            crate::validate::VersionPlan::Steady(t.target_version.clone()),
            None,
            JobState::Missing,
            true,
        );
        (t, r)
    }

    /// With the longest name the CRD allows, every example builds children whose names and
    /// labels the API server and the controllers accept: names and label values of at most 63
    /// characters, a StatefulSet's `controller-revision-hash` label (`<name>-<10 characters>`)
    /// too, CronJobs of at most 52, Services as DNS-1035 labels.
    #[test]
    fn the_longest_allowed_name_gives_valid_children() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut td: tator_api::TatorDeployment = serde_yaml::from_str(&text).unwrap();
            let mut meta = minimal("1.5.0").metadata;
            meta.name = Some("a".repeat(crate::validate::MAX_NAME_LEN));
            td.metadata = meta;
            let (t, rollout) = steady(&td);
            let mut web = build(&t, &rollout);
            web.jobs.push(migrations::job(&t, "1.5.0"));
            let data = build_data(&t);
            let mut labels: Vec<(String, String)> = Vec::new();
            let mut names: Vec<(String, usize)> = Vec::new();
            let mut meta = |m: &kube::api::ObjectMeta, max: usize| {
                names.push((m.name.clone().unwrap_or_default(), max));
                for (k, v) in m.labels.iter().flatten() {
                    labels.push((k.clone(), v.clone()));
                }
            };
            for c in [&web, &data] {
                for d in &c.deployments {
                    meta(&d.metadata, 63);
                }
                for s in &c.stateful_sets {
                    meta(&s.metadata, 63 - 11);
                }
                for s in &c.services {
                    meta(&s.metadata, 63);
                }
                for j in &c.jobs {
                    meta(&j.metadata, 63);
                }
                for cj in &c.cron_jobs {
                    meta(&cj.metadata, maintenance::MAX_CRONJOB_NAME);
                }
                for o in c.config_maps.iter().map(|o| &o.metadata) {
                    meta(o, 253);
                }
            }
            for (name, max) in &names {
                assert!(name.len() <= *max, "{name}: {} > {max}", name.len());
            }
            for (k, v) in &labels {
                assert!(v.len() <= 63, "label {k}={v}: {} characters", v.len());
            }
            for s in web.services.iter().chain(&data.services) {
                let n = s.metadata.name.clone().unwrap_or_default();
                assert!(
                    n.starts_with(|c: char| c.is_ascii_lowercase())
                        && n.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                    "Service name {n}"
                );
            }
            checked += 1;
        }
        assert!(checked >= 5, "{checked} examples");
    }

    /// Only Tator's API and workers may call the Kubernetes API (algorithm workflows): every
    /// other pod of the minimal spec (UI, NGINX, data tier, object store, migrations, crons) gets
    /// no ServiceAccount token.
    #[test]
    fn pods_that_never_call_the_api_get_no_token() {
        let (t, rollout) = steady(&minimal("1.5.0"));
        let mut pods: Vec<(String, Option<bool>)> = Vec::new();
        let mut web = build(&t, &rollout);
        web.jobs.push(migrations::job(&t, "1.5.0"));
        for c in [web, build_data(&t)] {
            let named = |m: &kube::api::ObjectMeta,
                         p: Option<&k8s_openapi::api::core::v1::PodSpec>| {
                (
                    m.name.clone().unwrap_or_default(),
                    p.and_then(|p| p.automount_service_account_token),
                )
            };
            for d in &c.deployments {
                pods.push(named(
                    &d.metadata,
                    d.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
                ));
            }
            for s in &c.stateful_sets {
                pods.push(named(
                    &s.metadata,
                    s.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
                ));
            }
            for j in &c.jobs {
                pods.push(named(
                    &j.metadata,
                    j.spec.as_ref().and_then(|s| s.template.spec.as_ref()),
                ));
            }
            for cj in &c.cron_jobs {
                let pod = cj
                    .spec
                    .as_ref()
                    .and_then(|s| s.job_template.spec.as_ref())
                    .and_then(|s| s.template.spec.as_ref());
                pods.push(named(&cj.metadata, pod));
            }
        }
        assert!(pods.iter().any(|(n, _)| n.contains("migrat")), "{pods:?}");
        assert!(
            pods.iter().any(|(n, _)| n.ends_with("-postgres")),
            "{pods:?}"
        );
        for (name, automount) in &pods {
            let calls_api =
                ["tator-api", "tator-db-worker", "tator-image-worker"].contains(&name.as_str());
            if !calls_api {
                assert_eq!(*automount, Some(false), "{name} mounts a token");
            }
        }
    }

    #[test]
    fn minimal_spec_builds_the_web_tier() {
        let (t, r) = steady(&minimal("1.5.0"));
        let d = build(&t, &r);
        let names: Vec<String> = d
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "tator-api",
                "tator-db-worker",
                "tator-image-worker",
                "tator-ui",
                "tator-nginx",
                "tator-transcode-queue",
                "tator-transcode",
                "tator-transcode-worker"
            ]
        );
        assert_eq!(d.services.len(), 5);
        assert_eq!(d.network_policies.len(), 1);
        assert_eq!(d.claims.len(), 1);
        assert!(d.autoscalers.is_empty());
        let api = &d.deployments[0];
        let pod = api.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("cvisionai/tator_online:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        let env = pod.containers[0].env.as_ref().unwrap();
        let secret = env.iter().find(|e| e.name == "DJANGO_SECRET_KEY").unwrap();
        assert!(
            secret.value.is_none() && secret.value_from.is_some(),
            "secrets only by reference"
        );
        for obj in &d.deployments {
            let refs = obj.metadata.owner_references.as_ref().unwrap();
            assert_eq!(refs[0].controller, Some(true));
            assert_eq!(
                obj.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
                "tator-operator"
            );
        }
    }

    #[test]
    fn a_rotated_secret_changes_the_pod_templates_that_read_it() {
        let (mut t, r) = steady(&minimal("1.5.0"));
        let plain = build(&t, &r);
        t.secrets_hash = Some("abc".into());
        let with = build(&t, &r);
        let ann = |d: &Children, i: usize| {
            d.deployments[i]
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .clone()
                .unwrap_or_default()
        };
        assert!(!ann(&plain, 0).contains_key(common::SECRETS_HASH_ANNOTATION));
        assert_eq!(ann(&with, 0)[common::SECRETS_HASH_ANNOTATION], "abc");
        assert_eq!(ann(&with, 1)[common::SECRETS_HASH_ANNOTATION], "abc");
        // The migrations Job does not rerun because a password changed.
        let a = migrations::job(&t, "1.5.0");
        t.secrets_hash = Some("def".into());
        assert_eq!(a.metadata.name, migrations::job(&t, "1.5.0").metadata.name);
    }

    #[test]
    fn autoscaling_leaves_replicas_to_the_hpa() {
        let mut td = minimal("1.5.0");
        td.spec.api.autoscaling = Some(tator_api::Autoscaling {
            min_replicas: 2,
            max_replicas: 5,
            target_cpu_utilization_percentage: 60,
        });
        let (t, r) = steady(&td);
        let d = build(&t, &r);
        assert_eq!(d.autoscalers.len(), 1);
        assert_eq!(d.deployments[0].spec.as_ref().unwrap().replicas, None);
    }

    #[test]
    fn no_tator_processes_before_the_first_migration() {
        let td = minimal("1.5.0");
        let t = validate(&td).unwrap();
        let job = migrations::job(&t, "1.5.0");
        let r = decide(t.plan(), Some(job), JobState::Running, true);
        let d = build(&t, &r);
        let names: Vec<String> = d
            .deployments
            .iter()
            .map(|d| d.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["tator-nginx"]);
        assert_eq!(d.jobs.len(), 1);
    }

    #[test]
    fn overrides_reach_the_pod_template() {
        let mut td = minimal("1.5.0");
        td.spec.migrations.pod.pod_overrides = Some(serde_json::json!({
            "metadata": {"labels": {"pod-container-running-failed.stage.kwok.x-k8s.io": "true"}}
        }));
        let t = validate(&td).unwrap();
        let job = migrations::job(&t, "1.5.0");
        let labels = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(
            labels["pod-container-running-failed.stage.kwok.x-k8s.io"],
            "true"
        );
        assert_eq!(labels["app.kubernetes.io/component"], "migrations");
    }
}
