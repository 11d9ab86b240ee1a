//! Object storage: the system buckets, the in-cluster S3 store and user-defined buckets.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{PodSettings, SecretKeyRef, VolumeSettings};

/// Object storage Tator keeps media in: the system buckets (live, upload, backup) and the
/// in-cluster S3 store that serves the buckets marked inCluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStorage {
    /// The in-cluster S3 store (SeaweedFS). It runs when any system bucket is inCluster.
    #[serde(default)]
    pub server: ObjectStoreServer,
    /// The bucket media lives in (required). Default: bucket "tator" on the in-cluster store.
    #[serde(default)]
    pub live: SystemBucket,
    /// A separate bucket for uploads. Without it uploads go to the live bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<SystemBucket>,
    /// The bucket backups are copied to. Without it Tator's backup jobs fall back to the live
    /// bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<SystemBucket>,
}

/// The in-cluster S3 store: SeaweedFS in one StatefulSet, with generated credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreServer {
    /// The data volume.
    #[serde(default = "default_store_volume")]
    pub storage: VolumeSettings,
    /// Image, resources and placement (default image chrislusf/seaweedfs:4.53).
    #[serde(flatten)]
    pub pod: PodSettings,
}

impl Default for ObjectStoreServer {
    fn default() -> Self {
        Self {
            storage: default_store_volume(),
            pod: PodSettings::default(),
        }
    }
}

fn default_store_volume() -> VolumeSettings {
    VolumeSettings {
        size: "100Gi".into(),
        storage_class_name: None,
    }
}

/// One system bucket: exactly one of inCluster or external.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.inCluster) != has(self.external)").message("a system bucket needs exactly one of inCluster or external"))]
pub struct SystemBucket {
    /// A bucket on the in-cluster store; the operator creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<InClusterBucket>,
    /// A bucket on an S3 service or cloud store that already exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBucket>,
}

impl Default for SystemBucket {
    fn default() -> Self {
        Self {
            in_cluster: Some(InClusterBucket::default()),
            external: None,
        }
    }
}

/// A bucket on the in-cluster store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InClusterBucket {
    /// Bucket name. Default: tator (live), tator-upload (upload), tator-backup (backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$')").message("a bucket name has 3 to 63 lowercase letters, digits, dots or hyphens"))]
    #[schemars(length(max = 63))]
    pub bucket_name: Option<String>,
}

/// Object store types Tator speaks to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreType {
    /// Amazon S3.
    #[serde(rename = "AWS")]
    Aws,
    /// MinIO, SeaweedFS, Ceph RGW or any other S3-compatible service (path-style access).
    #[serde(rename = "MINIO")]
    Minio,
    /// Google Cloud Storage.
    #[serde(rename = "GCP")]
    Gcp,
    /// Oracle Cloud Object Storage (S3 compatibility API plus the native API).
    #[serde(rename = "OCI")]
    Oci,
    /// Microsoft Azure Blob Storage.
    #[serde(rename = "AZURE")]
    Azure,
    /// VAST Data (S3).
    #[serde(rename = "VAST")]
    Vast,
}

impl StoreType {
    /// Tator's name of the store type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "AWS",
            Self::Minio => "MINIO",
            Self::Gcp => "GCP",
            Self::Oci => "OCI",
            Self::Azure => "AZURE",
            Self::Vast => "VAST",
        }
    }

    /// Whether buckets of this type are reached through the S3 API.
    pub fn is_s3(self) -> bool {
        matches!(self, Self::Aws | Self::Minio | Self::Oci | Self::Vast)
    }
}

// The same three rules apply to system buckets and user-defined buckets.
const OCI_HOST_RULE: &str = "self.storeType != 'OCI' || has(self.externalHost)";
const OCI_HOST_MSG: &str =
    "an OCI bucket needs externalHost: Tator rewrites its presigned URLs to that host";
const ENDPOINT_RULE: &str = "!(self.storeType in ['MINIO', 'OCI', 'VAST']) || has(self.endpoint)";
const ENDPOINT_MSG: &str =
    "MINIO, OCI and VAST buckets need endpoint (the S3 URL, for example https://s3.example.com)";
const NO_ENDPOINT_RULE: &str = "!(self.storeType in ['GCP', 'AZURE']) || !has(self.endpoint)";
const NO_ENDPOINT_MSG: &str =
    "GCP and AZURE buckets take no endpoint: their credentials say where the store is";

