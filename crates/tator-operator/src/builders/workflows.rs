//! Argo workflows: the transcode and archive-import WorkflowTemplates, the ServiceAccount and
//! Role their pods run with, and the Role that lets Tator's REST API submit workflows.
//!
//! The same builders serve this cluster (children with owner references) and job clusters
//! (labelled objects the operator prunes itself): [`Target`] says which.
//!
//! Where only Argo's minimal CRDs are installed the API server accepts any WorkflowTemplate, so
//! every template passes [`validate_template`] before it is applied anywhere.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::{
        core::v1::ServiceAccount,
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use serde_json::{Value, json};
use tator_api::{JobKind, labels};

use super::{
    common::{child_labels, short_hash},
    names::{API_IDENTITY, OWNER_UID_LABEL},
};
use crate::validate::ValidatedTator;

/// Component label of the workflow pods' identity.
pub const WORKFLOW: &str = "workflow";
/// Component label of the submit Role (Tator's REST API).
pub const WORKFLOW_SUBMIT: &str = "workflow-submit";
/// Component label of the WorkflowTemplates.
pub const WORKFLOW_TEMPLATE: &str = "workflow-template";
/// The template names, as Tator's workflows know them.
pub const TRANSCODE: &str = "transcode";
pub const ARCHIVE_IMPORT: &str = "archive-import";

/// Argo's WorkflowTemplate.
pub fn workflow_template_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTemplate"),
        "workflowtemplates",
    )
}

/// Where objects go: this cluster's namespace with owner references, or a job cluster's
/// namespace with the owner's uid as a label.
#[derive(Clone, Debug)]
pub struct Target {
    pub namespace: String,
    pub owner: Option<OwnerReference>,
    /// Extra labels (job clusters: [`OWNER_UID_LABEL`]).
    pub labels: BTreeMap<String, String>,
}

impl Target {
    /// This cluster, in the TatorDeployment's namespace.
    pub fn local(t: &ValidatedTator) -> Self {
        Self {
            namespace: t.namespace.clone(),
            owner: Some(t.owner.clone()),
            labels: BTreeMap::new(),
        }
    }

    /// A job cluster's namespace.
    pub fn remote(t: &ValidatedTator, namespace: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            owner: None,
            labels: BTreeMap::from([(OWNER_UID_LABEL.to_string(), t.owner.uid.clone())]),
        }
    }

    pub fn meta(&self, t: &ValidatedTator, name: String, component: &str) -> ObjectMeta {
        let mut l = child_labels(t, component, None);
        l.extend(self.labels.clone());
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(l),
            owner_references: self.owner.clone().map(|o| vec![o]),
            ..Default::default()
        }
    }
}

/// Which workflows run in this cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalWorkflows {
    /// Transcodes run here (no job cluster runs them).
    pub transcode: bool,
    /// Algorithm workflows may run here (not `algorithms.requireRemoteCluster`).
    pub algorithms: bool,
}

impl LocalWorkflows {
    pub fn of(t: &ValidatedTator) -> Self {
        let remote_transcode = t
            .spec
            .job_clusters
            .iter()
            .any(|c| c.runs.contains(&JobKind::Transcode));
        Self {
            transcode: !remote_transcode,
            algorithms: !t.spec.algorithms.require_remote_cluster,
        }
    }

    pub fn any(self) -> bool {
        self.transcode || self.algorithms
    }
}

/// The image of the workflow steps: the spec's, or `<registry>/tator_client:<version>`.
pub fn client_image(t: &ValidatedTator, version: &str) -> String {
    t.spec
        .workflows
        .transcode
        .client_image
        .clone()
        .unwrap_or_else(|| format!("{}/tator_client:{version}", t.spec.image.registry))
}

/// Bytes of a binary quantity such as `8Gi` (validated by the CRD).
pub fn quantity_bytes(q: &str) -> Option<u64> {
    let (num, mult) = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
    ]
    .iter()
    .find_map(|(s, m)| q.strip_suffix(s).map(|n| (n, *m)))?;
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// The ServiceAccount workflow pods run as and the Role Argo's executor needs: it records step
/// results as `workflowtaskresults` (create, patch), and nothing else.
pub fn executor_rbac(t: &ValidatedTator, target: &Target) -> (ServiceAccount, Role, RoleBinding) {
    let name = t.child_name(WORKFLOW);
    let sa = ServiceAccount {
        metadata: target.meta(t, name.clone(), WORKFLOW),
        ..Default::default()
    };
    let role = Role {
        metadata: target.meta(t, name.clone(), WORKFLOW),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["argoproj.io".into()]),
            resources: Some(vec!["workflowtaskresults".into()]),
            verbs: vec!["create".into(), "patch".into()],
            ..Default::default()
        }]),
    };
    let binding = binding(t, target, &name, WORKFLOW, &name, &target.namespace);
    (sa, role, binding)
}

