//! Argo workflows (transcode and archive import), remote job clusters and algorithm placement.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

/// Argo WorkflowTemplates for Tator's core workflows, and the service accounts and roles their
/// pods and Tator's REST API need. Applied in this namespace unless a job cluster runs
/// transcodes, and in every job cluster. Needs Argo Workflows; without its CRDs the condition
/// WorkflowsReady is False with reason ArgoNotInstalled and the rest of Tator keeps working.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Workflows {
    /// Settings of the transcode and archive-import templates.
    #[serde(default)]
    pub transcode: TranscodeSettings,

    /// Pod garbage collection of every workflow (Argo podGC.strategy).
    #[serde(default)]
    pub pod_gc_strategy: PodGcStrategy,

    /// Seconds a succeeded workflow is kept before Argo deletes it.
    #[serde(default = "default_ttl_success")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_success: i32,

    /// Seconds a failed workflow is kept before Argo deletes it.
    #[serde(default = "default_ttl_failure")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_failure: i32,

    /// Node labels of the nodes that run CPU work (transcodes). Default cpuWorker=yes, as in
    /// Tator's own setup guides; set {} to run anywhere.
    #[serde(default = "default_cpu_selector")]
    pub cpu_node_selector: BTreeMap<String, String>,

    /// Node labels of GPU nodes, used by the transcode templates when transcode.gpu is set.
    /// Default gpuWorker=yes.
    #[serde(default = "default_gpu_selector")]
    pub gpu_node_selector: BTreeMap<String, String>,

    /// Storage classes Tator picks from, at random, for the volumeClaimTemplates of algorithm
    /// workflows it runs in this cluster (Tator's WORKFLOW_STORAGE_CLASSES). Default:
    /// transcode.scratchStorageClass, else the cluster's default StorageClass when the operator
    /// may read StorageClasses (cluster-wide installs); set it in namespace-scoped installs whose
    /// algorithms claim volumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub storage_classes: Vec<String>,
}

impl Default for Workflows {
    fn default() -> Self {
        Self {
            transcode: TranscodeSettings::default(),
            pod_gc_strategy: PodGcStrategy::default(),
            ttl_seconds_after_success: default_ttl_success(),
            ttl_seconds_after_failure: default_ttl_failure(),
            cpu_node_selector: default_cpu_selector(),
            gpu_node_selector: default_gpu_selector(),
            storage_classes: Vec::new(),
        }
    }
}

fn default_ttl_success() -> i32 {
    300
}
fn default_ttl_failure() -> i32 {
    86400
}
fn default_cpu_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("cpuWorker".to_string(), "yes".to_string())])
}
fn default_gpu_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("gpuWorker".to_string(), "yes".to_string())])
}

/// Argo's pod garbage collection strategies.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodGcStrategy {
    #[default]
    OnPodCompletion,
    OnPodSuccess,
    OnWorkflowCompletion,
    OnWorkflowSuccess,
}

impl PodGcStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnPodCompletion => "OnPodCompletion",
            Self::OnPodSuccess => "OnPodSuccess",
            Self::OnWorkflowCompletion => "OnWorkflowCompletion",
            Self::OnWorkflowSuccess => "OnWorkflowSuccess",
        }
    }
}

/// Transcode settings (Tator's TRANSCODER_* settings).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TranscodeSettings {
    /// Largest scratch space kept in memory: a transcode whose scratch space (2.5 times the
    /// upload) is below it uses a memory-backed emptyDir; a larger one gets a volume from a
    /// volumeClaimTemplate.
    #[serde(default = "default_ram_disk")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(Ki|Mi|Gi|Ti)$')").message("maxRamDiskSize is a binary quantity such as 8Gi"))]
    #[schemars(length(max = 16))]
    pub max_ram_disk_size: String,

    /// Storage class of scratch volumes above maxRamDiskSize (the cluster default if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch_storage_class: Option<String>,

    /// Resources of each transcode container. Default limits 4 CPUs and 8Gi, requests 1 CPU
    /// and 2Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Run transcodes on GPU nodes (workflows.gpuNodeSelector, one nvidia.com/gpu each).
    #[serde(default)]
    pub gpu: bool,

    /// Retries of a failed transcode step (exponential backoff from 5 s, factor 2).
    #[serde(default = "default_retries")]
    #[schemars(range(min = 0, max = 20))]
    pub retry_limit: i32,

    /// Scratch volume of an archive import (downloaded archive, unpacked files and transcodes),
    /// claimed per workflow.
    #[serde(default = "default_archive_scratch")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+(Mi|Gi|Ti)$')").message("archiveScratchSize is a binary quantity such as 100Gi"))]
    #[schemars(length(max = 16))]
    pub archive_scratch_size: String,

    /// Transcodes of one archive import running at once.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 64))]
    pub archive_parallelism: i32,

    /// Image of the workflow steps. Default <image.registry>/tator_client:<version>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_image: Option<String>,
}

