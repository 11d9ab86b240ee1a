//! Workflows and job clusters on two real control planes: this test binary's shared cluster is
//! the main cluster, and a second cluster started here is the job cluster.
//!
//! - Main cluster: no Argo CRDs at first (WorkflowsReady=False, ArgoNotInstalled, Tator still
//!   Ready), then Argo's full CRDs from ../shared/crds/argo-workflows: the WorkflowTemplates are
//!   accepted by the full schema and nothing in them is pruned by it.
//! - Job cluster: no Argo CRDs (TemplatesReady=False, ArgoNotInstalled, everything else
//!   applied), then Argo's minimal CRDs (schemas that accept anything, as Argo ships them in
//!   manifests/base/crds/minimal): only the operator's own checks validate the templates.
//! - Tator's REST API cannot run here: JobCluster registration is tested against a small
//!   stand-in for `/rest/JobClusters/<organization>` and `/rest/JobCluster/<id>` that follows
//!   the shapes documented for Tator (list; POST requiring name, host, port, token and cert and
//!   answering `{"message", "id"}`; PATCH and DELETE answering `{"message"}`; `Authorization:
//!   Token <token>`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Secret, ServiceAccount},
        rbac::v1::Role,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
};
use serde_json::{Value, json};
use tator_api::TatorDeployment;
use tator_operator::builders::names::OWNER_UID_LABEL;
use tator_testbed::support::{
    JsonRequest, TestCluster, install_crd_objects, install_crds, namespace, read_crds, serve_json,
    shared_dir, wait_for,
};

const TOKEN: &str = "canary-Token-7e5d4c3b";

fn wt_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTemplate"),
        "workflowtemplates",
    )
}

fn argo_crds() -> std::path::PathBuf {
    shared_dir().join("crds/argo-workflows")
}

/// Argo's minimal CRDs: the full ones with every schema replaced by one that keeps anything.
fn minimal_argo_crds() -> Vec<CustomResourceDefinition> {
    let mut crds = read_crds(&argo_crds()).unwrap();
    for crd in &mut crds {
        for v in &mut crd.spec.versions {
            v.schema = Some(
                serde_json::from_value(json!({"openAPIV3Schema": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true}}))
                .unwrap(),
            );
        }
    }
    crds
}

/// The JobClusters stand-in's state: registrations by id, and every call.
#[derive(Clone, Default)]
struct JobClustersStandIn {
    clusters: Arc<Mutex<BTreeMap<i64, Value>>>,
    calls: Arc<Mutex<Vec<(String, String)>>>,
}

impl JobClustersStandIn {
    async fn start(&self) -> u16 {
        let me = self.clone();
        serve_json(move |req: JsonRequest| {
            me.calls
                .lock()
                .unwrap()
                .push((req.method.clone(), req.path.clone()));
            if req.authorization.as_deref() != Some(&format!("Token {TOKEN}")) {
                return (
                    "403 Forbidden".into(),
                    json!({"message": "Authentication credentials were not provided."}),
                );
            }
            let (s, v) = me.route(&req);
            (s.to_string(), v)
        })
        .await
    }