/// The Role that lets Tator submit, list and delete Workflows (and read the templates they
/// refer to), bound to `subject` (a ServiceAccount in `subject_ns`).
pub fn submit_rbac(
    t: &ValidatedTator,
    target: &Target,
    subject: &str,
    subject_ns: &str,
) -> (Role, RoleBinding) {
    let name = t.child_name(WORKFLOW_SUBMIT);
    let role = Role {
        metadata: target.meta(t, name.clone(), WORKFLOW_SUBMIT),
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["argoproj.io".into()]),
                resources: Some(vec!["workflows".into()]),
                verbs: vec![
                    "create".into(),
                    "get".into(),
                    "list".into(),
                    "delete".into(),
                ],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["argoproj.io".into()]),
                resources: Some(vec!["workflowtemplates".into()]),
                verbs: vec!["get".into(), "list".into()],
                ..Default::default()
            },
        ]),
    };
    let b = binding(t, target, &name, WORKFLOW_SUBMIT, subject, subject_ns);
    (role, b)
}

fn binding(
    t: &ValidatedTator,
    target: &Target,
    role: &str,
    component: &str,
    sa: &str,
    sa_ns: &str,
) -> RoleBinding {
    RoleBinding {
        metadata: target.meta(t, role.to_string(), component),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: role.to_string(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.to_string(),
            namespace: Some(sa_ns.to_string()),
            ..Default::default()
        }]),
    }
}

