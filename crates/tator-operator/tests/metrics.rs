//! `/metrics`, `/healthz` and `/readyz` of the operator binary, scraped while it reconciles a
//! TatorDeployment on the real control plane: the documented series are there with sensible
//! values, and no secret value is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use tator_api::TatorDeployment;
use tator_testbed::support::{namespace, shared_kubeconfig, unused_port, wait_for};

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.1 GET on loopback: (status code, body).
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_documented_series() {
    let client = common::cluster().await;
    let ns = namespace(&client, "metrics", true).await.unwrap();
    let canary = "metrics-canary-Secret-31f";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "aws", "annotations": common::consent("*")},
        "stringData": {"accessKeyId": "AKIAMETRICS", "secretAccessKey": canary}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &s).await.unwrap();

    let port = unused_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("operator.log");
    let out = std::fs::File::create(&log).unwrap();
    let op = Operator(
        Command::new(PathBuf::from(env!("CARGO_BIN_EXE_tator-operator")))
            .args([
                "run",
                "--namespace",
                &ns,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
            ])
            .env("KUBECONFIG", shared_kubeconfig().unwrap())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap(),
    );
    wait_for("/healthz", Duration::from_secs(20), || async {
        match get(port, "/healthz") {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();

    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    // A backup bucket whose endpoint answers nothing: its check fails, and its key must not
    // reach any series.
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com",
                 "objectStorage": {"backup": {"external": {"storeType": "MINIO", "bucketName": "backup",
                     "endpoint": format!("http://127.0.0.1:{}", unused_port()), "credentialsSecret": "aws"}}}}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();
    let body = wait_for("the series of a reconciled installation", Duration::from_secs(180), || async {
        let (code, body) = get(port, "/metrics")?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        let wanted = [
            r#"tator_operator_condition{namespace="NS",name="tator",type="Api"} 1"#,
            r#"tator_operator_condition{namespace="NS",name="tator",type="ObjectStorageReady"} 0"#,
            r#"tator_operator_migrations_total{result="succeeded"} 1"#,
        ];
        for w in wanted {
            let w = w.replace("NS", &ns);
            if !body.contains(&w) {
                return Err(format!("no {w} yet"));
            }
        }
        Ok(body)
    })
    .await
    .unwrap_or_else(|e| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        panic!("{e}\noperator log (last lines, newest first):\n{}", tail.join("\n"))
    });
    for series in [
        "tator_operator_reconciles_total ",
        "tator_operator_reconcile_duration_seconds_bucket{le=\"0.5\"}",
        "tator_operator_reconcile_duration_seconds_count ",
        "tator_operator_reconcile_errors_total{category=\"ApplyFailed\"}",
        "tator_operator_migrations_total{result=\"failed\"} 0",
        "tator_operator_component_ready_replicas{namespace=",
        "tator_operator_component_desired_replicas{namespace=",
        "tator_operator_kubernetes_requests_total{verb=\"apply\",resource=\"deployments\"}",
        "tator_operator_kubernetes_requests_total{verb=\"watch\",resource=\"tatordeployments\"}",
    ] {
        assert!(body.contains(series), "no {series} in:\n{body}");
    }
    let reconciles: f64 = body
        .lines()
        .find(|l| l.starts_with("tator_operator_reconciles_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(reconciles >= 2.0, "{reconciles}");
    assert!(body.trim_end().ends_with("# EOF"));
    assert!(!body.contains(canary) && !body.contains("AKIAMETRICS"));
    let (code, ready) = get(port, "/readyz").unwrap();
    assert_eq!(code, 200, "{ready}");
    // Events were written by this operator too; nothing more to check there.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    assert!(
        !events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    drop(op);
}
