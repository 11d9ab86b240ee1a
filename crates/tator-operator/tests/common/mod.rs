//! Set-up shared by the operator's integration tests; each test file includes it with
//! `mod common;`.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
    time::Duration,
};

use kube::Client;
use tator_operator::controller::{self, Context, Settings};
use tator_testbed::{
    Binaries,
    support::{install_crds, shared_client, workspace_root},
};

/// The shared test cluster, with this repository's CRDs (`crds/`) installed.
pub async fn cluster() -> Client {
    let client = shared_client()
        .await
        .expect("the shared test cluster must start");
    install_crds(&client, &workspace_root().join("crds"))
        .await
        .expect("the CRDs in crds/ must install");
    client
}

/// Waits until a reconcile that started after the first `runs` has ended and none is running:
/// every write the controller made for what happened before is done. What a "nothing happened"
/// check waits on instead of a fixed sleep (one TatorDeployment per controller: kube-runtime
/// never reconciles one object twice at once).
pub async fn settled_after(ctx: &Context, runs: u64) {
    tator_testbed::support::wait_for("a reconcile to end", Duration::from_secs(60), || async {
        let (started, ended) = (ctx.reconcile_count(), ctx.finished_count());
        (ended > runs && ended == started)
            .then_some(())
            .ok_or(format!(
                "{ended} of {started} reconciles ended; waiting for one past {runs}"
            ))
    })
    .await
    .unwrap();
}

/// Makes the controller reconcile and waits until that reconcile has ended: a foreign
/// annotation on the installation's NGINX ConfigMap, a child the operator watches without a
/// filter and leaves as it is (an annotation on the TatorDeployment itself changes no
/// generation, which the controller filters out).
pub async fn poke_and_settle(ctx: &Context, client: &Client, ns: &str, name: &str) {
    let runs = ctx.reconcile_count();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .to_string();
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), ns);
    cms.patch(
        &format!("{name}-nginx-conf"),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"test.tator.io/poke": now}}}),
        ),
    )
    .await
    .unwrap();
    settled_after(ctx, runs).await;
}

/// An in-process controller watching one namespace (concurrency 2, resync every 10 minutes),
/// with its context.
pub fn start_controller(client: &Client, ns: &str) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let settings = Settings {
        namespace: Some(ns.to_string()),
        concurrency: 2,
        resync: Duration::from_secs(600),
        ..Settings::default()
    };
    let ctx = Arc::new(Context::new(client.clone(), settings));
    let task = tokio::spawn(controller::run(ctx.clone()));
    (ctx, task)
}

// Tools the tests run (kubectl, helm) from the test-bed's tools folder.

pub fn tools_bin() -> PathBuf {
    Binaries::locate()
        .expect("the test-bed binaries (make tools)")
        .bin_dir
}

/// Runs a command with `stdin`, returning its output (whatever its exit status).
pub fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm` with its caches in `dir` and, when given, a kubeconfig.
pub fn helm(dir: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(tools_bin().join("helm"));
    cmd.args(args)
        .env("HELM_CACHE_HOME", dir.join("helm/cache"))
        .env("HELM_CONFIG_HOME", dir.join("helm/config"))
        .env("HELM_DATA_HOME", dir.join("helm/data"));
    match kubeconfig {
        Some(k) => cmd.env("KUBECONFIG", k),
        None => cmd.env_remove("KUBECONFIG"),
    };
    run(cmd, None)
}

/// The annotations by which a test's Secret consents to the TatorDeployments `names` (comma
/// separated, or `*`).
#[allow(dead_code)]
pub fn consent(names: &str) -> serde_json::Value {
    serde_json::json!({ tator_operator::consent::ANNOTATION: names })
}

/// [`consent`] as a map for typed `ObjectMeta`.
#[allow(dead_code)]
pub fn consent_map(names: &str) -> std::collections::BTreeMap<String, String> {
    [(
        tator_operator::consent::ANNOTATION.to_string(),
        names.to_string(),
    )]
    .into()
}

/// Merges `spec` into the spec of the TatorDeployment `name` (a JSON merge patch).
#[allow(dead_code)]
pub async fn patch_spec(
    api: &kube::Api<tator_api::TatorDeployment>,
    name: &str,
    spec: serde_json::Value,
) {
    api.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({ "spec": spec })),
    )
    .await
    .unwrap();
}
