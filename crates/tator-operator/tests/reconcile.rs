//! Reconciler tests on the real local control plane (kube-apiserver, controllers, scheduler and
//! kwok nodes). Each test gets its own namespace, enforcing PodSecurity `restricted`, and its own
//! controller watching only that namespace.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    autoscaling::v2::HorizontalPodAutoscaler,
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams,
    },
    core::NamespaceResourceScope,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tator_api::TatorDeployment;
use tator_operator::{
    builders::{common::instance_selector, tls::certificate_resource},
    controller::Context,
    render,
};
use tator_testbed::support::{
    TestCluster, install_crds, namespace, shared_client, shared_dir, wait_for, workspace_root,
};

/// What to wait for on a condition.
#[derive(Debug, Clone, Copy)]
enum Cond<'a> {
    Status(&'a str),
    Reason(&'a str),
}

struct Env {
    client: Client,
    ns: String,
    ctx: Arc<Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Env {
    async fn new(prefix: &str) -> Self {
        let client = shared_client()
            .await
            .expect("the shared test cluster must start");
        Self::with_client(client, prefix).await
    }

    async fn with_client(client: Client, prefix: &str) -> Self {
        // The controllers' logs go to the output of the test that fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                "tator_operator=info,tator_operator::controller=debug,kube_runtime=warn",
            )
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        install_crds(&client, &workspace_root().join("crds"))
            .await
            .unwrap();
        let ns = namespace(&client, prefix, true).await.unwrap();
        let (ctx, task) = common::start_controller(&client, &ns);
        Self {
            client,
            ns,
            ctx,
            task,
        }
    }

    fn tds(&self) -> Api<TatorDeployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn create(&self, spec: Value) -> TatorDeployment {
        let td: TatorDeployment = serde_json::from_value(json!({
            "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
            "metadata": {"name": "tator", "namespace": self.ns},
            "spec": spec,
        }))
        .unwrap();
        self.tds()
            .create(&PostParams::default(), &td)
            .await
            .unwrap()
    }

    async fn patch_spec(&self, patch: Value) {
        self.tds()
            .patch(
                "tator",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": patch})),
            )
            .await
            .unwrap();
    }

    /// Waits for Ready=True at the current generation.
    async fn wait_ready(&self, timeout: Duration) -> TatorDeployment {
        let tds = self.tds();
        wait_for("TatorDeployment Ready", timeout, || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            let st = td.status.clone().unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            let current = st.observed_generation == td.meta().generation;
            match ready {
                Some(c) if c.status == "True" && current => Ok(td),
                Some(c) => Err(format!(
                    "Ready={} {}: {} (observed {:?})",
                    c.status, c.reason, c.message, st.observed_generation
                )),
                None => Err("no status yet".into()),
            }
        })
        .await
        .unwrap()
    }

    /// Waits until condition `type_` has the given status or reason; returns (status, reason,
    /// message).
    async fn wait_condition(
        &self,
        type_: &str,
        want: Cond<'_>,
        timeout: Duration,
    ) -> (String, String, String) {
        wait_for(&format!("{type_} {want:?}"), timeout, || async {
            match self.condition(type_).await {
                Some(c)
                    if matches!(want, Cond::Status(s) if c.0 == s)
                        || matches!(want, Cond::Reason(r) if c.1 == r) =>
                {
                    Ok(c)
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap()
    }

    /// Waits until Deployment `name` asks for `replicas` pods.
    async fn wait_replicas(&self, name: &str, replicas: i32, timeout: Duration) {
        let deploys = self.api::<Deployment>();
        wait_for(
            &format!("{name} at {replicas} replicas"),
            timeout,
            || async {
                let d = deploys.get(name).await.map_err(|e| e.to_string())?;
                if d.spec.as_ref().unwrap().replicas == Some(replicas) {
                    Ok(())
                } else {
                    Err(format!("{:?}", d.spec.as_ref().unwrap().replicas))
                }
            },
        )
        .await
        .unwrap();
    }

    /// Waits until no object of kind K is left in the namespace.
    /// Waits until no object of kind K matches `selector` (a label selector; "" for all).
    async fn wait_none<K>(&self, what: &str, selector: &str, timeout: Duration)
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api = self.api::<K>();
        wait_for(what, timeout, || async {
            let n = api
                .list_metadata(&ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if n == 0 {
                Ok(())
            } else {
                Err(format!("{n} left"))
            }
        })
        .await
        .unwrap();
    }

    async fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        let td = self.tds().get("tator").await.ok()?;
        td.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status, c.reason, c.message))
    }

    async fn api_image(&self) -> String {
        let d: Deployment = self.api::<Deployment>().get("tator-api").await.unwrap();
        d.spec.clone().unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    }

    /// resourceVersion of the TatorDeployment and of every child, by "Kind/name".
    async fn snapshot(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let td = self.tds().get("tator").await.unwrap();
        out.insert(
            "TatorDeployment/tator".into(),
            td.resource_version().unwrap(),
        );
        let sel = instance_selector("tator");
        collect::<Deployment>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<k8s_openapi::api::apps::v1::StatefulSet>(&self.client, &self.ns, &sel, &mut out)
            .await;
        collect::<Service>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<ConfigMap>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<PersistentVolumeClaim>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<PodDisruptionBudget>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<k8s_openapi::api::networking::v1::NetworkPolicy>(
            &self.client,
            &self.ns,
            &sel,
            &mut out,
        )
        .await;
        collect::<HorizontalPodAutoscaler>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<Secret>(&self.client, &self.ns, &sel, &mut out).await;
        collect::<Job>(&self.client, &self.ns, &sel, &mut out).await;
        out
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn collect<K>(client: &Client, ns: &str, sel: &str, out: &mut BTreeMap<String, String>)
where
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
    {
        out.insert(
            format!("{}/{}", K::kind(&()), o.name_any()),
            o.resource_version().unwrap(),
        );
    }
}

fn minimal() -> Value {
    json!({"version": "1.5.0", "domain": "tator.example.com"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_manifest_becomes_ready_in_a_restricted_namespace() {
    let env = Env::new("op-minimal").await;
    env.create(minimal()).await;
    let td = env.wait_ready(Duration::from_secs(90)).await;
    let st = td.status.clone().unwrap();
    let url = st.url.clone().unwrap();
    let svc: Service = env.api::<Service>().get("tator-nginx").await.unwrap();
    let ingress = svc.status.unwrap().load_balancer.unwrap().ingress.unwrap()[0]
        .ip
        .clone()
        .unwrap();
    assert_eq!(
        url,
        format!("http://{ingress}"),
        "status.url comes from the LoadBalancer ingress"
    );
    assert!(ingress.starts_with("127."));
    assert_eq!(st.version.as_deref(), Some("1.5.0"));
    assert_eq!(st.phase.as_deref(), Some("Ready"));
    for c in [
        "Ready",
        "Api",
        "Workers",
        "Ui",
        "Transcodes",
        "Nginx",
        "Storage",
        "Migrations",
    ] {
        let (status, reason, _) = env.condition(c).await.unwrap();
        assert_eq!(status, "True", "condition {c} ({reason})");
    }
    assert_eq!(env.condition("Stalled").await.unwrap().0, "False");
    assert_eq!(env.condition("Reconciling").await.unwrap().0, "False");

    let snap = env.snapshot().await;
    for child in [
        "Deployment/tator-api",
        "Deployment/tator-db-worker",
        "Deployment/tator-image-worker",
        "Deployment/tator-ui",
        "Deployment/tator-nginx",
        "Deployment/tator-transcode",
        "Deployment/tator-transcode-worker",
        "Deployment/tator-transcode-queue",
        "Service/tator-transcode",
        "Service/tator-transcode-queue",
        "NetworkPolicy/tator-transcode-queue",
        "PodDisruptionBudget/tator-transcode",
        "Service/tator-api",
        "Service/tator-ui",
        "Service/tator-nginx",
        "ConfigMap/tator-nginx-conf",
        "PersistentVolumeClaim/tator-shared",
        "PodDisruptionBudget/tator-api",
        "PodDisruptionBudget/tator-nginx",
        "Secret/tator-django",
    ] {
        assert!(
            snap.contains_key(child),
            "{child} missing; have {:?}",
            snap.keys()
        );
    }
    // Every workload child is controlled by the TatorDeployment; data is retained on deletion.
    let deploys = env
        .api::<Deployment>()
        .list(&ListParams::default())
        .await
        .unwrap();
    for d in deploys {
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("TatorDeployment", td.uid().unwrap().as_str(), Some(true))
        );
    }
    // The in-cluster data services and Tator's wiring to them: secrets only by reference.
    for child in [
        "StatefulSet/tator-postgres",
        "Deployment/tator-redis",
        "Service/tator-postgres",
        "Service/tator-postgres-hl",
        "Service/tator-redis",
        "Secret/tator-postgres",
        "Secret/tator-redis",
    ] {
        assert!(
            snap.contains_key(child),
            "{child} missing; have {:?}",
            snap.keys()
        );
    }
    for c in ["DatabaseReady", "CacheReady"] {
        assert_eq!(env.condition(c).await.unwrap().0, "True", "condition {c}");
    }
    // Tator 1.5.0 does not use Elasticsearch: nothing of it without the logging stack.
    assert!(!snap.keys().any(|k| k.contains("elasticsearch")));
    assert!(env.condition("SearchReady").await.is_none());
    let api: Deployment = env.api().get("tator-api").await.unwrap();
    let envs = api.spec.clone().unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let find = |n: &str| envs.iter().find(|e| e.name == n).cloned().unwrap();
    assert_eq!(
        find("POSTGRES_HOST").value.as_deref(),
        Some("tator-postgres")
    );
    assert_eq!(find("REDIS_HOST").value.as_deref(), Some("tator-redis"));
    assert_eq!(find("PGPORT").value.as_deref(), Some("5432"));
    assert!(envs.iter().all(|e| e.name != "ELASTICSEARCH_HOST"));
    for secret_var in ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "DJANGO_SECRET_KEY"] {
        let v = find(secret_var);
        assert!(v.value.is_none(), "{secret_var} is inline");
        assert!(
            v.value_from.unwrap().secret_key_ref.is_some(),
            "{secret_var} is not a secretKeyRef"
        );
    }
    let pvc: PersistentVolumeClaim = env.api().get("tator-shared").await.unwrap();
    assert!(
        pvc.owner_references().is_empty(),
        "the shared claim must outlive the TatorDeployment"
    );
    // A phase change was announced.
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    let evs = events.list(&ListParams::default()).await.unwrap();
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("Ready")),
        "no Ready event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_reconcile_writes_nothing_and_spec_change_touches_only_its_child() {
    let mut env = Env::new("op-noop").await;
    env.create(minimal()).await;
    env.wait_ready(Duration::from_secs(90)).await;
    // Settled: the new release is read back from status and the migrations Job is retired.
    env.wait_condition(
        "Migrations",
        Cond::Reason("UpToDate"),
        Duration::from_secs(30),
    )
    .await;
    env.wait_none::<Job>(
        "the migrations Job to be retired",
        "app.kubernetes.io/component=migrations",
        Duration::from_secs(30),
    )
    .await;
    // The baseline is taken after a reconcile that started once the Job was gone has ended.
    common::poke_and_settle(&env.ctx, &env.client, &env.ns, "tator").await;
    let before = env.snapshot().await;

    // A fresh controller reconciles every object once on start: that reconcile must be a no-op.
    env.task.abort();
    let (ctx, task) = common::start_controller(&env.client, &env.ns);
    env.ctx = ctx.clone();
    env.task = task;
    common::settled_after(&ctx, 0).await;
    assert_eq!(
        env.snapshot().await,
        before,
        "a no-op reconcile changed a resourceVersion"
    );

    // Once the watches have filled the local copies, a reconcile with nothing to change sends no
    // write at all (counted on the operator's side, by a layer on its client).
    env.task.abort();
    let kubeconfig = tator_testbed::support::shared_kubeconfig().unwrap();
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let (counted, counts) = tator_operator::client::counted_client(config).unwrap();
    let (ctx, task) = common::start_controller(&counted, &env.ns);
    env.ctx = ctx.clone();
    env.task = task;
    common::settled_after(&ctx, 0).await;
    let writes = |c: &tator_operator::client::RequestCounts| -> u64 {
        c.by_verb()
            .iter()
            .filter(|(v, _)| !matches!(v.as_str(), "get" | "list" | "watch"))
            .map(|(_, n)| n)
            .sum()
    };
    let (runs, written) = (ctx.reconcile_count(), writes(&counts));
    // A foreign annotation on a child triggers a reconcile that has nothing to do.
    common::poke_and_settle(&ctx, &env.client, &env.ns, "tator").await;
    assert!(ctx.finished_count() > runs);
    assert_eq!(
        writes(&counts),
        written,
        "a no-op reconcile sent writes: {:?}",
        counts.snapshot()
    );
    let before = env.snapshot().await;

    // One field of one component: only that component's Deployment changes.
    env.patch_spec(json!({"ui": {"replicas": 2}})).await;
    env.wait_replicas("tator-ui", 2, Duration::from_secs(30))
        .await;
    env.wait_ready(Duration::from_secs(60)).await;
    let after = env.snapshot().await;
    let changed: Vec<&String> = after
        .keys()
        .filter(|k| before.get(*k) != after.get(*k))
        .collect();
    assert_eq!(
        changed,
        ["Deployment/tator-ui", "TatorDeployment/tator"],
        "unexpected writes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_deleted_or_edited_by_hand_are_repaired() {
    let env = Env::new("op-drift").await;
    env.create(minimal()).await;
    env.wait_ready(Duration::from_secs(90)).await;

    let cms = env.api::<ConfigMap>();
    let old_uid = cms.get("tator-nginx-conf").await.unwrap().uid();
    cms.delete("tator-nginx-conf", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("ConfigMap recreated", Duration::from_secs(5), || async {
        match cms
            .get_opt("tator-nginx-conf")
            .await
            .map_err(|e| e.to_string())?
        {
            Some(cm) if cm.uid() != old_uid => Ok(()),
            _ => Err("not recreated".into()),
        }
    })
    .await
    .unwrap();

    let deploys = env.api::<Deployment>();
    deploys
        .patch(
            "tator-api",
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"replicas": 7}}),
            ),
        )
        .await
        .unwrap();
    env.wait_replicas("tator-api", 2, Duration::from_secs(5))
        .await;

    let svcs = env.api::<Service>();
    svcs.delete("tator-api", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("Service recreated", Duration::from_secs(5), || async {
        svcs.get_opt("tator-api")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "missing".to_string())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_manifests_are_rejected_with_the_cel_message() {
    let client = common::cluster().await;
    let ns = namespace(&client, "op-invalid", false).await.unwrap();
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let cases = [
        (
            json!({"version": "1.5.0", "domain": "Not A Domain"}),
            "domain must be a lowercase DNS name",
        ),
        (
            json!({"version": "latest", "domain": "a.example.com"}),
            "version must look like 1.5.0",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "aliases": ["UPPER.example.com"]}),
            "each alias must be a lowercase DNS name",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}),
            "minReplicas must not exceed",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "api": {"replicas": 0}}),
            "spec.api.replicas",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "nginx": {"service": {"type": "ClusterIP", "loadBalancerClass": "x"}}}),
            "need service.type LoadBalancer",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "storage": {"shared": {"existingClaim": "a", "storageClassName": "b"}}}),
            "mutually exclusive",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "image": {"pullPolicy": "Sometimes"}}),
            "Unsupported value",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "objectStorage": {"live": {"external":
                {"storeType": "OCI", "bucketName": "media", "endpoint": "https://x.example.com", "credentialsSecret": "s"}}}}),
            "an OCI bucket needs externalHost",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "objectStorage": {"backup": {"external":
                {"storeType": "MINIO", "bucketName": "media", "credentialsSecret": "s"}}}}),
            "MINIO, OCI and VAST buckets need endpoint",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "objectStorage": {"live": {"inCluster": {},
                "external": {"storeType": "AWS", "bucketName": "media", "credentialsSecret": "s"}}}}),
            "exactly one of inCluster or external",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "buckets": [{"name": "media", "organization": 1,
                "storeType": "AWS", "credentialsSecret": "s"}]}),
            "buckets need apiAccess",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "apiAccess": {"tokenSecret": {"name": "t", "key": "k"}},
                "buckets": [{"name": "media", "organization": 1, "storeType": "MINIO", "endpoint": "http://s3.example.com",
                "credentialsSecret": "s", "archiveStorageClass": "DEEP_ARCHIVE"}]}),
            "DEEP_ARCHIVE is for AWS",
        ),
        (
            json!({"version": "1.5.0", "domain": "a.example.com", "objectStorage": {"live": {"inCluster": {"bucketName": "No_Such"}}}}),
            "a bucket name has 3 to 63",
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let body = json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
                          "metadata": {"name": format!("bad-{i}")}, "spec": spec});
        let td: TatorDeployment = match serde_json::from_value(body.clone()) {
            Ok(td) => td,
            Err(_) => {
                // Not even representable in Rust: send it raw.
                let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
                    "tator.io",
                    "v1alpha1",
                    "TatorDeployment",
                ));
                let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
                let obj: DynamicObject = serde_json::from_value(body).unwrap();
                let err = api
                    .create(&PostParams::default(), &obj)
                    .await
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(expected), "case {i}: {err}");
                continue;
            }
        };
        let err = tds
            .create(&PostParams::default(), &td)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "case {i}: expected {expected:?} in {err}"
        );
    }
    // A name too long for the children's names.
    let long: TatorDeployment = serde_json::from_value(
        json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "a".repeat(39)}, "spec": minimal()}),
    )
    .unwrap();
    let err = tds
        .create(&PostParams::default(), &long)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("at most 38 characters"), "{err}");
    // Dots make invalid Service names.
    let dotted: TatorDeployment = serde_json::from_value(
        json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "lab.tator"}, "spec": minimal()}),
    )
    .unwrap();
    let err = tds
        .create(&PostParams::default(), &dotted)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lowercase letters, digits and hyphens"),
        "{err}"
    );
    // Immutable: the storage class of the shared volume.
    let ok: TatorDeployment = serde_json::from_value(
        json!({"apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "ok"}, "spec": {"version": "1.5.0", "domain": "a.example.com",
        "storage": {"shared": {"storageClassName": "fast"}}}}),
    )
    .unwrap();
    tds.create(&PostParams::default(), &ok).await.unwrap();
    let err = tds
        .patch(
            "ok",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storage": {"shared": {"storageClassName": "slow"}}}})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("storageClassName is immutable"), "{err}");
}