    fn route(&self, req: &JsonRequest) -> (&'static str, Value) {
        let mut clusters = self.clusters.lock().unwrap();
        if let Some(org) = req.path.strip_prefix("/rest/JobClusters/") {
            let org: i64 = org.parse().unwrap_or(0);
            return match req.method.as_str() {
                "GET" => (
                    "200 OK",
                    Value::Array(
                        clusters
                            .values()
                            .filter(|c| c["organization"] == org)
                            .cloned()
                            .collect(),
                    ),
                ),
                "POST" => {
                    for f in ["name", "host", "port", "token", "cert"] {
                        if req.body.get(f).is_none() {
                            return (
                                "400 Bad Request",
                                json!({"message": format!("Missing required field {f}")}),
                            );
                        }
                    }
                    let id = clusters.keys().max().copied().unwrap_or(0) + 1;
                    let mut c = req.body.clone();
                    c["id"] = id.into();
                    c["organization"] = org.into();
                    clusters.insert(id, c);
                    (
                        "201 Created",
                        json!({"message": "Job cluster created!", "id": id}),
                    )
                }
                _ => ("405 Method Not Allowed", json!({"message": "no"})),
            };
        }
        if let Some(id) = req.path.strip_prefix("/rest/JobCluster/") {
            let id: i64 = id.parse().unwrap_or(0);
            let Some(c) = clusters.get_mut(&id) else {
                return ("404 Not Found", json!({"message": "Not found."}));
            };
            return match req.method.as_str() {
                "GET" => ("200 OK", c.clone()),
                "PATCH" => {
                    for (k, v) in req.body.as_object().cloned().unwrap_or_default() {
                        c[k] = v;
                    }
                    (
                        "200 OK",
                        json!({"message": format!("Job cluster {id} updated successfully!")}),
                    )
                }
                "DELETE" => {
                    clusters.remove(&id);
                    (
                        "200 OK",
                        json!({"message": format!("Job cluster {id} deleted successfully!")}),
                    )
                }
                _ => ("405 Method Not Allowed", json!({"message": "no"})),
            };
        }
        ("404 Not Found", json!({"message": "Not found."}))
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m != "GET")
            .cloned()
            .collect()
    }
}