/// The identity of Tator's REST API and workers in this cluster.
pub fn api_service_account(t: &ValidatedTator) -> ServiceAccount {
    ServiceAccount {
        metadata: Target::local(t).meta(t, t.child_name(API_IDENTITY), API_IDENTITY),
        // Tokens are mounted only where pods use them (see the API Deployment).
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// The local workflow objects: the API's identity always; the executor identity and the submit
/// Role when anything runs here.
pub fn local_rbac(t: &ValidatedTator) -> (Vec<ServiceAccount>, Vec<Role>, Vec<RoleBinding>) {
    let mut sas = vec![api_service_account(t)];
    let (mut roles, mut bindings) = (Vec::new(), Vec::new());
    if LocalWorkflows::of(t).any() {
        let target = Target::local(t);
        let (sa, role, b) = executor_rbac(t, &target);
        sas.push(sa);
        roles.push(role);
        bindings.push(b);
        let (role, b) = submit_rbac(t, &target, &t.child_name(API_IDENTITY), &t.namespace);
        roles.push(role);
        bindings.push(b);
    }
    (sas, roles, bindings)
}

fn restricted_container() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn restricted_pod() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn transcode_resources(t: &ValidatedTator) -> Value {
    let mut r = match &t.spec.workflows.transcode.resources {
        Some(r) => serde_json::to_value(r).unwrap_or(Value::Null),
        None => json!({
            "limits": {"cpu": "4", "memory": "8Gi"},
            "requests": {"cpu": "1", "memory": "2Gi"},
        }),
    };
    if t.spec.workflows.transcode.gpu {
        r["limits"]["nvidia.com/gpu"] = json!("1");
    }
    r
}

fn small_resources() -> Value {
    json!({
        "limits": {"cpu": "500m", "memory": "512Mi"},
        "requests": {"cpu": "50m", "memory": "64Mi"},
    })
}

fn retry(t: &ValidatedTator) -> Value {
    json!({
        "limit": t.spec.workflows.transcode.retry_limit.to_string(),
        "retryPolicy": "Always",
        "backoff": {"duration": "5s", "factor": 2, "maxDuration": "30m"},
    })
}

fn param(name: &str) -> Value {
    json!({"name": name})
}

fn param_default(name: &str, value: impl Into<Value>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn wf(p: &str) -> String {
    format!("{{{{workflow.parameters.{p}}}}}")
}

/// Parameters both templates take (Tator's names).
fn common_parameters(t: &ValidatedTator, version: &str) -> Vec<Value> {
    let scheme = if t.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = format!("{scheme}://{}", t.spec.domain);
    vec![
        param("url"),
        param("token"),
        param("project"),
        param_default("upload_name", "upload"),
        param_default("host", host.clone()),
        param_default("rest_url", format!("{host}/rest")),
        param_default("type", "-1"),
        param_default("section", ""),
        param_default("gid", ""),
        param_default("uid", ""),
        param_default("user", ""),
        param_default("client_image", client_image(t, version)),
        param_default("attributes", "{}"),
        param_default("media_id", "-1"),
        param_default("size", "0"),
        param_default("scratch_size", "10Gi"),
    ]
}

fn step_container(
    t: &ValidatedTator,
    command: Vec<String>,
    resources: Value,
    scratch: Option<&str>,
) -> Value {
    let _ = t;
    let mut c = json!({
        "image": wf("client_image"),
        "imagePullPolicy": "IfNotPresent",
        "workingDir": "/scripts",
        "command": command,
        "resources": resources,
        "securityContext": restricted_container(),
    });
    if let Some(v) = scratch {
        c["volumeMounts"] = json!([{"name": v, "mountPath": "/work"}]);
    }
    c
}

fn exit_templates(t: &ValidatedTator, what: &str) -> Vec<Value> {
    vec![
        json!({
            "name": "exit-handler",
            "steps": [[{
                "name": "notify",
                "template": "notify-failure",
                "when": "{{workflow.status}} != Succeeded",
            }]],
        }),
        json!({
            "name": "notify-failure",
            "retryStrategy": {"limit": "3", "retryPolicy": "Always", "backoff": {"duration": "5s", "factor": 2}},
            "container": step_container(t, vec![
                "curl".into(), "--silent".into(), "--show-error".into(), "--fail".into(),
                "-X".into(), "POST".into(),
                "-H".into(), format!("Authorization: Token {}", wf("token")),
                "-H".into(), "Content-Type: application/json".into(),
                "-d".into(), format!(r#"{{"message": "{what} of {} failed ({{{{workflow.name}}}})", "send_as_email": false}}"#, wf("upload_name")),
                format!("{}/Notify", wf("rest_url")),
            ], small_resources(), None),
        }),
    ]
}

fn placement(t: &ValidatedTator, spec: &mut Value) {
    let w = &t.spec.workflows;
    let selector = if w.transcode.gpu {
        &w.gpu_node_selector
    } else {
        &w.cpu_node_selector
    };
    if !selector.is_empty() {
        spec["nodeSelector"] = json!(selector);
    }
    if w.transcode.gpu {
        spec["tolerations"] =
            json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]);
    }
}

fn template_object(t: &ValidatedTator, target: &Target, which: &str, spec: Value) -> DynamicObject {
    let mut obj = DynamicObject::new(&t.child_name(which), &workflow_template_resource())
        .within(&target.namespace);
    obj.metadata = target.meta(t, t.child_name(which), WORKFLOW_TEMPLATE);
    obj.data = json!({"spec": spec});
    obj
}

fn common_spec(t: &ValidatedTator, version: &str, entrypoint: &str, job_type: &str) -> Value {
    let w = &t.spec.workflows;
    let mut spec = json!({
        "entrypoint": entrypoint,
        "onExit": "exit-handler",
        "serviceAccountName": t.child_name(WORKFLOW),
        "arguments": {"parameters": common_parameters(t, version)},
        "podGC": {"strategy": w.pod_gc_strategy.as_str()},
        "ttlStrategy": {
            "secondsAfterSuccess": w.ttl_seconds_after_success,
            "secondsAfterFailure": w.ttl_seconds_after_failure,
            "secondsAfterCompletion": w.ttl_seconds_after_failure.max(w.ttl_seconds_after_success),
        },
        "securityContext": restricted_pod(),
        "podMetadata": {"labels": {
            "job_type": job_type,
            labels::INSTANCE: t.name,
            labels::MANAGED_BY: labels::MANAGER,
        }},
    });
    if !t.spec.image.pull_secrets.is_empty() {
        spec["imagePullSecrets"] = json!(
            t.spec
                .image
                .pull_secrets
                .iter()
                .map(|n| json!({"name": n}))
                .collect::<Vec<_>>()
        );
    }
    placement(t, &mut spec);
    spec
}

fn transcode_args(work_dir: &str, media_id: &str) -> Vec<String> {
    let mut a: Vec<String> = vec!["python3".into(), "-m".into(), "tator.transcode".into()];
    for (flag, value) in [
        ("--url", wf("url")),
        ("--work_dir", work_dir.to_string()),
        ("--host", wf("host")),
        ("--token", wf("token")),
        ("--project", wf("project")),
        ("--type", wf("type")),
        ("--name", wf("upload_name")),
        ("--section", wf("section")),
        ("--gid", wf("gid")),
        ("--uid", wf("uid")),
        ("--attributes", wf("attributes")),
        ("--media_id", media_id.to_string()),
    ] {
        a.push(flag.into());
        a.push(value);
    }
    a
}

/// Single-file transcode: scratch space in memory below `transcode.maxRamDiskSize` (2.5 times
/// the upload `size`), else an ephemeral volume from a volumeClaimTemplate of `scratch_size`.
pub fn transcode_template(t: &ValidatedTator, version: &str, target: &Target) -> DynamicObject {
    let ts = &t.spec.workflows.transcode;
    let ram = quantity_bytes(&ts.max_ram_disk_size).unwrap_or(8 << 30);
    // scratch = 2.5 × size < ram  ⇔  size < ram × 2 / 5
    let limit = ram / 5 * 2;
    // The schema of a claim wants a quantity, not a parameter: the template declares the
    // claim with maxRamDiskSize and the pod spec patch (a string Argo fills in) sizes it.
    let mut claim = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": ts.max_ram_disk_size}},
    });
    if let Some(sc) = &ts.scratch_storage_class {
        claim["storageClassName"] = json!(sc);
    }
    let size_patch = json!({"volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {
        "spec": {"resources": {"requests": {"storage": wf("scratch_size")}}}}}}]})
    .to_string();
    let container = step_container(
        t,
        transcode_args("/work", &wf("media_id")),
        transcode_resources(t),
        Some("scratch"),
    );
    let mut templates = vec![
        json!({
            "name": "one-shot-transcode",
            "steps": [[
                {"name": "in-memory", "template": "transcode-in-memory",
                 "when": format!("{} < {limit}", wf("size"))},
                {"name": "on-disk", "template": "transcode-on-disk",
                 "when": format!("{} >= {limit}", wf("size"))},
            ]],
        }),
        json!({
            "name": "transcode-in-memory",
            "retryStrategy": retry(t),
            "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": ts.max_ram_disk_size}}],
            "container": container.clone(),
        }),
        json!({
            "name": "transcode-on-disk",
            "retryStrategy": retry(t),
            "podSpecPatch": size_patch,
            "volumes": [{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": claim}}}],
            "container": container,
        }),
    ];
    templates.extend(exit_templates(t, "Transcode"));
    let mut spec = common_spec(t, version, "one-shot-transcode", "upload");
    spec["templates"] = json!(templates);
    template_object(t, target, TRANSCODE, spec)
}