/// Is every field of `rendered` present with the same value in `live`?
fn subset(rendered: &Value, live: &Value, path: &str) -> Result<(), String> {
    match (rendered, live) {
        (Value::Object(r), Value::Object(l)) => {
            for (k, v) in r {
                let lv = l
                    .get(k)
                    .ok_or_else(|| format!("{path}.{k} missing in the cluster"))?;
                subset(v, lv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(r), Value::Array(l)) => {
            if r.len() != l.len() {
                return Err(format!(
                    "{path}: {} items rendered, {} in the cluster",
                    r.len(),
                    l.len()
                ));
            }
            r.iter()
                .zip(l)
                .enumerate()
                .try_for_each(|(i, (a, b))| subset(a, b, &format!("{path}[{i}]")))
        }
        (a, b) if a == b => Ok(()),
        (a, b) => Err(format!("{path}: rendered {a}, cluster has {b}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_output_equals_what_the_cluster_received() {
    let env = Env::new("op-render").await;
    // workflows.storageClasses: render cannot see the cluster's default StorageClass.
    env.create(json!({"version": "1.5.0", "domain": "tator.example.com", "aliases": ["tator.lab.example.com"],
                      "workflows": {"storageClasses": ["standard"]},
                      "api": {"autoscaling": {"minReplicas": 2, "maxReplicas": 4}},
                      "nginx": {"maintenance": true, "service": {"annotations": {"example.com/lb": "x"}}}})).await;
    let td = env.wait_ready(Duration::from_secs(90)).await;
    let rendered = render::render_values(&td).unwrap();
    assert!(rendered.len() >= 12, "rendered {} objects", rendered.len());
    for obj in rendered {
        let kind = obj["kind"].as_str().unwrap().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let (group, version) = match obj["apiVersion"].as_str().unwrap().split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (
                String::new(),
                obj["apiVersion"].as_str().unwrap().to_string(),
            ),
        };
        let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &kind));
        let api: Api<DynamicObject> = Api::namespaced_with(env.client.clone(), &env.ns, &ar);
        let live = serde_json::to_value(api.get(&name).await.unwrap()).unwrap();
        if let Err(e) = subset(&obj, &live, &format!("{kind}/{name}")) {
            panic!("render differs from the cluster: {e}");
        }
    }
    // The rendered YAML parses back as the same objects (what `tator-operator render` prints).
    let manifest = serde_yaml::to_string(&td).unwrap();
    let yaml = render::render(&manifest).unwrap();
    assert!(yaml.contains("kind: HorizontalPodAutoscaler"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_migrate_first_and_a_failed_migration_keeps_the_old_version() {
    let env = Env::new("op-upgrade").await;
    env.create(minimal()).await;
    env.wait_ready(Duration::from_secs(90)).await;
    assert_eq!(
        env.api_image().await,
        "cvisionai/tator_online:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a"
    );

    // A migration made to fail through kwok's chaos stage.
    env.patch_spec(
        json!({"version": "1.6.0", "image": {"tag": "1.6.0"}, "migrations": {"podOverrides": {"metadata": {"labels": {
        "pod-container-running-failed.stage.kwok.x-k8s.io": "true"}}}}}),
    )
    .await;
    let (_, reason, message) = env
        .wait_condition(
            "Migrations",
            Cond::Reason("Failed"),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(reason, "Failed");
    assert!(message.contains("1.5.0 keeps serving"), "{message}");
    assert_eq!(env.condition("Stalled").await.unwrap().0, "True");
    assert_eq!(env.condition("Ready").await.unwrap().0, "False");
    assert_eq!(
        env.api_image().await,
        "cvisionai/tator_online:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a",
        "the API rolled before migrations succeeded"
    );
    let td = env.tds().get("tator").await.unwrap();
    assert_eq!(td.status.unwrap().version.as_deref(), Some("1.5.0"));

    // Fixing the cause (dropping the chaos label) retries with a new Job, then the API rolls.
    env.patch_spec(json!({"migrations": {"podOverrides": null}}))
        .await;
    let jobs = env.api::<Job>();
    let deploys = env.api::<Deployment>();
    wait_for("the API to run 1.6.0", Duration::from_secs(60), || async {
        let d = deploys.get("tator-api").await.map_err(|e| e.to_string())?;
        let image = d
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .clone()
            .unwrap();
        if image.ends_with(":1.6.0") {
            return Ok(());
        }
        // Until then, the 1.6.0 API must not exist while a 1.6.0 migration is unfinished.
        let list = jobs
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        Err(format!("{image}; {} migration jobs", list.items.len()))
    })
    .await
    .unwrap();
    let td = env.wait_ready(Duration::from_secs(60)).await;
    assert_eq!(td.status.unwrap().version.as_deref(), Some("1.6.0"));

    // A downgrade is refused and leaves 1.6.0 serving.
    env.patch_spec(json!({"version": "1.5.9"})).await;
    let (_, _, message) = env
        .wait_condition(
            "Stalled",
            Cond::Reason("DowngradeRefused"),
            Duration::from_secs(30),
        )
        .await;
    assert!(
        message.contains("older than the serving release 1.6.0"),
        "{message}"
    );
    assert_eq!(env.api_image().await, "cvisionai/tator_online:1.6.0");
}

#[test]
fn committed_crd_matches_the_rust_types() {
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds/tator.io_tatordeployments.yaml"),
    )
    .unwrap();
    assert_eq!(
        committed,
        render::crd_yaml().unwrap(),
        "crds/ is stale: run `make crds`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_stops_progressing_is_reported_as_stalled() {
    let env = Env::new("op-stall").await;
    // API pods that no node can take never become available.
    env.create(
        json!({"version": "1.5.0", "domain": "tator.example.com", "progressDeadlineSeconds": 10,
                      "api": {"nodeSelector": {"tator.io/no-such-node": "true"}}}),
    )
    .await;
    let (_, reason, message) = env
        .wait_condition("Stalled", Cond::Status("True"), Duration::from_secs(90))
        .await;
    assert_eq!(reason, "ProgressDeadlineExceeded");
    assert!(message.contains("tator-api"), "{message}");
    let (status, reason, _) = env.condition("Api").await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );
    assert_eq!(env.condition("Ready").await.unwrap().0, "False");
    let td = env.tds().get("tator").await.unwrap();
    assert_eq!(td.status.unwrap().phase.as_deref(), Some("Failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_ref_gets_a_cert_manager_certificate() {
    let env = Env::new("op-cert").await;
    install_crds(&env.client, &shared_dir().join("crds/cert-manager"))
        .await
        .unwrap();
    env.create(json!({"version": "1.5.0", "domain": "tator.example.com", "aliases": ["tator.lab.example.com"],
                      "tls": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}}))
        .await;
    let certs: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), &env.ns, &certificate_resource());
    let cert = wait_for("the Certificate", Duration::from_secs(30), || async {
        certs
            .get_opt("tator-tls")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "missing".to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        cert.data["spec"]["dnsNames"],
        json!(["tator.example.com", "tator.lab.example.com"])
    );
    assert_eq!(cert.data["spec"]["secretName"], "tator-tls");
    assert_eq!(
        cert.data["spec"]["issuerRef"],
        json!({"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    env.wait_condition(
        "Nginx",
        Cond::Reason("CertificateNotReady"),
        Duration::from_secs(30),
    )
    .await;

    // Play cert-manager: write the Secret and mark the Certificate Ready.
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "tator-tls"}, "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": "not a real certificate", "tls.key": "not a real key"}
    }))
    .unwrap();
    env.api::<Secret>()
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    certs
        .patch_status(
            "tator-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "message": "issued"}]}})),
        )
        .await
        .unwrap();
    env.wait_ready(Duration::from_secs(60)).await;
    let td = env.tds().get("tator").await.unwrap();
    assert!(td.status.unwrap().url.unwrap().starts_with("https://"));
    let svc: Service = env.api().get("tator-nginx").await.unwrap();
    let ports: Vec<i32> = svc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .iter()
        .map(|p| p.port)
        .collect();
    assert_eq!(ports, [80, 443]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_ref_without_cert_manager_is_reported() {
    // A cluster of its own: the shared one may have cert-manager's CRDs from another test.
    let cluster = tokio::task::spawn_blocking(|| TestCluster::start("no-cert-manager"))
        .await
        .unwrap()
        .expect("a second cluster must start");
    let env = Env::with_client(cluster.client().await.unwrap(), "op-nocm").await;
    env.create(json!({"version": "1.5.0", "domain": "tator.example.com",
                      "tls": {"issuerRef": {"name": "letsencrypt"}}}))
        .await;
    env.wait_condition(
        "Nginx",
        Cond::Reason("CertManagerNotInstalled"),
        Duration::from_secs(60),
    )
    .await;
    // Everything else keeps working.
    env.wait_condition("Api", Cond::Status("True"), Duration::from_secs(60))
        .await;
    drop(env);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_keeps_data_unless_the_policy_says_delete() {
    let env = Env::new("op-delete").await;
    env.create(
        json!({"version": "1.5.0", "domain": "tator.example.com", "deletionPolicy": "Delete"}),
    )
    .await;
    env.wait_ready(Duration::from_secs(90)).await;
    // With Delete, data children are owned and go with the TatorDeployment.
    let pvc: PersistentVolumeClaim = env.api().get("tator-shared").await.unwrap();
    assert_eq!(pvc.owner_references().len(), 1);
    let secret: Secret = env.api().get("tator-postgres").await.unwrap();
    assert_eq!(secret.owner_references().len(), 1);
    // Switching to Retain releases them again, without touching the generated values.
    let before = secret.data.clone();
    env.patch_spec(json!({"deletionPolicy": "Retain"})).await;
    let secrets = env.api::<Secret>();
    wait_for(
        "the Secret to be released",
        Duration::from_secs(20),
        || async {
            let s = secrets
                .get("tator-postgres")
                .await
                .map_err(|e| e.to_string())?;
            if s.owner_references().is_empty() {
                Ok(())
            } else {
                Err("still owned".into())
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        secrets.get("tator-postgres").await.unwrap().data,
        before,
        "a generated Secret was rewritten"
    );
    env.wait_ready(Duration::from_secs(60)).await;
    env.tds()
        .delete("tator", &DeleteParams::foreground())
        .await
        .unwrap();
    env.wait_none::<Deployment>("children to be collected", "", Duration::from_secs(60))
        .await;
    assert!(
        secrets.get_opt("tator-postgres").await.unwrap().is_some(),
        "Retain must keep generated Secrets"
    );
    assert!(
        env.api::<PersistentVolumeClaim>()
            .get_opt("tator-shared")
            .await
            .unwrap()
            .is_some(),
        "Retain must keep the shared volume"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_holds_changes_back_and_stopped_scales_to_zero_keeping_data() {
    let env = Env::new("op-pause").await;
    env.create(minimal()).await;
    env.wait_ready(Duration::from_secs(90)).await;
    let (status, reason, _) = env.condition("Paused").await.unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "NotPaused"));

    // Paused: a spec change is reported, not applied.
    env.patch_spec(json!({"paused": true, "ui": {"replicas": 2}}))
        .await;
    let (_, _, msg) = env
        .wait_condition(
            "Paused",
            Cond::Reason("ChangesPending"),
            Duration::from_secs(30),
        )
        .await;
    assert!(msg.contains("Deployment/tator-ui"), "{msg}");
    let (ready, reason, _) = env.condition("Ready").await.unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Paused"));
    // Another reconcile while paused: still nothing applied.
    common::poke_and_settle(&env.ctx, &env.client, &env.ns, "tator").await;
    let ui = env.api::<Deployment>().get("tator-ui").await.unwrap();
    assert_eq!(
        ui.spec.as_ref().unwrap().replicas,
        Some(1),
        "a paused installation changed"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = env.api();
    wait_for(
        "a ChangesPending Event",
        Duration::from_secs(20),
        || async {
            let evs = events
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            evs.items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ChangesPending")
                        && e.type_.as_deref() == Some("Warning")
                })
                .then_some(())
                .ok_or_else(|| "none yet".to_string())
        },
    )
    .await
    .unwrap();

    // Unpaused: the held change goes through.
    env.patch_spec(json!({"paused": false})).await;
    env.wait_replicas("tator-ui", 2, Duration::from_secs(30))
        .await;
    env.wait_ready(Duration::from_secs(60)).await;

    // Stopped: every workload at zero, data kept.
    let claims_before = env
        .api::<PersistentVolumeClaim>()
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    env.patch_spec(json!({"stopped": true})).await;
    env.wait_condition("Ready", Cond::Reason("Stopped"), Duration::from_secs(30))
        .await;
    wait_for("everything at zero", Duration::from_secs(30), || async {
        let d = env
            .api::<Deployment>()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let s = env
            .api::<k8s_openapi::api::apps::v1::StatefulSet>()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let running: Vec<String> = d
            .items
            .iter()
            .filter(|x| x.spec.as_ref().unwrap().replicas != Some(0))
            .map(|x| x.name_any())
            .chain(
                s.items
                    .iter()
                    .filter(|x| x.spec.as_ref().unwrap().replicas != Some(0))
                    .map(|x| x.name_any()),
            )
            .collect();
        running
            .is_empty()
            .then_some(())
            .ok_or(format!("{running:?}"))
    })
    .await
    .unwrap();
    let td = env.tds().get("tator").await.unwrap();
    assert_eq!(td.status.unwrap().phase.as_deref(), Some("Stopped"));
    let claims_after = env
        .api::<PersistentVolumeClaim>()
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(claims_before, claims_after, "a claim went away");
    assert!(
        env.api::<Secret>()
            .get_opt("tator-postgres")
            .await
            .unwrap()
            .is_some()
    );

    // Started again.
    env.patch_spec(json!({"stopped": false})).await;
    env.wait_ready(Duration::from_secs(90)).await;
}