impl Default for TranscodeSettings {
    fn default() -> Self {
        Self {
            max_ram_disk_size: default_ram_disk(),
            scratch_storage_class: None,
            resources: None,
            gpu: false,
            retry_limit: default_retries(),
            archive_scratch_size: default_archive_scratch(),
            archive_parallelism: default_parallelism(),
            client_image: None,
        }
    }
}

fn default_ram_disk() -> String {
    "8Gi".into()
}
fn default_archive_scratch() -> String {
    "100Gi".into()
}
fn default_retries() -> i32 {
    5
}
fn default_parallelism() -> i32 {
    4
}

/// What runs on a job cluster.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub enum JobKind {
    /// The transcode and archive-import WorkflowTemplates live on this cluster instead of the
    /// main one, for users and scripts that submit them. Tator's own uploads go to the transcode
    /// service (spec.transcodes), not to these templates.
    Transcode,
    /// Algorithm workflows, registered in Tator as a JobCluster of an organization.
    Algorithms,
}

/// A Kubernetes cluster where workflows run, reached through a kubeconfig held in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.runs.exists(r, r == 'algorithms') || has(self.organization)").message("a job cluster that runs algorithms needs organization: it is registered in Tator for that organization"))]
pub struct JobCluster {
    /// Name of the cluster (a DNS label), also its name in Tator.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$')").message("a job cluster name is a DNS label of at most 32 characters"))]
    #[schemars(length(max = 32))]
    pub name: String,

    /// Secret in this namespace holding a kubeconfig for the cluster (key `kubeconfig` unless
    /// set). Credentials must be inline (token or client certificate data): exec plugins, auth
    /// providers and file paths are refused. The Secret is re-read at every check, so a rotated
    /// credential takes effect without a restart.
    pub kubeconfig_secret: KubeconfigSecret,

    /// Namespace in the job cluster for Tator's workflows; created if missing.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("namespace must be a DNS label"))]
    #[schemars(length(max = 63))]
    pub namespace: String,

    /// What runs there: transcode, algorithms or both.
    #[schemars(length(min = 1, max = 2))]
    pub runs: Vec<JobKind>,

    /// Tator organization id the cluster is registered for (/rest/JobClusters/<organization>);
    /// needed when it runs algorithms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub organization: Option<i64>,

    /// Address Tator's pods use for the cluster's API server, when it differs from the
    /// kubeconfig's server (for example a private endpoint). Default: the kubeconfig's server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('https://')").message("apiServer must be an https:// URL"))]
    #[schemars(length(max = 2048))]
    pub api_server: Option<String>,

    /// Seconds deletion of the TatorDeployment waits for this cluster's objects to be removed
    /// when it cannot be reached. After that the finalizer lets go and a Warning Event lists
    /// what was left behind. The annotation tator.io/force-delete: "true" lets go at once.
    #[serde(default = "default_cleanup_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub cleanup_timeout_seconds: i32,
}

fn default_cleanup_timeout() -> i32 {
    300
}

/// Reference to a kubeconfig in a Secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KubeconfigSecret {
    /// Name of the Secret (same namespace). The Secret must list this TatorDeployment in its annotation
    /// tator.io/tator-deployments (or "*"), see docs/security.md.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Key of the kubeconfig.
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

/// Where algorithm workflows may run.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Algorithms {
    /// Forbid workflows in this cluster: no submit rights for the REST API here, so algorithms
    /// and transcodes must run on job clusters (one running algorithms and one running
    /// transcode are then required).
    #[serde(default)]
    pub require_remote_cluster: bool,
}

pub(crate) fn job_clusters_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <Vec<JobCluster>>::json_schema(generator);
    schema.insert("maxItems".into(), 16.into());
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["name"]),
    );
    schema
}

/// One job cluster as last seen by the operator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobClusterStatus {
    pub name: String,
    /// The Secret and namespace the objects were created with (used to remove them when the
    /// entry goes away).
    pub kubeconfig_secret: String,
    #[serde(default)]
    pub kubeconfig_key: String,
    pub namespace: String,
    /// The API server the operator talks to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Tator's id of the cluster's registration (/rest/JobCluster/<id>).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_id: Option<i64>,
    /// Digest of what was last registered (no credential is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_digest: Option<String>,
    /// Reachable (the API server answers with these credentials), TemplatesReady (namespace,
    /// roles, token and WorkflowTemplates applied) and, for algorithm clusters, Registered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    /// Objects created in the cluster (Kind/name), for deletion.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}