fn outputs_from(names: &[&str]) -> Value {
    json!({"parameters": names.iter().map(|n| json!({
        "name": n,
        "valueFrom": {"path": format!("/work/{{{{workflow.name}}}}/{n}.json"), "default": "[]"},
    })).collect::<Vec<_>>()})
}

/// Archive import: download, unpack, then transcode every video, upload the images and import
/// the localizations and states, with a claimed scratch volume shared by the steps.
pub fn archive_import_template(
    t: &ValidatedTator,
    version: &str,
    target: &Target,
) -> DynamicObject {
    let ts = &t.spec.workflows.transcode;
    // A workflow-wide claim is sized by the spec (its schema takes no parameter).
    let mut claim = json!({
        "metadata": {"name": "transcode-scratch"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": ts.archive_scratch_size}},
        },
    });
    if let Some(sc) = &ts.scratch_storage_class {
        claim["spec"]["storageClassName"] = json!(sc);
    }
    let scratch = Some("transcode-scratch");
    let dir = "/work/{{workflow.name}}";
    let sh = |script: String| vec!["sh".to_string(), "-c".to_string(), script];
    let mut templates = vec![
        json!({
            "name": "unpack-pipeline",
            "dag": {"tasks": [
                {"name": "download", "template": "download"},
                {"name": "unpack", "template": "unpack", "dependencies": ["download"]},
                {"name": "delete", "template": "delete", "dependencies": ["unpack"]},
                {"name": "transcode", "template": "transcode-pipeline", "dependencies": ["unpack"],
                 "withParam": "{{tasks.unpack.outputs.parameters.videos}}",
                 "arguments": {"parameters": [{"name": "video", "value": "{{item}}"}]}},
                {"name": "image-upload", "template": "image-upload", "dependencies": ["unpack"],
                 "arguments": {"parameters": [{"name": "images", "value": "{{tasks.unpack.outputs.parameters.images}}"}]}},
                {"name": "import-localizations", "template": "data-import",
                 "dependencies": ["transcode", "image-upload"],
                 "arguments": {"parameters": [{"name": "kind", "value": "localizations"},
                     {"name": "files", "value": "{{tasks.unpack.outputs.parameters.localizations}}"}]}},
                {"name": "import-states", "template": "data-import",
                 "dependencies": ["transcode", "image-upload"],
                 "arguments": {"parameters": [{"name": "kind", "value": "states"},
                     {"name": "files", "value": "{{tasks.unpack.outputs.parameters.states}}"}]}},
            ]},
        }),
        json!({
            "name": "download",
            "retryStrategy": retry(t),
            "container": step_container(t, sh(format!(
                "mkdir -p {dir} && curl --fail --silent --show-error --location -o {dir}/archive \"$URL\"")),
                small_resources(), scratch),
        }),
        json!({
            "name": "unpack",
            "outputs": outputs_from(&["videos", "images", "localizations", "states"]),
            "container": step_container(t, vec!["bash".into(), "unpack.sh".into(),
                format!("{dir}/archive"), dir.to_string()], transcode_resources(t), scratch),
        }),
        json!({
            "name": "delete",
            "container": step_container(t, sh(
                "curl --fail --silent --show-error -X DELETE -H \"Authorization: Token $TOKEN\" \"$URL\"".into()),
                small_resources(), None),
        }),
        json!({
            "name": "transcode-pipeline",
            "inputs": {"parameters": [param("video")]},
            "dag": {"tasks": [
                {"name": "prepare", "template": "prepare",
                 "arguments": {"parameters": [{"name": "video", "value": "{{inputs.parameters.video}}"}]}},
                {"name": "transcode", "template": "transcode-workload", "dependencies": ["prepare"],
                 "withParam": "{{tasks.prepare.outputs.parameters.workloads}}",
                 "arguments": {"parameters": [{"name": "workload", "value": "{{item}}"}]}},
            ]},
        }),
        json!({
            "name": "prepare",
            "inputs": {"parameters": [param("video")]},
            "outputs": {"parameters": [{"name": "workloads",
                "valueFrom": {"path": "/tmp/workloads.json", "default": "[]"}}]},
            "retryStrategy": retry(t),
            "container": step_container(t, vec!["python3".into(), "-m".into(), "tator.transcode.prepare".into(),
                "--path".into(), "{{inputs.parameters.video}}".into(), "--work_dir".into(), dir.to_string(),
                "--host".into(), wf("host"), "--token".into(), wf("token"), "--project".into(), wf("project"),
                "--type".into(), wf("type"), "--section".into(), wf("section"), "--gid".into(), wf("gid"),
                "--uid".into(), wf("uid"), "--output".into(), "/tmp/workloads.json".into()],
                small_resources(), scratch),
        }),
        json!({
            "name": "transcode-workload",
            "inputs": {"parameters": [param("workload")]},
            "retryStrategy": retry(t),
            "container": step_container(t, vec!["python3".into(), "-m".into(), "tator.transcode.transcode".into(),
                "--workload".into(), "{{inputs.parameters.workload}}".into(), "--work_dir".into(), dir.to_string(),
                "--host".into(), wf("host"), "--token".into(), wf("token")],
                transcode_resources(t), scratch),
        }),
        json!({
            "name": "image-upload",
            "inputs": {"parameters": [param("images")]},
            "retryStrategy": retry(t),
            "container": step_container(t, vec!["python3".into(), "imageLoop.py".into(),
                "--images".into(), "{{inputs.parameters.images}}".into(),
                "--host".into(), wf("host"), "--token".into(), wf("token"), "--project".into(), wf("project"),
                "--gid".into(), wf("gid"), "--uid".into(), wf("uid"), "--section".into(), wf("section")],
                small_resources(), scratch),
        }),
        json!({
            "name": "data-import",
            "inputs": {"parameters": [param("kind"), param("files")]},
            "retryStrategy": retry(t),
            "container": step_container(t, vec!["python3".into(), "importDataFromCsv.py".into(),
                "--kind".into(), "{{inputs.parameters.kind}}".into(),
                "--files".into(), "{{inputs.parameters.files}}".into(),
                "--host".into(), wf("host"), "--token".into(), wf("token"), "--project".into(), wf("project")],
                small_resources(), scratch),
        }),
    ];
    // The download and delete steps read the URL and token from the environment (no shell
    // interpolation of parameters).
    for t in templates.iter_mut() {
        if matches!(t["name"].as_str(), Some("download") | Some("delete")) {
            t["container"]["env"] = json!([
                {"name": "URL", "value": wf("url")},
                {"name": "TOKEN", "value": wf("token")},
            ]);
        }
    }
    templates.extend(exit_templates(t, "Archive import"));
    let w = &t.spec.workflows;
    let mut spec = common_spec(t, version, "unpack-pipeline", "upload");
    spec["templates"] = json!(templates);
    spec["parallelism"] = json!(ts.archive_parallelism);
    spec["volumeClaimTemplates"] = json!([claim]);
    spec["volumeClaimGC"] = json!({"strategy": "OnWorkflowCompletion"});
    spec["ttlStrategy"]["secondsAfterFailure"] = json!(w.ttl_seconds_after_failure.max(604800));
    template_object(t, target, ARCHIVE_IMPORT, spec)
}

