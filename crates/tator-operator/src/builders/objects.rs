//! Object storage: the in-cluster S3 store (SeaweedFS), the Job that creates its buckets, the
//! Secrets holding Tator's `DEFAULT_*` bucket settings and how Tator's pods read them.
//!
//! Credentials only ever reach pods through `secretKeyRef`s to Secrets the operator owns; the
//! values themselves come from the fetch stage ([`StorageSecrets`]) and never from the spec.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        batch::v1::{Job, JobSpec},
        core::v1::{
            ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSpec,
            Probe, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::{Value, json};
use tator_api::StoreType;

use super::{
    buckets::{Placement, buckets_secret_name, in_cluster_buckets, store_runs, system_buckets},
    common::*,
};
use crate::validate::ValidatedTator;

/// Component label of the in-cluster store.
pub const SEAWEEDFS: &str = "seaweedfs";
/// Component label of the bucket Job.
pub const BUCKET_JOB: &str = "s3-buckets";
pub const SEAWEEDFS_IMAGE: &str = "chrislusf/seaweedfs:4.53";
pub const S3_PORT: i32 = 8333;
pub const MASTER_PORT: i32 = 9333;
pub const MASTER_GRPC_PORT: i32 = 19333;
pub const FILER_PORT: i32 = 8888;
pub const FILER_GRPC_PORT: i32 = 18888;
pub const VOLUME_PORT: i32 = 8080;
pub const VOLUME_GRPC_PORT: i32 = 18080;
/// Region name Tator's boto3 client is given for the in-cluster store (SeaweedFS ignores it).
pub const IN_CLUSTER_REGION: &str = "us-east-1";
/// Public path NGINX proxies to the in-cluster store, for presigned URLs.
pub const OBJECTS_PATH: &str = "/objects/";
const SEAWEEDFS_UID: i64 = 1000;
const CONFIG_DIR: &str = "/etc/seaweedfs";

/// Keys of the generated Secret of the in-cluster store.
pub mod keys {
    pub const ADMIN_ACCESS_KEY: &str = "adminAccessKey";
    pub const ADMIN_SECRET_KEY: &str = "adminSecretKey";
    pub const TATOR_ACCESS_KEY: &str = "tatorAccessKey";
    pub const TATOR_SECRET_KEY: &str = "tatorSecretKey";
}

/// The S3 endpoint of the in-cluster store as Tator (and NGINX) reach it. Presigned URLs are
/// signed for this host, and NGINX forwards `/objects/` with it as the Host header, so the two
/// must be the same string.
pub fn store_endpoint(t: &ValidatedTator) -> String {
    format!("http://{}:{S3_PORT}", t.child_name(SEAWEEDFS))
}

/// `host:port` NGINX proxies `/objects/` to.
pub fn store_upstream(t: &ValidatedTator) -> String {
    format!("{}:{S3_PORT}", t.child_name(SEAWEEDFS))
}

/// The public URL presigned URLs of in-cluster buckets are rewritten to.
pub fn public_objects_url(t: &ValidatedTator) -> String {
    let scheme = if t.spec.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}/objects", t.spec.domain)
}

/// The default AWS endpoint for a region.
pub fn aws_endpoint(region: &str) -> String {
    format!("https://s3.{region}.amazonaws.com")
}

/// Name of the generated Secret with the in-cluster store's keys.
pub fn store_keys_secret_name(t: &ValidatedTator) -> String {
    t.child_name(SEAWEEDFS)
}

/// Name of the Secret with the in-cluster store's identities file.
pub fn store_config_secret_name(t: &ValidatedTator) -> String {
    t.child_name("seaweedfs-config")
}

/// The generated Secret of the in-cluster store: an admin key pair (bucket management only)
/// and Tator's key pair, limited to Tator's buckets.
pub fn generated_secret(t: &ValidatedTator) -> Option<GeneratedSecret> {
    store_runs(t).then(|| GeneratedSecret {
        name: store_keys_secret_name(t),
        component: SEAWEEDFS,
        fixed: BTreeMap::new(),
        random: vec![
            (keys::ADMIN_ACCESS_KEY.into(), 20),
            (keys::ADMIN_SECRET_KEY.into(), 40),
            (keys::TATOR_ACCESS_KEY.into(), 20),
            (keys::TATOR_SECRET_KEY.into(), 40),
        ],
    })
}