fn cond(td: &TatorDeployment, t: &str) -> Option<(String, String, String)> {
    td.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

fn cluster_cond(td: &TatorDeployment, cluster: &str, t: &str) -> Option<(String, String, String)> {
    td.status.as_ref().and_then(|s| {
        s.job_clusters
            .iter()
            .find(|c| c.name == cluster)?
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

async fn wait_td<F>(
    tds: &Api<TatorDeployment>,
    name: &str,
    what: &str,
    secs: u64,
    f: F,
) -> TatorDeployment
where
    F: Fn(&TatorDeployment) -> bool,
{
    wait_for(what, Duration::from_secs(secs), || async {
        let td = tds.get(name).await.map_err(|e| e.to_string())?;
        if f(&td) {
            Ok(td)
        } else {
            Err(format!(
                "{:?}",
                td.status.as_ref().map(|s| (&s.conditions, &s.job_clusters))
            ))
        }
    })
    .await
    .unwrap()
}

fn is(c: Option<(String, String, String)>, status: &str, reason: &str) -> bool {
    c.is_some_and(|(s, r, _)| s == status && r == reason)
}

/// `desired` is contained in `live` (objects by key, arrays element-wise).
fn contained(desired: &Value, live: &Value, path: &str) -> Result<(), String> {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => {
            for (k, v) in d {
                let lv = l
                    .get(k)
                    .ok_or(format!("{path}.{k} is missing from the live object"))?;
                contained(v, lv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(l)) => {
            if d.len() != l.len() {
                return Err(format!(
                    "{path}: {} items desired, {} live",
                    d.len(),
                    l.len()
                ));
            }
            for (i, (a, b)) in d.iter().zip(l).enumerate() {
                contained(a, b, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: desired {a}, live {b}")),
    }
}

async fn put_secret(secrets: &Api<Secret>, name: &str, data: Value) {
    let s: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "annotations": common::consent("*")}, "stringData": data}))
    .unwrap();
    secrets
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&s))
        .await
        .unwrap();
}

/// Time until a spec change (UI replicas) shows in its Deployment: the main cluster's reconcile
/// latency as a user sees it.
async fn change_latency(
    tds: &Api<TatorDeployment>,
    deploys: &Api<Deployment>,
    replicas: i32,
) -> Duration {
    let start = Instant::now();
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ui": {"replicas": replicas}}})),
    )
    .await
    .unwrap();
    wait_for(
        "the UI replicas to follow the spec",
        Duration::from_secs(60),
        || async {
            let d = deploys.get("tator-ui").await.map_err(|e| e.to_string())?;
            match d.spec.and_then(|s| s.replicas) {
                Some(r) if r == replicas => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    start.elapsed()
}

/// The journey below is one long future; unoptimized, polling it takes more than the 2 MiB
/// stack of a test thread. It runs as a task on workers with a larger stack.
#[test]
fn workflow_templates_and_a_job_cluster() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(16 << 20)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::spawn(workflow_templates_and_a_job_cluster_journey())
            .await
            .unwrap();
    });
}

async fn workflow_templates_and_a_job_cluster_journey() {
    // The job cluster starts while the main cluster is set up.
    let job_start = tokio::task::spawn_blocking(|| TestCluster::start("job"));
    let client = common::cluster().await;
    let ns = namespace(&client, "op-workflows", true).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    put_secret(&secrets, "tator-token", json!({"token": TOKEN})).await;
    let standin = JobClustersStandIn::default();
    let api_port = standin.start().await;
    let (ctx, task) = common::start_controller(&client, &ns);
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com",
                 "apiAccess": {"tokenSecret": {"name": "tator-token", "key": "token"},
                               "url": format!("http://127.0.0.1:{api_port}")}}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();

    // 1. No Argo: Tator is Ready, WorkflowsReady says why workflows cannot run.
    let td = wait_td(&tds, "tator", "Ready with ArgoNotInstalled", 180, |td| {
        is(cond(td, "Ready"), "True", "AllComponentsAvailable")
            && is(cond(td, "WorkflowsReady"), "False", "ArgoNotInstalled")
    })
    .await;
    let uid = td.uid().unwrap();
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
    let exec = roles.get("tator-workflow").await.unwrap();
    let rules = exec.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref().unwrap(),
        ["workflowtaskresults"]
    );
    assert_eq!(rules[0].verbs, ["create", "patch"]);
    let submit = roles.get("tator-workflow-submit").await.unwrap();
    assert_eq!(
        submit.rules.unwrap()[0].verbs,
        ["create", "get", "list", "delete"]
    );
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let api = deploys.get("tator-api").await.unwrap();
    let pod = api.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("tator-api"));
    assert_eq!(pod.automount_service_account_token, Some(true));

    // 2. Argo's full CRDs: the templates are applied and the full schema keeps all of them.
    install_crds(&client, &argo_crds()).await.unwrap();
    wait_td(
        &tds,
        "tator",
        "WorkflowsReady after Argo is installed",
        120,
        |td| is(cond(td, "WorkflowsReady"), "True", "TemplatesApplied"),
    )
    .await;
    let wts: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &wt_resource());
    let rendered = {
        let t = tator_operator::validate::validate(&tds.get("tator").await.unwrap()).unwrap();
        tator_operator::builders::workflows::templates(
            &t,
            "1.5.0",
            &tator_operator::builders::workflows::Target::local(&t),
        )
        .unwrap()
    };
    for want in &rendered {
        let live = wts.get(&want.name_any()).await.unwrap();
        let live = serde_json::to_value(&live).unwrap();
        let desired = serde_json::to_value(want).unwrap();
        contained(&desired["spec"], &live["spec"], "spec").unwrap_or_else(|e| {
            panic!(
                "{}: the full Argo schema changed the template: {e}",
                want.name_any()
            )
        });
    }

    // 3. A job cluster without Argo: reachable, roles and token there, templates wait for Argo.
    let mut job = job_start
        .await
        .unwrap()
        .expect("the job cluster must start");
    let job_client = job.client().await.unwrap();
    let kubeconfig = std::fs::read_to_string(&job.kubeconfig).unwrap();
    put_secret(
        &secrets,
        "job-kubeconfig",
        json!({"kubeconfig": kubeconfig}),
    )
    .await;
    // What an earlier operator version left: its REMOTE_TRANSCODE_* Secret, owned by the
    // installation.
    let legacy: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "tator-remote-transcode", "ownerReferences": [{
            "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment", "name": "tator",
            "uid": uid, "controller": true}]},
        "stringData": {"REMOTE_TRANSCODE_HOST": "127.0.0.1"}}))
    .unwrap();
    secrets
        .create(&PostParams::default(), &legacy)
        .await
        .unwrap();
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobClusters": [{
            "name": "gpu", "kubeconfigSecret": {"name": "job-kubeconfig"},
            "namespace": "tator-jobs", "runs": ["transcode", "algorithms"], "organization": 1}]}})),
    )
    .await
    .unwrap();
    let td = wait_td(&tds, "tator", "the job cluster without Argo", 90, |td| {
        is(cluster_cond(td, "gpu", "Reachable"), "True", "Connected")
            && is(
                cluster_cond(td, "gpu", "TemplatesReady"),
                "False",
                "ArgoNotInstalled",
            )
            && is(cluster_cond(td, "gpu", "Registered"), "True", "Registered")
    })
    .await;
    assert!(
        is(cond(&td, "JobCluster/gpu"), "False", "ArgoNotInstalled"),
        "{:?}",
        cond(&td, "JobCluster/gpu")
    );
    assert!(
        is(cond(&td, "Ready"), "True", "AllComponentsAvailable"),
        "a job cluster does not gate Ready"
    );
    assert!(
        td.finalizers()
            .contains(&"tator.io/job-clusters".to_string())
    );
    let entry = &td.status.as_ref().unwrap().job_clusters[0];
    assert_eq!(entry.registered_id, Some(1));
    let remote_ns: Api<Namespace> = Api::all(job_client.clone());
    let rns = remote_ns.get("tator-jobs").await.unwrap();
    assert_eq!(rns.labels()[OWNER_UID_LABEL], uid);
    assert_eq!(
        rns.labels()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let remote_sas: Api<ServiceAccount> = Api::namespaced(job_client.clone(), "tator-jobs");
    for sa in ["tator-workflow", "tator-submit"] {
        let s = remote_sas.get(sa).await.unwrap();
        assert!(s.owner_references().is_empty());
        assert_eq!(s.labels()[OWNER_UID_LABEL], uid);
    }
    let remote_secrets: Api<Secret> = Api::namespaced(job_client.clone(), "tator-jobs");
    assert!(
        remote_secrets
            .get_opt("tator-buckets")
            .await
            .unwrap()
            .is_some(),
        "bucket credentials copied"
    );
    // Registration: host, port, token and CA of the job cluster's API server.
    let registered = standin.clusters.lock().unwrap().get(&1).cloned().unwrap();
    let server = url_port(&kubeconfig);
    assert_eq!(registered["name"], "gpu");
    assert_eq!(registered["host"], "127.0.0.1");
    assert_eq!(registered["port"], server);
    assert!(
        registered["cert"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let token = registered["token"].as_str().unwrap().to_string();
    // Tator's token is in the job cluster and in Tator, never in status or Events.
    let status = serde_json::to_string(&tds.get("tator").await.unwrap().status).unwrap();
    assert!(!status.contains(&token), "the token is in status");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let events =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    assert!(!events.contains(&token), "the token is in an Event");
    // Tator 1.5.0 reads no REMOTE_TRANSCODE_* setting: the API gets none, and the Secret an
    // earlier operator version wrote for it is removed.
    wait_for(
        "the legacy REMOTE_TRANSCODE_* Secret to be removed",
        Duration::from_secs(60),
        || async {
            match secrets.get_opt("tator-remote-transcode").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let d = deploys.get("tator-api").await.unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let env = serde_json::to_string(&pod.containers[0].env).unwrap();
    assert!(!env.contains("REMOTE_TRANSCODE"), "{env}");
    assert!(
        !serde_json::to_string(&pod.volumes)
            .unwrap()
            .contains("remote-transcode")
    );
    // Transcodes run remotely now: the local templates are pruned.
    wait_for(
        "local templates to be pruned",
        Duration::from_secs(60),
        || async {
            let n = wts
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} left"))
            }
        },
    )
    .await
    .unwrap();

    // The token Tator got may submit, list and delete workflows there, and nothing else.
    let tator_client = token_client(&job, &token).await;
    let wf_api: Api<DynamicObject> = Api::namespaced_with(
        tator_client.clone(),
        "tator-jobs",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow"),
            "workflows",
        ),
    );
    match wf_api.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 404, "allowed but no CRD yet: {s:?}"),
        Ok(_) => panic!("workflows listed without their CRD"),
        Err(e) => panic!("{e}"),
    }
    let forbidden: Api<Secret> = Api::namespaced(tator_client.clone(), "tator-jobs");
    match forbidden.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("Tator's token may read Secrets: {other:?}"),
    }

    // 4. Argo's minimal CRDs in the job cluster: the templates go there, unchanged.
    install_crd_objects(&job_client, minimal_argo_crds())
        .await
        .unwrap();
    wait_td(&tds, "tator", "templates in the job cluster", 60, |td| {
        is(cluster_cond(td, "gpu", "TemplatesReady"), "True", "Applied")
            && is(cond(td, "JobCluster/gpu"), "True", "Ready")
    })
    .await;
    let remote_wts: Api<DynamicObject> =
        Api::namespaced_with(job_client.clone(), "tator-jobs", &wt_resource());
    let t = tator_operator::validate::validate(&tds.get("tator").await.unwrap()).unwrap();
    for want in tator_operator::builders::workflows::templates(
        &t,
        "1.5.0",
        &tator_operator::builders::workflows::Target::remote(&t, "tator-jobs"),
    )
    .unwrap()
    {
        let live = serde_json::to_value(remote_wts.get(&want.name_any()).await.unwrap()).unwrap();
        contained(
            &serde_json::to_value(&want).unwrap()["spec"],
            &live["spec"],
            "spec",
        )
        .unwrap();
    }
    // Tator's token lists workflows now that the CRD exists.
    wf_api.list(&ListParams::default()).await.unwrap();
    // A healthy job cluster is only read between applies: two checks (15 s apart) send no
    // server-side apply (only the operator applies there).
    let applies_before = applies(&job_client).await;
    assert!(applies_before > 0, "the operator's applies are counted");
    let checks = || ctx.job_clusters.checks(&uid, "gpu").unwrap_or(0);
    let first = checks();
    wait_for(
        "two more checks of the job cluster",
        Duration::from_secs(60),
        || async {
            let n = checks();
            (n >= first + 2)
                .then_some(())
                .ok_or(format!("{} checks since", n - first))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        applies(&job_client).await,
        applies_before,
        "writes to a healthy job cluster"
    );

    // 5. The job cluster's API server stops: only its conditions go False, within 60 s, and
    //    the main cluster's reconciles are as fast as before.
    let before = change_latency(&tds, &deploys, 2).await;
    let halted = Instant::now();
    tokio::task::block_in_place(|| job.halt(&["kube-apiserver"])).unwrap();
    wait_td(&tds, "tator", "JobCluster/gpu to go False", 60, |td| {
        is(cond(td, "JobCluster/gpu"), "False", "Unreachable")
            && is(cluster_cond(td, "gpu", "Reachable"), "False", "Unreachable")
    })
    .await;
    let noticed = halted.elapsed();
    assert!(
        noticed < Duration::from_secs(60),
        "noticed after {noticed:?}"
    );
    let during = change_latency(&tds, &deploys, 1).await;
    assert!(
        during <= before * 3 + Duration::from_secs(2),
        "reconcile latency {during:?} during the outage, {before:?} before"
    );
    // Tator stays Ready through the outage (once the UI change above has rolled out).
    wait_td(&tds, "tator", "Ready during the outage", 60, |td| {
        is(cond(td, "Ready"), "True", "AllComponentsAvailable")
            && is(cond(td, "JobCluster/gpu"), "False", "Unreachable")
    })
    .await;
    tokio::task::block_in_place(|| job.resume()).unwrap();
    let resumed = Instant::now();
    wait_td(&tds, "tator", "the job cluster to recover", 90, |td| {
        is(cond(td, "JobCluster/gpu"), "True", "Ready")
    })
    .await;
    eprintln!(
        "outage noticed after {noticed:?}; change latency {before:?} before, {during:?} during; recovered {:?} after restart",
        resumed.elapsed()
    );

    // 6. Kubeconfig rotation: a bad credential shows at the next check, a good one heals it;
    //    no restart, and Tator's registration is not re-sent (its token did not change).
    let bad = replace_user(&kubeconfig, json!({"token": "not-a-valid-token"}));
    put_secret(&secrets, "job-kubeconfig", json!({"kubeconfig": bad})).await;
    wait_td(&tds, "tator", "a rotated bad credential", 60, |td| {
        is(
            cluster_cond(td, "gpu", "Reachable"),
            "False",
            "Unauthorized",
        )
    })
    .await;
    put_secret(
        &secrets,
        "job-kubeconfig",
        json!({"kubeconfig": kubeconfig}),
    )
    .await;
    wait_td(&tds, "tator", "a rotated good credential", 60, |td| {
        is(cond(td, "JobCluster/gpu"), "True", "Ready")
    })
    .await;
    assert_eq!(
        standin.writes(),
        [("POST".to_string(), "/rest/JobClusters/1".to_string())],
        "registered once, never re-sent"
    );

    // 7. The cluster stops running transcodes: its templates are pruned by label, the local
    //    ones come back, and the backend's remote transcode Secret goes.
    let mut spec_clusters =
        serde_json::to_value(&tds.get("tator").await.unwrap().spec.job_clusters).unwrap();
    spec_clusters[0]["runs"] = json!(["algorithms"]);
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobClusters": spec_clusters}})),
    )
    .await
    .unwrap();
    wait_for(
        "remote templates pruned, local ones back",
        Duration::from_secs(90),
        || async {
            let remote = remote_wts
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            let local = wts
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if remote == 0 && local == 2 {
                Ok(())
            } else {
                Err(format!("remote {remote}, local {local}"))
            }
        },
    )
    .await
    .unwrap();

    // 8. Deletion removes what the operator made in the job cluster, then the TatorDeployment.
    tds.delete("tator", &DeleteParams::default()).await.unwrap();
    wait_for(
        "the TatorDeployment to go",
        Duration::from_secs(90),
        || async {
            match tds.get_opt("tator").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(td) => Err(format!("{:?}", td.status.map(|s| s.conditions))),
            }
        },
    )
    .await
    .unwrap();
    let left = remote_ns.get_opt("tator-jobs").await.unwrap();
    assert!(
        left.is_none() || left.unwrap().metadata.deletion_timestamp.is_some(),
        "the job namespace the operator created is deleted"
    );
    let labelled = remote_sas
        .list(&ListParams::default().labels(&format!("{OWNER_UID_LABEL}={uid}")))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    assert_eq!(labelled, 0);

    // 9. A job cluster that is down holds deletion; the annotation lets it go, and what was
    //    left behind is reported.
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator2"},
        "spec": {"version": "1.5.0", "domain": "tator2.example.com",
                 "jobClusters": [{"name": "cpu", "kubeconfigSecret": {"name": "job-kubeconfig"},
                                  "namespace": "tator2-jobs", "runs": ["transcode"]}]}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();
    wait_td(&tds, "tator2", "the second job cluster entry", 120, |td| {
        is(cluster_cond(td, "cpu", "Reachable"), "True", "Connected")
            && td
                .status
                .as_ref()
                .is_some_and(|s| !s.job_clusters[0].objects.is_empty())
    })
    .await;
    tokio::task::block_in_place(|| job.halt(&["kube-apiserver"])).unwrap();
    tds.delete("tator2", &DeleteParams::default())
        .await
        .unwrap();
    let td = wait_td(&tds, "tator2", "CleanupPending", 60, |td| {
        is(cond(td, "JobCluster/cpu"), "False", "CleanupPending")
    })
    .await;
    let msg = cond(&td, "JobCluster/cpu").unwrap().2;
    assert!(msg.contains("tator.io/force-delete"), "{msg}");
    assert!(msg.contains("ServiceAccount/tator2-workflow"), "{msg}");
    tds.patch(
        "tator2",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"tator.io/force-delete": "true"}}})),
    )
    .await
    .unwrap();
    wait_for("the forced deletion", Duration::from_secs(60), || async {
        match tds.get_opt("tator2").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await
    .unwrap();
    tokio::task::block_in_place(|| job.resume()).unwrap();
    let job_client = job.client().await.unwrap();
    let left: Api<ServiceAccount> = Api::namespaced(job_client, "tator2-jobs");
    assert!(
        left.get_opt("tator2-workflow").await.unwrap().is_some(),
        "forced: the objects stay behind, as the Event says"
    );

    // 10. (its own function: the test's future is large enough as it is)
    Box::pin(left_behind_when_the_kubeconfig_is_gone(
        &tds,
        &secrets,
        &kubeconfig,
    ))
    .await;

    task.abort();
}

/// A cluster removed from the spec whose kubeconfig Secret is gone cannot be cleaned up however
/// long the operator tries: it is reported as left behind and dropped from the status, instead of
/// CleanupFailed forever.
async fn left_behind_when_the_kubeconfig_is_gone(
    tds: &Api<TatorDeployment>,
    secrets: &Api<Secret>,
    kubeconfig: &str,
) {
    put_secret(
        secrets,
        "doomed-kubeconfig",
        json!({"kubeconfig": kubeconfig}),
    )
    .await;
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator3"},
        "spec": {"version": "1.5.0", "domain": "tator3.example.com",
                 "jobClusters": [{"name": "cpu", "kubeconfigSecret": {"name": "doomed-kubeconfig"},
                                  "namespace": "tator3-jobs", "runs": ["transcode"]}]}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();
    wait_td(tds, "tator3", "the job cluster connected", 120, |td| {
        is(cluster_cond(td, "cpu", "Reachable"), "True", "Connected")
    })
    .await;
    secrets
        .delete("doomed-kubeconfig", &DeleteParams::default())
        .await
        .unwrap();
    tds.patch(
        "tator3",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"jobClusters": null}})),
    )
    .await
    .unwrap();
    wait_td(tds, "tator3", "the entry dropped", 60, |td| {
        td.status
            .as_ref()
            .is_some_and(|s| s.job_clusters.is_empty())
            && cond(td, "JobCluster/cpu").is_none_or(|(_, r, _)| r == "LeftBehind")
    })
    .await;
}

/// Server-side applies the API server has served (its `apiserver_request_total`, verb APPLY).
async fn applies(client: &Client) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{") && l.contains("verb=\"APPLY\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The port of the server in a kubeconfig.
fn url_port(kubeconfig: &str) -> u16 {
    let v: Value = serde_yaml::from_str(kubeconfig).unwrap();
    let server = v["clusters"][0]["cluster"]["server"].as_str().unwrap();
    server
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// The kubeconfig with its user's credentials replaced.
fn replace_user(kubeconfig: &str, user: Value) -> String {
    let mut v: Value = serde_yaml::from_str(kubeconfig).unwrap();
    v["users"][0]["user"] = user;
    serde_yaml::to_string(&v).unwrap()
}

/// A client of the job cluster that authenticates with a bearer token.
async fn token_client(job: &TestCluster, token: &str) -> Client {
    let kubeconfig = std::fs::read_to_string(&job.kubeconfig).unwrap();
    let text = replace_user(&kubeconfig, json!({"token": token}));
    let kc = kube::config::Kubeconfig::from_yaml(&text).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}