/// Both templates for a target, each checked by [`validate_template`].
pub fn templates(
    t: &ValidatedTator,
    version: &str,
    target: &Target,
) -> Result<Vec<DynamicObject>, String> {
    let all = vec![
        transcode_template(t, version, target),
        archive_import_template(t, version, target),
    ];
    for o in &all {
        let v = serde_json::to_value(o).map_err(|e| e.to_string())?;
        validate_template(&v).map_err(|errs| {
            format!(
                "WorkflowTemplate {}: {}",
                o.metadata.name.as_deref().unwrap_or_default(),
                errs.join("; ")
            )
        })?;
    }
    Ok(all)
}

/// Digest of the templates (a change re-applies them in job clusters).
pub fn digest(objs: &[DynamicObject]) -> String {
    short_hash(
        serde_json::to_string(objs).unwrap_or_default().as_bytes(),
        16,
    )
}

// ---- validation -------------------------------------------------------------------------------

const TEMPLATE_KINDS: [&str; 7] = [
    "container",
    "script",
    "steps",
    "dag",
    "resource",
    "suspend",
    "containerSet",
];

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// `{{prefix.X}}` references in every string of a value.
fn references(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::String(s) => {
            let mut rest = s.as_str();
            let open = format!("{{{{{prefix}");
            while let Some(i) = rest.find(&open) {
                let after = &rest[i + open.len()..];
                let end = after.find("}}").unwrap_or(after.len());
                out.insert(after[..end].trim().to_string());
                rest = &after[end..];
            }
        }
        Value::Array(a) => a.iter().for_each(|x| references(x, prefix, out)),
        Value::Object(m) => m.values().for_each(|x| references(x, prefix, out)),
        _ => {}
    }
}