/// Secret values the fetch stage read for object storage. Debug output never shows them.
#[derive(Clone, Default, PartialEq)]
pub struct StorageSecrets {
    /// Keys of the in-cluster store's generated Secret.
    pub store: BTreeMap<String, String>,
    /// Data of each credentials Secret named in the spec, by Secret name (None: not found).
    pub credentials: BTreeMap<String, Option<BTreeMap<String, String>>>,
}

impl std::fmt::Debug for StorageSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageSecrets")
            .field("store_keys", &self.store.keys().collect::<Vec<_>>())
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A bucket setting that cannot be turned into a Tator configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub reason: &'static str,
    pub message: String,
}

fn need<'a>(
    data: &'a BTreeMap<String, String>,
    secret: &str,
    key: &str,
) -> Result<&'a str, ConfigProblem> {
    data.get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ConfigProblem {
            reason: "MissingCredentials",
            message: format!("Secret {secret} has no key {key}"),
        })
}

/// Tator's credentials JSON (`DEFAULT_*_CONFIG`, a Bucket's `config`) for a bucket of
/// `store_type`, from the data of its credentials Secret.
pub fn tator_config(
    store_type: StoreType,
    endpoint: Option<&str>,
    region: &str,
    secret: &str,
    data: &BTreeMap<String, String>,
) -> Result<Value, ConfigProblem> {
    let s3 = || -> Result<Value, ConfigProblem> {
        Ok(json!({
            "endpoint_url": endpoint.map_or_else(|| aws_endpoint(region), str::to_string),
            "region_name": region,
            "aws_access_key_id": need(data, secret, "accessKeyId")?,
            "aws_secret_access_key": need(data, secret, "secretAccessKey")?,
        }))
    };
    match store_type {
        StoreType::Aws | StoreType::Minio | StoreType::Vast => s3(),
        StoreType::Oci => Ok(json!({
            "boto3_config": s3()?,
            "native_config": {
                "user": need(data, secret, "user")?,
                "key_content": need(data, secret, "privateKey")?,
                "fingerprint": need(data, secret, "fingerprint")?,
                "tenancy": need(data, secret, "tenancy")?,
                "region": region,
            },
        })),
        StoreType::Gcp => {
            let raw = need(data, secret, "serviceAccount.json")?;
            let v: Value = serde_json::from_str(raw).map_err(|e| ConfigProblem {
                reason: "InvalidCredentials",
                message: format!(
                    "Secret {secret} key serviceAccount.json is not JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            })?;
            for field in [
                "type",
                "project_id",
                "private_key_id",
                "private_key",
                "client_email",
                "client_id",
                "auth_uri",
                "token_uri",
                "auth_provider_x509_cert_url",
                "client_x509_cert_url",
            ] {
                if v.get(field).and_then(Value::as_str).is_none() {
                    return Err(ConfigProblem {
                        reason: "InvalidCredentials",
                        message: format!(
                            "Secret {secret} key serviceAccount.json has no {field} field"
                        ),
                    });
                }
            }
            Ok(v)
        }
        StoreType::Azure => Ok(json!({
            "connection_string": need(data, secret, "connectionString")?,
        })),
    }
}

/// The in-cluster store's configuration for Tator: its S3 fields with Tator's limited key.
pub fn in_cluster_config(
    t: &ValidatedTator,
    store: &BTreeMap<String, String>,
) -> Result<Value, ConfigProblem> {
    let secret = store_keys_secret_name(t);
    Ok(json!({
        "endpoint_url": store_endpoint(t),
        "region_name": IN_CLUSTER_REGION,
        "aws_access_key_id": need(store, &secret, keys::TATOR_ACCESS_KEY)?,
        "aws_secret_access_key": need(store, &secret, keys::TATOR_SECRET_KEY)?,
    }))
}

/// Credentials data of an external bucket's Secret, or why it is unusable.
fn credentials<'a>(
    secrets: &'a StorageSecrets,
    name: &str,
) -> Result<&'a BTreeMap<String, String>, ConfigProblem> {
    match secrets.credentials.get(name) {
        Some(Some(data)) => Ok(data),
        _ => Err(ConfigProblem {
            reason: "SecretNotFound",
            message: format!("credentials Secret {name} does not exist"),
        }),
    }
}

/// The values of the buckets Secret: every `DEFAULT_*` variable of every system bucket.
pub fn bucket_values(
    t: &ValidatedTator,
    secrets: &StorageSecrets,
) -> Result<BTreeMap<String, String>, ConfigProblem> {
    let mut out = BTreeMap::new();
    for (role, placement) in system_buckets(t) {
        let w = role.env_word();
        let (config, name, store_type, host) = match &placement {
            Placement::InCluster(name) => (
                in_cluster_config(t, &secrets.store)?,
                name.clone(),
                StoreType::Minio,
                Some(public_objects_url(t)),
            ),
            Placement::External(e) => {
                let data = credentials(secrets, &e.credentials_secret)?;
                let config = tator_config(
                    e.store_type,
                    e.endpoint.as_deref(),
                    &e.region,
                    &e.credentials_secret,
                    data,
                )
                .map_err(|p| ConfigProblem {
                    reason: p.reason,
                    message: format!("{} bucket: {}", role.as_str(), p.message),
                })?;
                (
                    config,
                    e.bucket_name.clone(),
                    e.store_type,
                    e.external_host.clone(),
                )
            }
        };
        out.insert(format!("DEFAULT_{w}_CONFIG"), config.to_string());
        out.insert(format!("DEFAULT_{w}_BUCKET_NAME"), name);
        out.insert(
            format!("DEFAULT_{w}_STORE_TYPE"),
            store_type.as_str().into(),
        );
        if let Some(h) = host {
            out.insert(format!("DEFAULT_{w}_EXTERNAL_HOST"), h);
        }
    }
    Ok(out)
}

/// SeaweedFS's identities file: the admin key may do everything, Tator's key only reads,
/// writes, lists and tags objects in Tator's buckets (it cannot create or delete buckets).
pub fn store_identities(
    t: &ValidatedTator,
    store: &BTreeMap<String, String>,
) -> Result<Value, ConfigProblem> {
    let secret = store_keys_secret_name(t);
    let mut tator_actions = Vec::new();
    for bucket in in_cluster_buckets(t) {
        for action in ["Read", "Write", "List", "Tagging"] {
            tator_actions.push(format!("{action}:{bucket}"));
        }
    }
    Ok(json!({
        "identities": [
            {
                "name": "admin",
                "credentials": [{
                    "accessKey": need(store, &secret, keys::ADMIN_ACCESS_KEY)?,
                    "secretKey": need(store, &secret, keys::ADMIN_SECRET_KEY)?,
                }],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "tator",
                "credentials": [{
                    "accessKey": need(store, &secret, keys::TATOR_ACCESS_KEY)?,
                    "secretKey": need(store, &secret, keys::TATOR_SECRET_KEY)?,
                }],
                "actions": tator_actions,
            },
        ]
    }))
}

fn owned_secret(t: &ValidatedTator, name: String, values: BTreeMap<String, String>) -> Secret {
    super::storage::generated_secret(child_meta(t, name, SEAWEEDFS, None), values)
}

/// The Secrets whose values the operator composes: the buckets Secret and, with the in-cluster
/// store, its identities file. `render` never prints them.
pub fn composed_secrets(
    t: &ValidatedTator,
    secrets: &StorageSecrets,
) -> Result<Vec<Secret>, ConfigProblem> {
    let mut out = vec![owned_secret(
        t,
        buckets_secret_name(t),
        bucket_values(t, secrets)?,
    )];
    if store_runs(t) {
        let identities = store_identities(t, &secrets.store)?;
        out.push(owned_secret(
            t,
            store_config_secret_name(t),
            BTreeMap::from([("s3.json".to_string(), identities.to_string())]),
        ));
    }
    Ok(out)
}

/// The shell script of the bucket Job: creates each bucket in `$BUCKETS` through `weed shell`
/// against `$MASTER`, accepting buckets that already exist. Tested against a real SeaweedFS.
pub const BUCKET_SCRIPT: &str = r#"set -eu
for b in $BUCKETS; do
  if out=$(echo "s3.bucket.create -name $b" | weed shell -master="$MASTER" 2>&1); then
    echo "created bucket $b"
  else
    case "$out" in
      *"already exists"*) echo "bucket $b exists" ;;
      *) echo "$out" >&2; exit 1 ;;
    esac
  fi
