//! Smoke tests that prove the local control plane is real: controllers run, pods reach Running on
//! kwok nodes, garbage collection and PodSecurity admission work, CronJobs fire, full Argo CRD
//! schemas are enforced, and several clusters run side by side. They fail (never skip) when the
//! control plane cannot start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams},
    discovery,
};
use serde_json::json;
use tator_testbed::support::{
    TestCluster, install_crds, namespace, shared_client, shared_dir, wait_for,
};

async fn client() -> Client {
    shared_client()
        .await
        .expect("the shared test cluster must start")
}

fn from_json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

fn restricted_container() -> serde_json::Value {
    json!({
        "name": "app", "image": "example.invalid/app:1",
        "securityContext": {
            "allowPrivilegeEscalation": false, "runAsNonRoot": true, "runAsUser": 1000,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_reach_running_on_kwok_nodes() {
    let client = client().await;
    let ns = namespace(&client, "smoke-deploy", false).await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let d: Deployment = from_json(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [restricted_container()]}}
        }
    }));
    deploys.create(&PostParams::default(), &d).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let running = wait_for("2 web pods Running", Duration::from_secs(60), || async {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map_err(|e| e.to_string())?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        if running.len() == 2 {
            Ok(running)
        } else {
            Err(format!("{} running", running.len()))
        }
    })
    .await
    .unwrap();
    for pod in running {
        let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
        assert!(node.starts_with("kwok-node-"), "scheduled on {node}");
        let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
        assert!(ip.starts_with("127."), "pod IP {ip} must be loopback");
    }
    wait_for("deployment available", Duration::from_secs(30), || async {
        let d = deploys.get("web").await.map_err(|e| e.to_string())?;
        let ready = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        if ready == 2 {
            Ok(())
        } else {
            Err(format!("{ready} available"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_owner_garbage_collects_owned_configmap() {
    let client = client().await;
    let ns = namespace(&client, "smoke-gc", false).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = cms
        .create(
            &PostParams::default(),
            &from_json(json!({"metadata": {"name": "owner"}})),
        )
        .await
        .unwrap();
    let owned: ConfigMap = from_json(json!({
        "metadata": {"name": "owned", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner.uid().unwrap(), "controller": true, "blockOwnerDeletion": true
        }]}
    }));
    cms.create(&PostParams::default(), &owned).await.unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    wait_for(
        "owned ConfigMap to be collected",
        Duration::from_secs(30),
        || async {
            match cms.get_opt("owned").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(_) => Err("still present".into()),
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_pod_is_rejected_in_restricted_namespace() {
    let client = client().await;
    let ns = namespace(&client, "smoke-psa", true).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let privileged: Pod = from_json(json!({
        "metadata": {"name": "bad"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/x:1",
                                  "securityContext": {"privileged": true}}]}
    }));
    let err = pods
        .create(&PostParams::default(), &privileged)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("violates PodSecurity \"restricted"),
        "unexpected error: {msg}"
    );
    // A compliant pod is admitted in the same namespace.
    let good: Pod = from_json(json!({
        "metadata": {"name": "good"},
        "spec": {"containers": [restricted_container()]}
    }));
    pods.create(&PostParams::default(), &good).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_produces_a_job() {
    let client = client().await;
    let ns = namespace(&client, "smoke-cron", false).await.unwrap();
    let crons: Api<CronJob> = Api::namespaced(client.clone(), &ns);
    let cron: CronJob = from_json(json!({
        "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [restricted_container()]}}}}}
    }));
    crons.create(&PostParams::default(), &cron).await.unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "a Job created by the CronJob to succeed",
        Duration::from_secs(100),
        || async {
            let list = jobs
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let done = list.items.iter().any(|j| {
                j.owner_references().iter().any(|o| o.kind == "CronJob")
                    && j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) >= 1
            });
            if done {
                Ok(())
            } else {
                Err(format!("{} jobs, none succeeded", list.items.len()))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_argo_crd_rejects_a_template_with_a_wrongly_typed_field() {
    let client = client().await;
    let argo = shared_dir().join("crds/argo-workflows/argoproj.io_workflowtemplates.yaml");
    install_crds(&client, &argo).await.unwrap();
    let ns = namespace(&client, "smoke-argo", false).await.unwrap();
    let (ar, _) = discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTemplate"),
    )
    .await
    .unwrap();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let good: DynamicObject = from_json(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
        "metadata": {"name": "good"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main",
                 "container": {"image": "example.invalid/x:1", "command": ["true"]}}]}
    }));
    api.create(&PostParams::default(), &good).await.unwrap();
    let bad: DynamicObject = from_json(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "WorkflowTemplate",
        "metadata": {"name": "bad"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main",
                 "container": {"image": "example.invalid/x:1", "command": "true"}}]}
    }));
    let err = api
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("command"), "unexpected error: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancer_services_get_loopback_ingress_and_claims_bind() {
    let client = client().await;
    let ns = namespace(&client, "smoke-lb", false).await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let svc: Service = from_json(json!({
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "selector": {"app": "x"}, "ports": [{"port": 80}]}
    }));
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let ip = wait_for("load-balancer ingress", Duration::from_secs(20), || async {
        let s = svcs.get("lb").await.map_err(|e| e.to_string())?;
        s.status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.first().and_then(|i| i.ip.clone()))
            .ok_or_else(|| "no ingress".to_string())
    })
    .await
    .unwrap();
    let parsed: std::net::Ipv4Addr = ip.parse().unwrap();
    assert!(parsed.is_loopback(), "{ip} is not loopback");
    let cluster_ip = svcs
        .get("lb")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    assert!(
        cluster_ip.starts_with("127.96."),
        "ClusterIP {cluster_ip} outside the loopback service range"
    );

    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvc: PersistentVolumeClaim = from_json(json!({
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    }));
    pvcs.create(&PostParams::default(), &pvc).await.unwrap();
    wait_for("claim to bind", Duration::from_secs(20), || async {
        let p = pvcs.get("data").await.map_err(|e| e.to_string())?;
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        if phase == "Bound" { Ok(()) } else { Err(phase) }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_run_side_by_side_with_separate_state() {
    let first = client().await;
    let mut second_cluster = tokio::task::spawn_blocking(|| TestCluster::start("second"))
        .await
        .unwrap()
        .expect("a second cluster must start");
    let second = second_cluster.client().await.unwrap();
    let ns = namespace(&first, "smoke-two", false).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(first.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &from_json(json!({"metadata": {"name": "only-here"}})),
    )
    .await
    .unwrap();
    let ns_in_second: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(second.clone());
    assert!(
        ns_in_second.get_opt(&ns).await.unwrap().is_none(),
        "namespace leaked into the second cluster"
    );
    // The second cluster is fully functional on its own.
    let ns2 = namespace(&second, "smoke-two", false).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(second.clone(), &ns2);
    pods.create(
        &PostParams::default(),
        &from_json(json!({
            "metadata": {"name": "p"}, "spec": {"containers": [restricted_container()]}
        })),
    )
    .await
    .unwrap();
    wait_for(
        "pod Running in the second cluster",
        Duration::from_secs(60),
        || async {
            let p = pods.get("p").await.map_err(|e| e.to_string())?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            if phase == "Running" {
                Ok(())
            } else {
                Err(phase)
            }
        },
    )
    .await
    .unwrap();
    let dir = second_cluster.dir.clone();
    tokio::task::spawn_blocking(move || second_cluster.stop())
        .await
        .unwrap();
    assert!(
        !dir.exists(),
        "the second cluster's folder should be removed after stop"
    );
}