fn names_of(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// What the operator checks in a WorkflowTemplate before applying it, so that a cluster with
/// only Argo's minimal CRDs (which accept anything) never gets a broken one: names, that the
/// entrypoint, exit handler, steps and DAG tasks refer to templates that exist, DAG dependencies
/// and task outputs, parameter references, volume mounts, resources and the PodSecurity
/// `restricted` settings of every container.
pub fn validate_template(obj: &Value) -> Result<(), Vec<String>> {
    let mut errs = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if !is_dns_label(name, 63) {
        errs.push(format!(
            "metadata.name {name:?} is not a DNS name of at most 63 characters"
        ));
    }
    let spec = &obj["spec"];
    let templates = spec["templates"].as_array().cloned().unwrap_or_default();
    if templates.is_empty() {
        errs.push("spec.templates is empty".into());
    }
    let mut by_name: BTreeMap<String, &Value> = BTreeMap::new();
    for tpl in &templates {
        let n = tpl["name"].as_str().unwrap_or_default();
        let valid = !n.is_empty()
            && n.len() <= 128
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && n.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            errs.push(format!("template name {n:?} is invalid"));
        }
        if by_name.insert(n.to_string(), tpl).is_some() {
            errs.push(format!("template {n:?} is defined twice"));
        }
        let kinds: Vec<&str> = TEMPLATE_KINDS
            .iter()
            .copied()
            .filter(|k| tpl.get(*k).is_some())
            .collect();
        if kinds.len() != 1 {
            errs.push(format!(
                "template {n:?} must have exactly one of {}, has {kinds:?}",
                TEMPLATE_KINDS.join("/")
            ));
        }
    }
    for (field, what) in [("entrypoint", "entrypoint"), ("onExit", "onExit")] {
        match spec[field].as_str() {
            Some(e) if by_name.contains_key(e) => {}
            Some(e) => errs.push(format!("{what} {e:?} names no template")),
            None if field == "entrypoint" => errs.push("spec.entrypoint is missing".into()),
            None => {}
        }
    }
    // Workflow parameters: every reference is declared.
    let declared = names_of(&spec["arguments"]["parameters"]);
    let mut used = BTreeSet::new();
    references(spec, "workflow.parameters.", &mut used);
    for u in used.difference(&declared) {
        errs.push(format!(
            "{{{{workflow.parameters.{u}}}}} is used but not declared"
        ));
    }
    let pod_sc = &spec["securityContext"];
    if pod_sc["runAsNonRoot"] != json!(true) {
        errs.push("spec.securityContext.runAsNonRoot must be true (PodSecurity restricted)".into());
    }
    if pod_sc["seccompProfile"]["type"] != json!("RuntimeDefault") {
        errs.push("spec.securityContext.seccompProfile must be RuntimeDefault".into());
    }
    let claims = names_of(
        &spec["volumeClaimTemplates"]
            .as_array()
            .map_or(json!([]), |a| {
                json!(
                    a.iter()
                        .map(|c| json!({"name": c["metadata"]["name"]}))
                        .collect::<Vec<_>>()
                )
            }),
    );
    for (n, tpl) in &by_name {
        let inputs = names_of(&tpl["inputs"]["parameters"]);
        let mut used = BTreeSet::new();
        references(tpl, "inputs.parameters.", &mut used);
        for u in used.difference(&inputs) {
            errs.push(format!(
                "template {n:?} uses input {u:?} it does not declare"
            ));
        }
        // Calls: steps and DAG tasks.
        let mut calls: Vec<&Value> = Vec::new();
        if let Some(groups) = tpl["steps"].as_array() {
            for g in groups {
                calls.extend(g.as_array().into_iter().flatten());
            }
        }
        let tasks: Vec<&Value> = tpl["dag"]["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .collect();
        calls.extend(tasks.iter().copied());
        let task_names: BTreeSet<&str> = tasks.iter().filter_map(|t| t["name"].as_str()).collect();
        for call in &calls {
            let callee = call["template"].as_str().unwrap_or_default();
            let Some(target) = by_name.get(callee) else {
                errs.push(format!(
                    "template {n:?} calls {callee:?}, which does not exist"
                ));
                continue;
            };
            // Arguments match the callee's inputs.
            let given = names_of(&call["arguments"]["parameters"]);
            let wanted = names_of(&target["inputs"]["parameters"]);
            for w in wanted.difference(&given) {
                errs.push(format!("{n:?} calls {callee:?} without its input {w:?}"));
            }
        }
        for task in &tasks {
            let tn = task["name"].as_str().unwrap_or_default();
            for d in task["dependencies"].as_array().into_iter().flatten() {
                let d = d.as_str().unwrap_or_default();
                if !task_names.contains(d) {
                    errs.push(format!(
                        "task {tn:?} in {n:?} depends on unknown task {d:?}"
                    ));
                }
            }
        }
        // Task outputs referred to exist.
        let mut outs = BTreeSet::new();
        references(tpl, "tasks.", &mut outs);
        for r in outs {
            let parts: Vec<&str> = r.split('.').collect();
            if let [task, "outputs", "parameters", p] = parts.as_slice() {
                let callee = tasks
                    .iter()
                    .find(|t| t["name"].as_str() == Some(task))
                    .and_then(|t| t["template"].as_str())
                    .and_then(|c| by_name.get(c));
                match callee {
                    Some(c) if names_of(&c["outputs"]["parameters"]).contains(*p) => {}
                    _ => errs.push(format!(
                        "{n:?} refers to tasks.{task}.outputs.parameters.{p}, which no task provides"
                    )),
                }
            }
        }
        if let Some(c) = tpl.get("container") {
            if c["image"].as_str().unwrap_or_default().is_empty() {
                errs.push(format!("template {n:?}: container has no image"));
            }
            let sc = &c["securityContext"];
            if sc["allowPrivilegeEscalation"] != json!(false) {
                errs.push(format!(
                    "template {n:?}: allowPrivilegeEscalation must be false"
                ));
            }
            let drops_all = sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "ALL"));
            if !drops_all {
                errs.push(format!("template {n:?}: capabilities must drop ALL"));
            }
            if sc["privileged"] == json!(true) {
                errs.push(format!(
                    "template {n:?}: privileged containers are not allowed"
                ));
            }
            if c["resources"]["limits"]["memory"].is_null()
                || c["resources"]["limits"]["cpu"].is_null()
            {
                errs.push(format!(
                    "template {n:?}: container needs cpu and memory limits"
                ));
            }
            let volumes = names_of(&tpl["volumes"]);
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let v = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(v) && !claims.contains(v) {
                    errs.push(format!("template {n:?} mounts {v:?}, which is neither a template volume nor a volumeClaimTemplate"));
                }
            }
            for v in tpl["volumes"].as_array().into_iter().flatten() {
                if v.get("hostPath").is_some() {
                    errs.push(format!("template {n:?}: hostPath volumes are not allowed"));
                }
            }
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn t() -> ValidatedTator {
        validate(&minimal("1.5.0")).unwrap()
    }

    fn value(o: &DynamicObject) -> Value {
        serde_json::to_value(o).unwrap()
    }

    #[test]
    fn both_templates_pass_their_own_checks() {
        let t = t();
        let all = templates(&t, "1.5.0", &Target::local(&t)).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].metadata.name.as_deref(), Some("tator-transcode"));
        assert_eq!(
            all[1].metadata.name.as_deref(),
            Some("tator-archive-import")
        );
        let v = value(&all[0]);
        assert_eq!(v["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(v["kind"], "WorkflowTemplate");
        assert_eq!(v["spec"]["podGC"]["strategy"], "OnPodCompletion");
        assert_eq!(v["spec"]["ttlStrategy"]["secondsAfterSuccess"], 300);
        assert_eq!(v["spec"]["nodeSelector"]["cpuWorker"], "yes");
        let params = names_of(&v["spec"]["arguments"]["parameters"]);
        for p in [
            "url",
            "token",
            "project",
            "media_id",
            "size",
            "client_image",
        ] {
            assert!(params.contains(p), "{p}");
        }
        let image = v["spec"]["arguments"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "client_image")
            .unwrap()["value"]
            .clone();
        assert_eq!(image, "cvisionai/tator_client:1.5.0");
    }

    #[test]
    fn scratch_is_memory_below_the_threshold_and_a_claim_above() {
        let t = t();
        let v = value(&transcode_template(&t, "1.5.0", &Target::local(&t)));
        let tpls = v["spec"]["templates"].as_array().unwrap();
        let steps = &tpls[0]["steps"][0];
        // 8Gi × 2 / 5 bytes: 2.5 × size below 8Gi stays in memory.
        assert_eq!(
            steps[0]["when"],
            "{{workflow.parameters.size}} < 3435973836"
        );
        assert_eq!(
            steps[1]["when"],
            "{{workflow.parameters.size}} >= 3435973836"
        );
        assert_eq!(tpls[1]["volumes"][0]["emptyDir"]["medium"], "Memory");
        assert_eq!(tpls[1]["volumes"][0]["emptyDir"]["sizeLimit"], "8Gi");
        let claim = &tpls[2]["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"];
        assert_eq!(claim["resources"]["requests"]["storage"], "8Gi");
        // The claim's schema takes a quantity: the pod spec patch (a string) sizes it.
        let patch: Value = serde_json::from_str(tpls[2]["podSpecPatch"].as_str().unwrap()).unwrap();
        assert_eq!(
            patch["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]
                ["storage"],
            "{{workflow.parameters.scratch_size}}"
        );
        assert_eq!(tpls[1]["retryStrategy"]["backoff"]["factor"], 2);
        assert_eq!(tpls[1]["retryStrategy"]["limit"], "5");
        assert_eq!(v["spec"]["onExit"], "exit-handler");
    }

    #[test]
    fn gpu_transcodes_ask_for_a_gpu_node() {
        let mut td = minimal("1.5.0");
        td.spec.workflows.transcode.gpu = true;
        let t = validate(&td).unwrap();
        let v = value(&transcode_template(&t, "1.5.0", &Target::local(&t)));
        assert_eq!(v["spec"]["nodeSelector"]["gpuWorker"], "yes");
        assert_eq!(
            v["spec"]["templates"][1]["container"]["resources"]["limits"]["nvidia.com/gpu"],
            "1"
        );
    }

    #[test]
    fn remote_objects_carry_the_owner_uid_and_no_owner_reference() {
        let t = t();
        let target = Target::remote(&t, "jobs");
        let (sa, role, b) = executor_rbac(&t, &target);
        assert!(sa.metadata.owner_references.is_none());
        assert_eq!(sa.metadata.namespace.as_deref(), Some("jobs"));
        assert_eq!(
            role.metadata.labels.as_ref().unwrap()[OWNER_UID_LABEL],
            t.owner.uid
        );
        assert_eq!(b.subjects.unwrap()[0].namespace.as_deref(), Some("jobs"));
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["workflowtaskresults".to_string()][..])
        );
        assert_eq!(rules[0].verbs, ["create", "patch"]);
    }

    #[test]
    fn require_remote_cluster_means_no_local_submit_rights() {
        let t = t();
        let (sas, roles, _) = local_rbac(&t);
        assert_eq!(sas.len(), 2);
        assert_eq!(roles.len(), 2);
        let mut td = minimal("1.5.0");
        td.spec.algorithms.require_remote_cluster = true;
        td.spec.job_clusters = vec![
            serde_json::from_value(json!({
                "name": "gpu", "kubeconfigSecret": {"name": "k"}, "namespace": "jobs",
                "runs": ["transcode", "algorithms"], "organization": 1
            }))
            .unwrap(),
        ];
        let t = validate(&td).unwrap();
        let (sas, roles, bindings) = local_rbac(&t);
        assert_eq!(sas.len(), 1, "only the API's own identity");
        assert!(roles.is_empty() && bindings.is_empty());
    }

    fn broken(f: impl FnOnce(&mut Value)) -> Vec<String> {
        let t = t();
        let mut v = value(&archive_import_template(&t, "1.5.0", &Target::local(&t)));
        assert!(validate_template(&v).is_ok());
        f(&mut v);
        validate_template(&v).unwrap_err()
    }

    #[test]
    fn the_checks_catch_what_minimal_crds_would_let_through() {
        let e = broken(|v| v["spec"]["entrypoint"] = json!("nope"));
        assert!(e[0].contains("entrypoint \"nope\""), "{e:?}");
        let e =
            broken(|v| v["spec"]["templates"][0]["dag"]["tasks"][1]["template"] = json!("gone"));
        assert!(e.iter().any(|m| m.contains("calls \"gone\"")), "{e:?}");
        let e =
            broken(|v| v["spec"]["templates"][0]["dag"]["tasks"][1]["dependencies"] = json!(["x"]));
        assert!(e.iter().any(|m| m.contains("unknown task \"x\"")), "{e:?}");
        let e = broken(|v| {
            v["spec"]["templates"][1]["container"]["args"] = json!(["{{workflow.parameters.nope}}"])
        });
        assert!(
            e.iter().any(|m| m.contains("workflow.parameters.nope")),
            "{e:?}"
        );
        let e = broken(|v| {
            v["spec"]["templates"][1]["container"]["securityContext"]["allowPrivilegeEscalation"] =
                json!(true)
        });
        assert!(
            e.iter().any(|m| m.contains("allowPrivilegeEscalation")),
            "{e:?}"
        );
        let e = broken(|v| v["spec"]["securityContext"] = json!({}));
        assert!(e.iter().any(|m| m.contains("runAsNonRoot")), "{e:?}");
        let e = broken(|v| {
            v["spec"]["templates"][1]["container"]["volumeMounts"][0]["name"] = json!("other")
        });
        assert!(e.iter().any(|m| m.contains("mounts \"other\"")), "{e:?}");
        let e = broken(|v| v["spec"]["templates"][0]["dag"]["tasks"][4]["arguments"] = json!({}));
        assert!(
            e.iter().any(|m| m.contains("without its input \"images\"")),
            "{e:?}"
        );
        let e = broken(|v| {
            v["spec"]["templates"][0]["dag"]["tasks"][3]["withParam"] =
                json!("{{tasks.unpack.outputs.parameters.movies}}")
        });
        assert!(e.iter().any(|m| m.contains("movies")), "{e:?}");
        let e = broken(|v| v["spec"]["templates"][2]["steps"] = json!([]));
        assert!(e.iter().any(|m| m.contains("exactly one of")), "{e:?}");
        let e = broken(|v| v["spec"]["templates"][2]["container"]["resources"] = json!({}));
        assert!(e.iter().any(|m| m.contains("limits")), "{e:?}");
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("8Gi"), Some(8 << 30));
        assert_eq!(quantity_bytes("512Mi"), Some(512 << 20));
        assert_eq!(quantity_bytes("8G"), None);
    }
}