done
"#;

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: port,
        ..Default::default()
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn headless_name(t: &ValidatedTator) -> String {
    t.child_name("seaweedfs-hl")
}

/// The in-cluster store: one StatefulSet running master, volume server, filer and S3 gateway,
/// a client Service and a headless Service giving the pod a stable name.
pub fn store(t: &ValidatedTator) -> (Vec<StatefulSet>, Vec<Service>) {
    if !store_runs(t) {
        return (vec![], vec![]);
    }
    let server = &t.spec.object_storage.server;
    let name = t.child_name(SEAWEEDFS);
    let headless = headless_name(t);
    let mut c = container(
        SEAWEEDFS,
        server
            .pod
            .image
            .clone()
            .unwrap_or_else(|| SEAWEEDFS_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.command = Some(vec!["weed".into()]);
    c.args = Some(vec![
        "server".into(),
        "-dir=/data".into(),
        // The pod's stable DNS name: the master hands it to clients (the bucket Job) as the
        // filer's and volume server's address.
        format!("-ip=$(POD_NAME).{headless}"),
        "-ip.bind=0.0.0.0".into(),
        "-master.telemetry=false".into(),
        "-master.volumeSizeLimitMB=1024".into(),
        "-volume.max=0".into(),
        "-filer".into(),
        "-s3".into(),
        format!("-s3.port={S3_PORT}"),
        format!("-s3.config={CONFIG_DIR}/s3.json"),
    ]);
    c.env = Some(vec![EnvVar {
        name: "POD_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    c.ports = Some(vec![
        port("s3", S3_PORT),
        port("master", MASTER_PORT),
        port("master-grpc", MASTER_GRPC_PORT),
        port("filer", FILER_PORT),
        port("filer-grpc", FILER_GRPC_PORT),
        port("volume", VOLUME_PORT),
        port("volume-grpc", VOLUME_GRPC_PORT),
    ]);
    c.volume_mounts = Some(vec![
        VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ]);
    c.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::Int(S3_PORT),
            ..Default::default()
        }),
        initial_delay_seconds: Some(5),
        period_seconds: Some(10),
        ..Default::default()
    });
    c.resources = Some(resources_or(
        &server.pod,
        requirements("250m", "512Mi", "2Gi"),
    ));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![
            Volume {
                name: "config".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(store_config_secret_name(t)),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(Default::default()),
                ..Default::default()
            },
        ]),
        security_context: Some(pod_security(SEAWEEDFS_UID)),
        ..Default::default()
    };
    // The identities file is read at start: a new bucket list (a new file) restarts the store.
    let annotations = BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        short_hash(in_cluster_buckets(t).join(",").as_bytes(), 16),
    )]);
    let sts = StatefulSet {
        metadata: data_meta(t, name.clone(), SEAWEEDFS),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(headless.clone()),
            selector: label_selector(t, SEAWEEDFS),
            template: pod_template(t, SEAWEEDFS, None, spec, annotations, &server.pod),
            volume_claim_templates: Some(vec![claim_template("data", &server.storage)]),
            persistent_volume_claim_retention_policy: Some(retention(t)),
            ..Default::default()
        }),
        status: None,
    };
    let client = Service {
        metadata: child_meta(t, name, SEAWEEDFS, None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(t, SEAWEEDFS)),
            ports: Some(vec![
                service_port("s3", S3_PORT),
                service_port("master", MASTER_PORT),
                service_port("master-grpc", MASTER_GRPC_PORT),
            ]),
            ..Default::default()
        }),
        status: None,
    };
    let hl = Service {
        metadata: child_meta(t, headless, SEAWEEDFS, None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(t, SEAWEEDFS)),
            ports: Some(vec![
                service_port("filer-grpc", FILER_GRPC_PORT),
                service_port("volume", VOLUME_PORT),
                service_port("volume-grpc", VOLUME_GRPC_PORT),
            ]),
            ..Default::default()
        }),
        status: None,
    };
    (vec![sts], vec![hl, client])
}

