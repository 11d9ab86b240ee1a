//! Fault injection on real control planes (`make test-faults`; also part of `make test`).
//!
//! - `kill -9` of the operator process at random points of its reconciles, 20 times: after each
//!   restart it converges within 30 s, with exactly the children the spec asks for (no duplicate,
//!   no orphan). A canary credential (a bucket key checked against a real SeaweedFS) and the
//!   words ERROR and panicked never show up in its logs, Events or status.
//! - The API server (and etcd) restarted under a running controller: no controller restart, no
//!   request storm, no delete, and after the watches re-list no write for unchanged objects.
//! - Invalid manifests (one per rule), sent raw: each is rejected by the API server with a clear
//!   message, and rejected updates of a running installation delete nothing. Dangling Secret
//!   references are reported in status conditions, and delete nothing either.
//! - Failures stay with their object and reach its status: an object nested too deeply to decode
//!   gets `InvalidSpec` while the others keep reconciling; a quantity the API server would refuse
//!   is `InvalidSpec` before anything is applied; a change the API server refuses gives
//!   `Ready=False`, `ApplyFailed` naming the object, `Stalled`, and a first status for a new
//!   object; overrides beyond PodSecurity `restricted` or at the service account are
//!   `InvalidSpec`; nothing is deleted or replaced.
//! - Switching PostgreSQL from in-cluster to a managed server that is not ready (its Secret
//!   missing, nothing listening) with the plain new manifest: accepted, reported, and the
//!   running database, its Services and claim stay until the managed one answers.
//! - A Secret not meant for the installation (its consent annotation does not list it) is never
//!   used: `SecretNotAllowed`, nothing applied, the spec's host never contacted, until it
//!   consents.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::patch_spec;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{Deployment, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount},
        networking::v1::NetworkPolicy,
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
    },
};
use rand::Rng;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tator_api::TatorDeployment;
use tator_operator::{
    client::counted_client,
    controller::{self, Context, Settings},
    render,
    watched::Watched,
};
use tator_testbed::{
    services::Seaweed,
    support::{
        TestCluster, base64, install_crds, namespace, shared_kubeconfig, wait_for, workspace_root,
    },
};

const CANARY_KEY: &str = "FAULTCANARYKEY42";
const CANARY_SECRET: &str = "fault-canary-Secret-77d1";

fn operator_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tator-operator"))
}

/// The operator as a process of its own, logging to a file.
struct Operator {
    child: Child,
}

impl Operator {
    fn start(kubeconfig: &Path, ns: &str, log: &Path) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(operator_bin())
            .args(["run", "--namespace", ns, "--log-level", "debug"])
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        Self { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn names<K>(
    client: &Client,
    ns: &str,
    sel: &str,
    kind: &str,
    out: &mut BTreeSet<(String, String)>,
) where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    for o in api
        .list_metadata(&ListParams::default().labels(sel))
        .await
        .unwrap()
        .items
    {
        // Claims of StatefulSet volume templates carry the pods' labels but are the
        // StatefulSet controller's, not the operator's children.
        let template_claim = kind == "PersistentVolumeClaim" && o.name_any().starts_with("data-");
        if o.metadata.deletion_timestamp.is_none() && !template_claim {
            out.insert((kind.to_string(), o.name_any()));
        }
    }
}

/// `(kind, name)` of every live child of TatorDeployment `name`.
async fn children(client: &Client, ns: &str, name: &str) -> BTreeSet<(String, String)> {
    let sel = format!("app.kubernetes.io/instance={name}");
    let mut out = BTreeSet::new();
    names::<Deployment>(client, ns, &sel, "Deployment", &mut out).await;
    names::<StatefulSet>(client, ns, &sel, "StatefulSet", &mut out).await;
    names::<Service>(client, ns, &sel, "Service", &mut out).await;
    names::<ConfigMap>(client, ns, &sel, "ConfigMap", &mut out).await;
    names::<Job>(client, ns, &sel, "Job", &mut out).await;
    names::<CronJob>(client, ns, &sel, "CronJob", &mut out).await;
    names::<PodDisruptionBudget>(client, ns, &sel, "PodDisruptionBudget", &mut out).await;
    names::<PersistentVolumeClaim>(client, ns, &sel, "PersistentVolumeClaim", &mut out).await;
    names::<ServiceAccount>(client, ns, &sel, "ServiceAccount", &mut out).await;
    names::<Role>(client, ns, &sel, "Role", &mut out).await;
    names::<RoleBinding>(client, ns, &sel, "RoleBinding", &mut out).await;
    names::<NetworkPolicy>(client, ns, &sel, "NetworkPolicy", &mut out).await;
    out
}

/// UIDs of every live child, by `(kind, name)`.
async fn uids(client: &Client, ns: &str) -> BTreeMap<(String, String), String> {
    async fn add<K>(
        client: &Client,
        ns: &str,
        kind: &str,
        out: &mut BTreeMap<(String, String), String>,
    ) where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        for o in api
            .list_metadata(
                &ListParams::default().labels("app.kubernetes.io/managed-by=tator-operator"),
            )
            .await
            .unwrap()
            .items
        {
            out.insert(
                (kind.to_string(), o.name_any()),
                o.uid().unwrap_or_default(),
            );
        }
    }
    let mut out = BTreeMap::new();
    add::<Deployment>(client, ns, "Deployment", &mut out).await;
    add::<StatefulSet>(client, ns, "StatefulSet", &mut out).await;
    add::<Service>(client, ns, "Service", &mut out).await;
    add::<ConfigMap>(client, ns, "ConfigMap", &mut out).await;
    add::<PodDisruptionBudget>(client, ns, "PodDisruptionBudget", &mut out).await;
    add::<NetworkPolicy>(client, ns, "NetworkPolicy", &mut out).await;
    add::<CronJob>(client, ns, "CronJob", &mut out).await;
    add::<PersistentVolumeClaim>(client, ns, "PersistentVolumeClaim", &mut out).await;
    add::<Secret>(client, ns, "Secret", &mut out).await;
    out
}