/// A bucket that already exists on an S3 service or cloud store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(OCI_HOST_RULE).message(OCI_HOST_MSG))]
#[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_MSG))]
#[x_kube(validation = Rule::new(NO_ENDPOINT_RULE).message(NO_ENDPOINT_MSG))]
pub struct ExternalBucket {
    /// Type of store: AWS, MINIO (any S3-compatible service), GCP, OCI, AZURE or VAST.
    pub store_type: StoreType,
    /// Bucket name.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$')").message("a bucket name has 3 to 63 lowercase letters, digits, dots, underscores or hyphens"))]
    #[schemars(length(max = 63))]
    pub bucket_name: String,
    /// S3 endpoint URL (AWS default: https://s3.<region>.amazonaws.com). Required for MINIO,
    /// OCI and VAST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("endpoint must start with http:// or https://"))]
    #[schemars(length(max = 512))]
    pub endpoint: Option<String>,
    /// Region (S3 types).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Host presigned URLs are rewritten to (a proxy in front of the store), for example
    /// https://tator.example.com/objects. Required for OCI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("externalHost must start with http:// or https://"))]
    #[schemars(length(max = 512))]
    pub external_host: Option<String>,
    /// Secret with the credentials this store type needs, by key: AWS, MINIO and VAST:
    /// accessKeyId and secretAccessKey; OCI: accessKeyId, secretAccessKey (customer secret key)
    /// and user, tenancy, fingerprint, privateKey (native API); GCP: serviceAccount.json;
    /// AZURE: connectionString. The Secret must list this TatorDeployment in its annotation
    /// tator.io/tator-deployments.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
}

pub(super) fn default_region() -> String {
    "us-east-1".into()
}

/// A bucket registered in Tator (a row of Tator's Bucket table) for one organization.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(OCI_HOST_RULE).message(OCI_HOST_MSG))]
#[x_kube(validation = Rule::new(ENDPOINT_RULE).message(ENDPOINT_MSG))]
#[x_kube(validation = Rule::new(NO_ENDPOINT_RULE).message(NO_ENDPOINT_MSG))]
#[x_kube(validation = Rule::new("!has(self.archiveStorageClass) || self.archiveStorageClass == 'STANDARD' || (self.archiveStorageClass == 'DEEP_ARCHIVE' && self.storeType == 'AWS') || (self.archiveStorageClass == 'COLDLINE' && self.storeType == 'GCP')").message("archiveStorageClass DEEP_ARCHIVE is for AWS and COLDLINE for GCP; other stores take STANDARD"))]
pub struct TatorBucket {
    /// Bucket name in the store; Tator finds the registration by it (within the organization).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$')").message("a bucket name has 3 to 63 lowercase letters, digits, dots, underscores or hyphens"))]
    #[schemars(length(max = 63))]
    pub name: String,
    /// Id of the Tator organization that owns the bucket.
    #[schemars(range(min = 1))]
    pub organization: i64,
    /// Type of store: AWS, MINIO (any S3-compatible service), GCP, OCI, AZURE or VAST.
    pub store_type: StoreType,
    /// S3 endpoint URL (AWS default: https://s3.<region>.amazonaws.com). Required for MINIO,
    /// OCI and VAST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("endpoint must start with http:// or https://"))]
    #[schemars(length(max = 512))]
    pub endpoint: Option<String>,
    /// Region (S3 types).
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,
    /// Host presigned URLs are rewritten to. Required for OCI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("externalHost must start with http:// or https://"))]
    #[schemars(length(max = 512))]
    pub external_host: Option<String>,
    /// Secret with the credentials (same keys as a system bucket's credentialsSecret), which
    /// must list this TatorDeployment in its annotation tator.io/tator-deployments.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
    /// Storage class archived media moves to: STANDARD, DEEP_ARCHIVE (AWS) or COLDLINE (GCP).
    /// Default: Tator's default for the store type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_storage_class: Option<ArchiveStorageClass>,
    /// Delete the bucket's registration in Tator when this entry is removed. Off by default:
    /// a removed entry is only forgotten, and the bucket and its media are never deleted.
    #[serde(default)]
    pub prune: bool,
}

/// Storage class of archived media.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ArchiveStorageClass {
    Standard,
    DeepArchive,
    Coldline,
}

impl ArchiveStorageClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "STANDARD",
            Self::DeepArchive => "DEEP_ARCHIVE",
            Self::Coldline => "COLDLINE",
        }
    }
}

/// How the operator calls Tator's REST API (to register buckets).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApiAccess {
    /// Secret key holding the API token of a Tator user who is an Admin of every organization
    /// named in buckets (Tator's /rest/Token).
    pub token_secret: SecretKeyRef,
    /// Base URL of the REST API. Default: the API Service inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("apiAccess.url must start with http:// or https://"))]
    #[schemars(length(max = 512))]
    pub url: Option<String>,
}

/// A bucket the operator registered in Tator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredBucket {
    /// Bucket name.
    pub name: String,
    /// Tator organization id.
    pub organization: i64,
    /// Tator's id of the bucket.
    pub id: i64,
    /// Whether the registration is deleted when the entry is removed from spec.buckets.
    #[serde(default)]
    pub prune: bool,
    /// Digest of what was last sent (settings and credentials), to send again only on change.
    pub digest: String,
}