/// The Job creating the in-cluster buckets. Its name carries a hash of its spec: a new bucket
/// is a new Job, and the old one is pruned.
pub fn bucket_job(t: &ValidatedTator) -> Option<Job> {
    if !store_runs(t) {
        return None;
    }
    let server = &t.spec.object_storage.server;
    let mut c = container(
        "create-buckets",
        server
            .pod
            .image
            .clone()
            .unwrap_or_else(|| SEAWEEDFS_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.command = Some(vec!["sh".into(), "-c".into(), BUCKET_SCRIPT.into()]);
    c.env = Some(vec![
        EnvVar {
            name: "MASTER".into(),
            value: Some(format!("{}:{MASTER_PORT}", t.child_name(SEAWEEDFS))),
            ..Default::default()
        },
        EnvVar {
            name: "BUCKETS".into(),
            value: Some(in_cluster_buckets(t).join(" ")),
            ..Default::default()
        },
    ]);
    c.volume_mounts = Some(vec![VolumeMount {
        name: "tmp".into(),
        mount_path: "/tmp".into(),
        ..Default::default()
    }]);
    c.resources = Some(requirements("50m", "64Mi", "256Mi"));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![Volume {
            name: "tmp".into(),
            empty_dir: Some(Default::default()),
            ..Default::default()
        }]),
        security_context: Some(pod_security(SEAWEEDFS_UID)),
        restart_policy: Some("OnFailure".into()),
        ..Default::default()
    };
    let template = pod_template(t, BUCKET_JOB, None, spec, BTreeMap::new(), &server.pod);
    let job_spec = JobSpec {
        // The store may still be starting: retry with the Job controller's backoff.
        backoff_limit: Some(10),
        template,
        ..Default::default()
    };
    let hash = serde_json::to_vec(&job_spec)
        .map(|b| short_hash(&b, 8))
        .unwrap_or_default();
    Some(Job {
        metadata: child_meta(
            t,
            t.child_name(&format!("s3-buckets-{hash}")),
            BUCKET_JOB,
            None,
        ),
        spec: Some(job_spec),
        status: None,
    })
}