/// What the spec asks for: `render`'s children of the live object.
fn expected(td: &TatorDeployment) -> BTreeSet<(String, String)> {
    render::render_values(td)
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["kind"].as_str().unwrap().to_string(),
                v["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Ready at the current generation with exactly the expected children.
async fn converged(client: &Client, ns: &str) -> Result<(), String> {
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), ns);
    let td = tds.get("tator").await.map_err(|e| e.to_string())?;
    let st = td.status.clone().unwrap_or_default();
    if st.observed_generation != td.metadata.generation {
        return Err(format!(
            "observed {:?} of {:?}",
            st.observed_generation, td.metadata.generation
        ));
    }
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
    if ready.map(|c| c.status.as_str()) != Some("True") {
        return Err(format!("Ready: {ready:?}"));
    }
    let want = expected(&td);
    let have = children(client, ns, "tator").await;
    if want != have {
        let missing: Vec<_> = want.difference(&have).collect();
        let extra: Vec<_> = have.difference(&want).collect();
        return Err(format!(
            "missing {missing:?}, orphaned or duplicated {extra:?}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_converges_without_duplicates_or_orphans() {
    let identities = json!({"identities": [
        {"name": "tator", "credentials": [{"accessKey": CANARY_KEY, "secretKey": CANARY_SECRET}],
         "actions": ["Read:backup", "Write:backup", "List:backup"]}]});
    let s3 = tokio::task::spawn_blocking(move || Seaweed::start(&identities, &["backup"]))
        .await
        .unwrap()
        .expect("weed must be built: run `make tools`");
    let client = common::cluster().await;
    let ns = namespace(&client, "faults-kill", true).await.unwrap();
    let kubeconfig = shared_kubeconfig().unwrap();
    let logdir = tempfile::tempdir().unwrap();
    let log = logdir.path().join("operator.log");

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "backup-creds", "annotations": common::consent("tator")},
        "stringData": {"accessKeyId": CANARY_KEY, "secretAccessKey": CANARY_SECRET}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com",
                 "objectStorage": {"backup": {"external": {"storeType": "MINIO", "bucketName": "backup",
                     "endpoint": s3.s3_url, "credentialsSecret": "backup-creds"}}}}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();

    let mut op = Operator::start(&kubeconfig, &ns, &log);
    wait_for("first convergence", Duration::from_secs(90), || {
        converged(&client, &ns)
    })
    .await
    .unwrap();
    let mut worst = Duration::ZERO;
    for i in 0..20u32 {
        // A spec change starts reconciles; the kill lands somewhere in them (or after).
        let patch = match i % 4 {
            0 => json!({"ui": {"replicas": 1 + (i / 4) % 2 + 1}}),
            1 => json!({"nginx": {"maintenance": i % 8 == 1}}),
            2 => json!({"api": {"gunicorn": {"workers": 2 + i % 3}}}),
            _ => json!({"workers": {"image": {"replicas": 1 + i % 2}}}),
        };
        patch_spec(&tds, "tator", json!(patch)).await;
        let delay = rand::rng().random_range(0..1500u64);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        op.kill9();
        op = Operator::start(&kubeconfig, &ns, &log);
        let t = Instant::now();
        wait_for(
            &format!("convergence after kill {i} ({delay} ms after the change)"),
            Duration::from_secs(30),
            || converged(&client, &ns),
        )
        .await
        .unwrap();
        worst = worst.max(t.elapsed());
    }
    eprintln!(
        "slowest convergence after a kill: {:.1} s",
        worst.as_secs_f64()
    );
    op.kill9();

    // No canary, no ERROR, no panic.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reconcile"), "no operator log was written");
    for bad in [CANARY_SECRET.to_string(), base64(CANARY_SECRET)] {
        assert!(!text.contains(&bad), "the operator log leaked the canary");
    }
    for line in text.lines() {
        // "<timestamp> <LEVEL> ...": the level, not a field value that says ERROR.
        let level = line.split_whitespace().nth(1).unwrap_or("");
        assert!(
            level != "ERROR" && !line.contains("panicked"),
            "unexpected line in the operator log: {line}"
        );
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let evs =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    let status = serde_json::to_string(&tds.get("tator").await.unwrap().status).unwrap();
    assert!(!evs.contains(CANARY_SECRET) && !status.contains(CANARY_SECRET));
    drop(s3);
}

fn writes(m: &BTreeMap<String, u64>) -> u64 {
    m.iter()
        .filter(|(v, _)| !matches!(v.as_str(), "get" | "list" | "watch"))
        .map(|(_, n)| n)
        .sum()
}

fn total(m: &BTreeMap<String, u64>) -> u64 {
    m.values().sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarts_cause_no_storm_and_no_deletes() {
    // The controller runs in this process: its log goes to the test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tator_operator=info,kube_runtime=warn")
        .with_test_writer()
        .try_init();
    let mut cluster = tokio::task::spawn_blocking(|| TestCluster::start("faults-restart"))
        .await
        .unwrap()
        .unwrap();
    let admin = cluster.client().await.unwrap();
    install_crds(&admin, &workspace_root().join("crds"))
        .await
        .unwrap();
    let ns = namespace(&admin, "restart", true).await.unwrap();
    let kc = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let (client, counts) = counted_client(config).unwrap();
    let ctx = Arc::new(Context::new(
        client,
        Settings {
            namespace: Some(ns.clone()),
            concurrency: 2,
            resync: Duration::from_secs(600),
            ..Settings::default()
        },
    ));
    let task = tokio::spawn(controller::run(ctx.clone()));
    let tds: Api<TatorDeployment> = Api::namespaced(admin.clone(), &ns);
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"}, "spec": {"version": "1.5.0", "domain": "tator.example.com"}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();
    wait_for("Ready", Duration::from_secs(90), || converged(&admin, &ns))
        .await
        .unwrap();
    common::poke_and_settle(&ctx, &admin, &ns, "tator").await;
    let before = uids(&admin, &ns).await;

    // 1. The API server alone: every watch breaks and re-lists. Nothing changed, so nothing is
    // written.
    let c0 = counts.by_verb();
    let t = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(&["kube-apiserver"])).unwrap();
    eprintln!(
        "kube-apiserver restarted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Give the watches time to notice, back off and watch again (resuming, or re-listing).
    let relisted = wait_for(
        "the watches to come back",
        Duration::from_secs(60),
        || async {
            let c = counts.by_verb();
            let again = |v: &str| c.get(v).copied().unwrap_or(0) - c0.get(v).copied().unwrap_or(0);
            let n = again("watch") + again("list");
            (n >= 9)
                .then_some(())
                .ok_or(format!("{n} watches and lists so far"))
        },
    )
    .await;
    relisted.unwrap();
    // A reconcile from the refilled caches: it has nothing to write.
    common::poke_and_settle(&ctx, &admin, &ns, "tator").await;
    let c1 = counts.by_verb();
    let delta: BTreeMap<String, u64> = c1
        .iter()
        .map(|(k, v)| (k.clone(), v - c0.get(k).copied().unwrap_or(0)))
        .collect();
    assert_eq!(
        writes(&delta),
        0,
        "writes after a re-list of unchanged objects: {delta:?}"
    );
    assert!(!task.is_finished(), "the controller stopped");

    // 2. etcd and the API server, right after a spec change (mid-reconcile).
    patch_spec(&tds, "tator", json!({"ui": {"replicas": 2}})).await;
    let t = Instant::now();
    tokio::task::block_in_place(|| cluster.restart(&["etcd", "kube-apiserver"])).unwrap();
    let outage = t.elapsed();
    wait_for(
        "convergence after the restart",
        Duration::from_secs(60),
        || async {
            converged(&admin, &ns).await?;
            let d: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
            let ui = d.get("tator-ui").await.map_err(|e| e.to_string())?;
            (ui.spec.as_ref().unwrap().replicas == Some(2))
                .then_some(())
                .ok_or("ui not scaled yet".to_string())
        },
    )
    .await
    .unwrap();
    let elapsed = t.elapsed();
    let c2 = counts.by_verb();
    let delta: BTreeMap<String, u64> = c2
        .iter()
        .map(|(k, v)| (k.clone(), v - c1.get(k).copied().unwrap_or(0)))
        .collect();
    eprintln!(
        "etcd + kube-apiserver down {:.1} s; converged {:.1} s after the change; requests meanwhile: {delta:?}",
        outage.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    assert_eq!(delta.get("delete").copied().unwrap_or(0), 0, "{delta:?}");
    // No storm: backoff keeps it to a few requests per second of outage.
    assert!(
        (total(&delta) as f64) < 60.0 + 20.0 * elapsed.as_secs_f64(),
        "request storm: {delta:?} in {:.1} s",
        elapsed.as_secs_f64()
    );
    assert!(!task.is_finished(), "the controller stopped");
    let after = uids(&admin, &ns).await;
    assert_eq!(before, after, "children were replaced or deleted");
    task.abort();
    drop(cluster);
}

/// Sends a TatorDeployment as raw JSON (no Rust type in the way).
async fn create_raw(client: &Client, ns: &str, body: Value) -> Result<(), String> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "tator.io",
        "v1alpha1",
        "TatorDeployment",
    ));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
    let obj: DynamicObject = serde_json::from_value(body).unwrap();
    match api.create(&PostParams::default(), &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(format!("{} {}", s.code, s.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// Creates the TatorDeployment `name` with `spec`, sent raw.
async fn create_td(client: &Client, ns: &str, name: &str, spec: Value) {
    create_raw(
        client,
        ns,
        json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
               "metadata": {"name": name}, "spec": spec}),
    )
    .await
    .unwrap();
}

/// Waits until `tator` is converged (see [`converged`]).
async fn wait_converged(client: &Client, ns: &str, seconds: u64) {
    wait_for("Ready", Duration::from_secs(seconds), || {
        converged(client, ns)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected_or_reported_and_deletes_nothing() {
    let client = common::cluster().await;
    let ns = namespace(&client, "faults-invalid", true).await.unwrap();
    let (ctx, task) = common::start_controller(&client, &ns);
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"}, "spec": {"version": "1.5.0", "domain": "tator.example.com"}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();
    wait_converged(&client, &ns, 90).await;
    let before = uids(&client, &ns).await;

    let base = || json!({"version": "1.5.0", "domain": "a.example.com"});
    let with = |extra: Value| {
        let mut b = base();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let s3 =
        |store: &str| json!({"storeType": store, "bucketName": "media", "credentialsSecret": "s"});
    let cases: Vec<(Value, &str)> = vec![
        // wrong types
        (
            with(json!({"api": {"replicas": "two"}})),
            "spec.api.replicas",
        ),
        (with(json!({"aliases": "b.example.com"})), "spec.aliases"),
        (
            with(json!({"nginx": {"maintenance": "yes"}})),
            "spec.nginx.maintenance",
        ),
        // bad enums
        (
            with(json!({"image": {"pullPolicy": "Sometimes"}})),
            "Unsupported value",
        ),
        (
            with(json!({"deletionPolicy": "Sometimes"})),
            "Unsupported value",
        ),
        (
            with(json!({"objectStorage": {"live": {"external": s3("S3")}}})),
            "Unsupported value",
        ),
        (
            with(json!({"nginx": {"service": {"type": "Ingress"}}})),
            "Unsupported value",
        ),
        // bad formats and ranges
        (
            json!({"version": "latest", "domain": "a.example.com"}),
            "version must look like 1.5.0",
        ),
        (
            json!({"version": "1.5.0", "domain": "Not A Domain"}),
            "domain must be a lowercase DNS name",
        ),
        (
            with(json!({"aliases": ["UPPER.example.com"]})),
            "each alias must be a lowercase DNS name",
        ),
        (with(json!({"api": {"replicas": 0}})), "spec.api.replicas"),
        (
            with(json!({"progressDeadlineSeconds": 1})),
            "spec.progressDeadlineSeconds",
        ),
        (
            with(json!({"elasticsearch": {"inCluster": {"heap": "lots"}}})),
            "heap must look like 512m or 2g",
        ),
        (
            with(json!({"objectStorage": {"live": {"inCluster": {"bucketName": "No_Such"}}}})),
            "a bucket name has 3 to 63",
        ),
        // oversized values
        (
            with(json!({"domain": format!("{}.example.com", "a".repeat(250))})),
            "spec.domain",
        ),
        (
            with(
                json!({"aliases": (0..17).map(|i| format!("a{i}.example.com")).collect::<Vec<_>>()}),
            ),
            "spec.aliases",
        ),
        // conflicting options
        (
            with(json!({"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}})),
            "minReplicas must not exceed",
        ),
        (
            with(json!({"nginx": {"service": {"type": "ClusterIP", "loadBalancerClass": "x"}}})),
            "need service.type LoadBalancer",
        ),
        (
            with(json!({"storage": {"shared": {"existingClaim": "a", "storageClassName": "b"}}})),
            "mutually exclusive",
        ),
        (
            with(
                json!({"postgres": {"inCluster": {}, "external": {"host": "db", "credentialsSecret": {"name": "x"}}}}),
            ),
            "exactly one of inCluster or external",
        ),
        (
            with(json!({"objectStorage": {"live": {"inCluster": {}, "external": s3("AWS")}}})),
            "exactly one of inCluster or external",
        ),
        (
            with(
                json!({"objectStorage": {"live": {"external": {"storeType": "OCI", "bucketName": "media", "endpoint": "https://o.example.com", "credentialsSecret": "s"}}}}),
            ),
            "an OCI bucket needs externalHost",
        ),
        (
            with(json!({"objectStorage": {"backup": {"external": s3("MINIO")}}})),
            "MINIO, OCI and VAST buckets need endpoint",
        ),
        (
            with(
                json!({"buckets": [{"name": "media", "organization": 1, "storeType": "AWS", "credentialsSecret": "s"}]}),
            ),
            "buckets need apiAccess",
        ),
        (
            with(
                json!({"apiAccess": {"tokenSecret": {"name": "t", "key": "k"}}, "buckets": [{"name": "media", "organization": 1, "storeType": "MINIO", "endpoint": "http://s3.example.com", "credentialsSecret": "s", "archiveStorageClass": "DEEP_ARCHIVE"}]}),
            ),
            "DEEP_ARCHIVE is for AWS",
        ),
        (
            with(
                json!({"elasticsearch": {"external": {"url": "http://search.example.com:9200", "credentialsSecret": {"name": "es"}}}}),
            ),
            "credentialsSecret needs an https:// url",
        ),
        (
            with(
                json!({"redis": {"external": {"host": "redis.example.com", "passwordSecret": {"name": "r", "key": "password"}}}}),
            ),
            "a Redis password needs tls: true",
        ),
        // maintenance jobs
        (
            with(json!({"maintenance": {"jobs": {"prunemedia": {"suspend": true}}}})),
            "maintenance.jobs keys must be job names: sizer, prune-temporary-files",
        ),
        (
            with(json!({"maintenance": {"jobs": {"prune-media": {"schedule": "every day"}}}})),
            "schedule must be a cron expression with five fields",
        ),
        // workflows and job clusters
        (
            with(json!({"jobClusters": [
                {"name": "a", "kubeconfigSecret": {"name": "k"}, "namespace": "jobs", "runs": ["transcode"]},
                {"name": "b", "kubeconfigSecret": {"name": "k"}, "namespace": "jobs", "runs": ["transcode"]}]})),
            "at most one job cluster runs transcode",
        ),
        (
            with(
                json!({"apiAccess": {"tokenSecret": {"name": "t", "key": "k"}}, "jobClusters": [
                {"name": "a", "kubeconfigSecret": {"name": "k"}, "namespace": "jobs", "runs": ["algorithms"]}]}),
            ),
            "a job cluster that runs algorithms needs organization",
        ),
        (
            with(json!({"algorithms": {"requireRemoteCluster": true}})),
            "algorithms.requireRemoteCluster forbids workflows in this cluster",
        ),
        (
            with(json!({"jobClusters": [
                {"name": "Not_A_Label", "kubeconfigSecret": {"name": "k"}, "namespace": "jobs", "runs": ["transcode"]}]})),
            "a job cluster name is a DNS label",
        ),
    ];
    assert!(cases.len() >= 20);
    for (i, (spec, expected)) in cases.iter().enumerate() {
        let body = json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
                          "metadata": {"name": format!("bad-{i}")}, "spec": spec});
        let err = create_raw(&client, &ns, body)
            .await
            .expect_err(&format!("case {i} was accepted: {spec}"));
        assert!(
            err.contains(expected),
            "case {i}: expected {expected:?} in {err}"
        );
        // The same spec as an update of the running installation is refused as well.
        let update = tds
            .patch(
                "tator",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await;
        assert!(update.is_err(), "case {i} was accepted as an update");
    }
    // A name too long for the children's names.
    let long = "t".repeat(39);
    let err = create_raw(
        &client,
        &ns,
        json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
               "metadata": {"name": long}, "spec": base()}),
    )
    .await
    .unwrap_err();
    assert!(err.contains("at most 38 characters"), "{err}");

    // Dangling Secret references pass the API server; status says what is missing, and nothing
    // the installation already has is deleted or rewritten.
    patch_spec(
        &tds,
        "tator",
        json!({
            "objectStorage": {"backup": {"external": {"storeType": "AWS", "bucketName": "media",
                                                      "credentialsSecret": "no-such-secret"}}},
            "tls": {"secretName": "no-such-tls"}
        }),
    )
    .await;
    let cond = |td: &TatorDeployment, t: &str| {
        td.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
    };
    wait_for(
        "the dangling references reported",
        Duration::from_secs(60),
        || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            let os = cond(&td, "ObjectStorageReady").map(|c| c.reason);
            let nginx = cond(&td, "Nginx").map(|c| c.reason);
            (os.as_deref() == Some("SecretNotFound")
                && nginx.as_deref() == Some("TLSSecretNotFound"))
            .then_some(())
            .ok_or(format!("{os:?} {nginx:?}"))
        },
    )
    .await
    .unwrap();
    common::poke_and_settle(&ctx, &client, &ns, "tator").await;
    let after = uids(&client, &ns).await;
    for (key, uid) in &before {
        assert_eq!(after.get(key), Some(uid), "{key:?} was deleted or replaced");
    }
    task.abort();
}

/// The Ready, Stalled and Reconciling conditions and observedGeneration of `name`, read as the
/// controller reads it (an object too deeply nested to decode still shows its status).
async fn outcome(client: &Client, ns: &str, name: &str) -> Result<Outcome, String> {
    let api: Api<Watched> = Api::namespaced(client.clone(), ns);
    let obj = api.get(name).await.map_err(|e| e.to_string())?;
    let (status, generation) = match &obj {
        Watched::Decoded(td) => (td.status.clone(), td.metadata.generation),
        Watched::Undecodable(u) => (u.status.clone(), u.metadata.generation),
    };
    let status = status.ok_or("no status yet")?;
    let cond = |t: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    Ok(Outcome {
        ready: cond("Ready").ok_or("no Ready condition")?,
        stalled: cond("Stalled").map(|c| c.0),
        observed: status.observed_generation,
        generation,
    })
}

#[derive(Debug)]
struct Outcome {
    ready: (String, String, String),
    stalled: Option<String>,
    observed: Option<i64>,
    generation: Option<i64>,
}

/// Waits until `name`'s Ready condition has `reason` and its message contains `needle`.
async fn wait_reason(client: &Client, ns: &str, name: &str, reason: &str, needle: &str) -> Outcome {
    wait_for(
        &format!("{name}: Ready reason {reason}"),
        Duration::from_secs(60),
        || async {
            let o = outcome(client, ns, name).await?;
            (o.ready.1 == reason && o.ready.2.contains(needle))
                .then_some(())
                .ok_or(format!("{o:?}"))
        },
    )
    .await
    .unwrap();
    outcome(client, ns, name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_reach_the_status_and_stay_with_their_object() {
    let client = common::cluster().await;
    let ns = namespace(&client, "faults-status", true).await.unwrap();
    let (_ctx, task) = common::start_controller(&client, &ns);
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"version": "1.5.0", "domain": "tator.example.com"});
    create_td(&client, &ns, "tator", spec).await;
    wait_converged(&client, &ns, 90).await;
    let before = uids(&client, &ns).await;

    // Free-form overrides nested deeper than the decoder allows pass the API server. That object
    // alone is reported; the list and watch of all the others still decode.
    let depth = 150;
    let overrides = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    assert!(
        serde_json::from_str::<Value>(&overrides).is_err(),
        "serde_json decodes {depth} levels now: pick a deeper nesting"
    );
    let raw = format!(
        r#"{{"apiVersion":"tator.io/v1alpha1","kind":"TatorDeployment","metadata":{{"name":"deep"}},"spec":{{"version":"1.5.0","domain":"deep.example.com","api":{{"podOverrides":{overrides}}}}}}}"#
    );
    let request = http::Request::post(format!(
        "/apis/tator.io/v1alpha1/namespaces/{ns}/tatordeployments"
    ))
    .header("Content-Type", "application/json")
    .body(raw.into_bytes())
    .unwrap();
    client.request_text(request).await.unwrap();
    let o = wait_reason(&client, &ns, "deep", "InvalidSpec", "could not be read").await;
    assert_eq!(o.stalled.as_deref(), Some("True"), "{o:?}");

    // The other installation keeps reconciling: a change is applied and observed.
    patch_spec(&tds, "tator", json!({"api": {"replicas": 3}})).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for("the change applied", Duration::from_secs(60), || async {
        let d = deployments
            .get("tator-api")
            .await
            .map_err(|e| e.to_string())?;
        let replicas = d.spec.and_then(|s| s.replicas);
        (replicas == Some(3))
            .then_some(())
            .ok_or(format!("{replicas:?}"))
    })
    .await
    .unwrap();
    wait_converged(&client, &ns, 60).await;

    // A quantity the API server would refuse is refused before anything is applied.
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"api": {"resources": {"limits": {"memory": "12 parsecs"}}}}}),
        ),
    )
    .await
    .unwrap();
    let o = wait_reason(
        &client,
        &ns,
        "tator",
        "InvalidSpec",
        "spec.api.resources.limits.memory \"12 parsecs\" is not a quantity",
    )
    .await;
    assert_eq!(o.ready.0, "False", "{o:?}");
    patch_spec(&tds, "tator", json!({"api": {"resources": null}})).await;
    wait_converged(&client, &ns, 60).await;

    // Overrides beyond PodSecurity restricted, or at the operator's service account, are
    // refused before anything is applied.
    for (overrides, needle) in [
        (
            json!({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
            "api.podOverrides.spec.volumes[0].hostPath goes beyond",
        ),
        (
            json!({"spec": {"serviceAccountName": "tator-operator"}}),
            "api.podOverrides.spec.serviceAccountName",
        ),
    ] {
        patch_spec(&tds, "tator", json!({"api": {"podOverrides": overrides}})).await;
        wait_reason(&client, &ns, "tator", "InvalidSpec", needle).await;
        patch_spec(&tds, "tator", json!({"api": {"podOverrides": null}})).await;
        wait_converged(&client, &ns, 60).await;
    }
    let api_pods = deployments
        .get("tator-api")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.template.spec)
        .unwrap();
    assert!(
        api_pods
            .volumes
            .iter()
            .flatten()
            .all(|v| v.host_path.is_none())
    );
    assert_ne!(
        api_pods.service_account_name.as_deref(),
        Some("tator-operator")
    );

    // A change the API server refuses: Ready=False with ApplyFailed naming the object, Stalled
    // (retrying the same object cannot help), the generation observed with that outcome.
    let refused =
        json!({"api": {"podOverrides": {"metadata": {"labels": {"team": "x".repeat(70)}}}}});
    patch_spec(&tds, "tator", json!(refused)).await;
    let o = wait_reason(&client, &ns, "tator", "ApplyFailed", "Deployment tator-api").await;
    assert_eq!(o.ready.0, "False", "{o:?}");
    assert_eq!(o.stalled.as_deref(), Some("True"), "{o:?}");
    assert_eq!(o.observed, o.generation, "{o:?}");
    // A new object with the same problem gets a first status that says so.
    let mut fresh = json!({"version": "1.5.0", "domain": "fresh.example.com"});
    fresh["api"] = refused["api"].clone();
    create_td(&client, &ns, "fresh", fresh).await;
    let o = wait_reason(&client, &ns, "fresh", "ApplyFailed", "Deployment fresh-api").await;
    assert_eq!(o.stalled.as_deref(), Some("True"), "{o:?}");
    // The API server's answer, once and on one line (not the whole error structure).
    assert_eq!(
        o.ready.2.matches("must be no more than 63").count(),
        1,
        "{o:?}"
    );
    // Reverted: Ready again, and nothing of the installation was deleted or replaced.
    patch_spec(&tds, "tator", json!({"api": {"podOverrides": null}})).await;
    wait_converged(&client, &ns, 60).await;
    let after = uids(&client, &ns).await;
    for (key, uid) in &before {
        assert_eq!(after.get(key), Some(uid), "{key:?} was deleted or replaced");
    }
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_a_managed_database_that_is_not_ready_deletes_nothing() {
    let client = common::cluster().await;
    let ns = namespace(&client, "faults-switch", true).await.unwrap();
    let (_ctx, task) = common::start_controller(&client, &ns);
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    create_td(
        &client,
        &ns,
        "tator",
        json!({"version": "1.5.0", "domain": "tator.example.com"}),
    )
    .await;
    wait_converged(&client, &ns, 90).await;
    let before = uids(&client, &ns).await;
    let postgres_objects: Vec<_> = before
        .keys()
        .filter(|(_, name)| name.starts_with("tator-postgres"))
        .cloned()
        .collect();
    assert!(
        postgres_objects.iter().any(|(k, _)| k == "StatefulSet"),
        "{before:?}"
    );

    // What `kubectl apply` of the new manifest sends: postgres.external only. The stored object
    // has no defaulted inCluster beside it, so the exactly-one rule accepts it. The Secret it
    // names does not exist and nothing listens on the port.
    let port = tator_testbed::support::unused_port();
    patch_spec(
        &tds,
        "tator",
        json!({"postgres": {"external": {
            "host": "127.0.0.1", "port": port, "sslMode": "disable",
            "credentialsSecret": {"name": "managed-db-not-created-yet"}}}}),
    )
    .await;
    let generation = tds.get("tator").await.unwrap().metadata.generation;
    wait_for(
        "DatabaseReady=False at the new generation",
        Duration::from_secs(60),
        || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            let st = td.status.unwrap_or_default();
            let db = st
                .conditions
                .iter()
                .find(|c| c.type_ == "DatabaseReady")
                .cloned();
            match db {
                Some(c)
                    if c.status == "False"
                        && c.observed_generation == generation
                        && st.observed_generation == generation =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    // The running database, its Services and claim are all still there, unchanged.
    let during = uids(&client, &ns).await;
    for key in &postgres_objects {
        assert_eq!(
            during.get(key),
            before.get(key),
            "{key:?} was deleted while the managed database was not ready"
        );
    }

    // Back to the in-cluster database: Ready again, nothing was replaced.
    patch_spec(&tds, "tator", json!({"postgres": null})).await;
    wait_converged(&client, &ns, 90).await;
    let after = uids(&client, &ns).await;
    for (key, uid) in &before {
        assert_eq!(after.get(key), Some(uid), "{key:?} was deleted or replaced");
    }
    task.abort();
}

/// Secrets by consent: a Secret of the namespace that is not meant for this installation is
/// never used. The installation waits with `SecretNotAllowed` naming the Secret and the field,
/// nothing is applied and the spec's "database" is never contacted, on the first reconcile or
/// the rechecks; once the Secret lists the installation, the operator goes on and calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_not_meant_for_the_installation_is_never_used() {
    let client = common::cluster().await;
    let ns = namespace(&client, "faults-consent", true).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // Another team's database password, meant for their installation only.
    let s: Secret = serde_json::from_value(json!({
        "metadata": {"name": "other-team-db", "annotations": common::consent("other-team")},
        "stringData": {"username": "other", "password": CANARY_SECRET}}))
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();
    // What a hostile "managed database" would be: it counts who connects.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = connections.clone();
    let server = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    let (ctx, task) = common::start_controller(&client, &ns);
    create_td(
        &client,
        &ns,
        "tator",
        json!({"version": "1.5.0", "domain": "tator.example.com",
               "postgres": {"external": {"host": "127.0.0.1", "port": port, "sslMode": "disable",
                   "credentialsSecret": {"name": "other-team-db"}}}}),
    )
    .await;
    let o = wait_reason(
        &client,
        &ns,
        "tator",
        "SecretNotAllowed",
        "other-team-db (named by spec.postgres.external.credentialsSecret)",
    )
    .await;
    assert_eq!(o.stalled.as_deref(), Some("True"), "{o:?}");
    assert!(
        o.ready
            .2
            .contains("kubectl annotate secret other-team-db tator.io/tator-deployments=tator"),
        "{o:?}"
    );
    // The recheck refuses again: wait for two more reconciles, then look.
    let seen = ctx.reconcile_count();
    wait_for("two rechecks", Duration::from_secs(60), || async {
        (ctx.reconcile_count() >= seen + 2)
            .then_some(())
            .ok_or(ctx.reconcile_count().to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the spec's host was contacted with a Secret not meant for it"
    );
    assert!(
        children(&client, &ns, "tator").await.is_empty(),
        "something was applied"
    );
    let td = Api::<TatorDeployment>::namespaced(client.clone(), &ns)
        .get("tator")
        .await
        .unwrap();
    assert!(
        !serde_json::to_string(&td.status)
            .unwrap()
            .contains(CANARY_SECRET)
    );

    // Consent: the Secret now lists this installation too. The operator goes on (the data tier
    // is applied) and checks the database it was given.
    secrets
        .patch(
            "other-team-db",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": common::consent("other-team, tator")}}),
            ),
        )
        .await
        .unwrap();
    wait_for(
        "the database to be called and the installation to go on",
        Duration::from_secs(60),
        || async {
            let called = connections.load(std::sync::atomic::Ordering::SeqCst);
            let o = outcome(&client, &ns, "tator").await?;
            (called > 0 && o.ready.1 != "SecretNotAllowed")
                .then_some(())
                .ok_or(format!("{called} connections, {o:?}"))
        },
    )
    .await
    .unwrap();
    task.abort();
    server.abort();
}