/// The NGINX route for presigned URLs of in-cluster buckets (no `auth_request`: the URL
/// signature is the authentication).
pub fn objects_route(t: &ValidatedTator) -> Option<ProxyRoute> {
    store_runs(t).then(|| ProxyRoute {
        path: OBJECTS_PATH.into(),
        upstream: format!("{}/", store_upstream(t)),
        guard: Guard::Open,
        object_store: true,
        headers: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{builders::buckets::bucket_env_names, test_fixtures::minimal, validate::validate};
    use tator_api::{ExternalBucket, SystemBucket};

    fn s3_secret() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("accessKeyId".to_string(), "AKIDEXAMPLE".to_string()),
            ("secretAccessKey".to_string(), "s3cr3t".to_string()),
        ])
    }

    fn store_keys() -> BTreeMap<String, String> {
        [
            keys::ADMIN_ACCESS_KEY,
            keys::ADMIN_SECRET_KEY,
            keys::TATOR_ACCESS_KEY,
            keys::TATOR_SECRET_KEY,
        ]
        .iter()
        .map(|k| (k.to_string(), format!("value-of-{k}")))
        .collect()
    }

    #[test]
    fn the_default_is_a_live_bucket_on_the_in_cluster_store() {
        let t = validate(&minimal("1.5.0")).unwrap();
        assert_eq!(in_cluster_buckets(&t), ["tator"]);
        let secrets = StorageSecrets {
            store: store_keys(),
            ..Default::default()
        };
        let v = bucket_values(&t, &secrets).unwrap();
        assert_eq!(v["DEFAULT_LIVE_BUCKET_NAME"], "tator");
        assert_eq!(v["DEFAULT_LIVE_STORE_TYPE"], "MINIO");
        assert_eq!(
            v["DEFAULT_LIVE_EXTERNAL_HOST"],
            "http://tator.example.com/objects"
        );
        let config: Value = serde_json::from_str(&v["DEFAULT_LIVE_CONFIG"]).unwrap();
        assert_eq!(config["endpoint_url"], "http://tator-seaweedfs:8333");
        assert_eq!(config["aws_access_key_id"], "value-of-tatorAccessKey");
        assert!(!v.contains_key("DEFAULT_UPLOAD_CONFIG"));
        assert_eq!(
            bucket_env_names(&t),
            [
                "DEFAULT_LIVE_CONFIG",
                "DEFAULT_LIVE_BUCKET_NAME",
                "DEFAULT_LIVE_STORE_TYPE",
                "DEFAULT_LIVE_EXTERNAL_HOST"
            ]
        );
        // the env names and the Secret's keys agree
        for name in bucket_env_names(&t) {
            assert!(v.contains_key(&name), "{name}");
        }
    }

    #[test]
    fn tator_key_is_limited_to_tator_buckets() {
        let mut td = minimal("1.5.0");
        td.spec.object_storage.backup = Some(SystemBucket::default());
        let t = validate(&td).unwrap();
        let ids = store_identities(&t, &store_keys()).unwrap();
        let tator = &ids["identities"][1];
        assert_eq!(tator["name"], "tator");
        let actions: Vec<&str> = tator["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(actions.contains(&"Write:tator-backup"));
        assert!(actions.iter().all(|a| a.contains(':')), "{actions:?}");
        assert!(!actions.iter().any(|a| a.starts_with("Admin")));
    }

    #[test]
    fn external_buckets_compose_tator_configs() {
        let aws = tator_config(StoreType::Aws, None, "us-east-2", "s", &s3_secret()).unwrap();
        assert_eq!(aws["endpoint_url"], "https://s3.us-east-2.amazonaws.com");
        assert_eq!(aws["aws_secret_access_key"], "s3cr3t");
        let mut oci = s3_secret();
        for k in ["user", "privateKey", "fingerprint", "tenancy"] {
            oci.insert(k.into(), format!("{k}-value"));
        }
        let v = tator_config(
            StoreType::Oci,
            Some("https://ns.compat.objectstorage.example"),
            "us-ashburn-1",
            "s",
            &oci,
        )
        .unwrap();
        assert_eq!(v["native_config"]["key_content"], "privateKey-value");
        assert_eq!(v["boto3_config"]["region_name"], "us-ashburn-1");
        let err = tator_config(StoreType::Oci, None, "r", "oci-creds", &s3_secret()).unwrap_err();
        assert_eq!(err.reason, "MissingCredentials");
        assert!(err.message.contains("oci-creds"));
        let gcp = BTreeMap::from([("serviceAccount.json".to_string(), "{\"type\": 1".into())]);
        let err = tator_config(StoreType::Gcp, None, "r", "g", &gcp).unwrap_err();
        assert_eq!(err.reason, "InvalidCredentials");
        assert!(!err.message.contains("type"), "{}", err.message);
    }

    #[test]
    fn a_missing_credentials_secret_is_a_problem_not_an_empty_config() {
        let mut td = minimal("1.5.0");
        td.spec.object_storage.live = SystemBucket {
            in_cluster: None,
            external: Some(ExternalBucket {
                store_type: StoreType::Aws,
                bucket_name: "media".into(),
                endpoint: None,
                region: "us-east-2".into(),
                external_host: None,
                credentials_secret: "aws".into(),
            }),
        };
        let t = validate(&td).unwrap();
        assert!(!store_runs(&t));
        assert!(store(&t).0.is_empty() && bucket_job(&t).is_none());
        let err = bucket_values(&t, &StorageSecrets::default()).unwrap_err();
        assert_eq!(err.reason, "SecretNotFound");
        let secrets = StorageSecrets {
            credentials: BTreeMap::from([("aws".to_string(), Some(s3_secret()))]),
            ..Default::default()
        };
        let v = bucket_values(&t, &secrets).unwrap();
        assert_eq!(v["DEFAULT_LIVE_STORE_TYPE"], "AWS");
        assert!(!v.contains_key("DEFAULT_LIVE_EXTERNAL_HOST"));
        assert_eq!(bucket_env_names(&t).len(), 3);
    }

    #[test]
    fn store_pods_meet_restricted_and_never_carry_credentials() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let (sts, svcs) = store(&t);
        assert_eq!(svcs.len(), 2);
        let job = bucket_job(&t).unwrap();
        let text = format!(
            "{}{}",
            serde_json::to_string(&sts).unwrap(),
            serde_json::to_string(&job).unwrap()
        );
        assert!(!text.contains("value-of"));
        assert!(text.contains("-master.telemetry=false"));
        let pod = sts[0]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        assert!(job.metadata.name.unwrap().len() <= 63);
    }

    #[test]
    fn debug_output_hides_secret_values() {
        let s = StorageSecrets {
            store: store_keys(),
            credentials: BTreeMap::from([("aws".to_string(), Some(s3_secret()))]),
        };
        let text = format!("{s:?}");
        assert!(
            !text.contains("value-of") && !text.contains("s3cr3t"),
            "{text}"
        );
    }
}
