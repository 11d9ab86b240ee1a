//! A pod's volumes as host folders: emptyDir (per pod), persistentVolumeClaim (per claim, kept
//! across pods, like a real volume), configMap, secret, downwardAPI and projected volumes
//! (files written from the API server, ServiceAccount tokens from the TokenRequest API).

use std::{
    collections::BTreeMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount, Volume},
};
use kube::{Api, Client, api::PostParams};

use super::env::field;

fn io(what: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", what.display())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: i32) -> Result<(), String> {
    let path = dir.join(rel.trim_start_matches('/'));
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| io(p, e))?;
    }
    std::fs::write(&path, data).map_err(|e| io(&path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode as u32 & 0o777))
        .map_err(|e| io(&path, e))
}

fn items_or_all(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
) -> Vec<(String, Vec<u8>, i32)> {
    match items {
        Some(items) => items
            .iter()
            .filter_map(|i| {
                data.get(&i.key)
                    .map(|d| (i.path.clone(), d.clone(), i.mode.unwrap_or(default_mode)))
            })
            .collect(),
        None => data
            .into_iter()
            .map(|(k, v)| (k, v, default_mode))
            .collect(),
    }
}

/// Writes a ConfigMap's or Secret's data (all keys, or the listed items) as files.
fn write_items(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: i32,
) -> Result<(), String> {
    for (p, bytes, m) in items_or_all(data, items, default_mode) {
        write_file(dir, &p, &bytes, m)?;
    }
    Ok(())
}

async fn config_map_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
    Ok(cm.map(|cm| {
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.unwrap_or_default() {
            out.insert(k, v.0);
        }
        out
    }))
}

async fn secret_data(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    let s = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?;
    Ok(s.map(|s| {
        s.data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()
    }))
}

async fn token(
    client: &Client,
    ns: &str,
    sa: &str,
    audience: Option<&str>,
    seconds: Option<i64>,
) -> Result<String, String> {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(seconds.unwrap_or(3607)),
            ..Default::default()
        },
        ..Default::default()
    };
    let out: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .map_err(|e| format!("requesting a token for ServiceAccount {sa}: {e}"))?;
    Ok(out.status.map(|s| s.token).unwrap_or_default())
}

/// Prepares every volume of `pod` and returns its host folder by volume name.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    pod_dir: &Path,
    claims_dir: &Path,
    pod_ip: &str,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = BTreeMap::new();
    let volumes: Vec<Volume> = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in volumes {
        let dir = if let Some(claim) = &v.persistent_volume_claim {
            claims_dir.join(ns).join(&claim.claim_name)
        } else {
            pod_dir.join("volumes").join(&v.name)
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        if v.empty_dir.is_some() || v.persistent_volume_claim.is_some() {
            // World-writable, as the kubelet makes emptyDir folders (and as a hostPath
            // provisioner's volumes are).
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| io(&dir, e))?;
        } else if let Some(cm) = &v.config_map {
            let mode = cm.default_mode.unwrap_or(0o644);
            match config_map_data(client, ns, &cm.name).await? {
                Some(d) => {
                    write_items(&dir, d, cm.items.as_ref(), mode)?;
                }
                None if cm.optional == Some(true) => {}
                None => return Err(format!("configmap \"{}\" not found", cm.name)),
            }
        } else if let Some(s) = &v.secret {
            let mode = s.default_mode.unwrap_or(0o644);
            let name = s.secret_name.clone().unwrap_or_default();
            match secret_data(client, ns, &name).await? {
                Some(d) => {
                    write_items(&dir, d, s.items.as_ref(), mode)?;
                }
                None if s.optional == Some(true) => {}
                None => return Err(format!("secret \"{name}\" not found")),
            }
        } else if let Some(d) = &v.downward_api {
            for item in d.items.iter().flatten() {
                if let Some(f) = &item.field_ref {
                    let value = field(pod, &f.field_path, pod_ip).unwrap_or_default();
                    write_file(
                        &dir,
                        &item.path,
                        value.as_bytes(),
                        item.mode.unwrap_or(0o644),
                    )?;
                }
            }
        } else if let Some(p) = &v.projected {
            let mode = p.default_mode.unwrap_or(0o644);
            for src in p.sources.iter().flatten() {
                if let Some(t) = &src.service_account_token {
                    let sa = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_else(|| "default".into());
                    let tok =
                        token(client, ns, &sa, t.audience.as_deref(), t.expiration_seconds).await?;
                    write_file(&dir, &t.path, tok.as_bytes(), mode)?;
                }
                if let Some(cm) = &src.config_map
                    && let Some(d) = config_map_data(client, ns, &cm.name).await?
                {
                    write_items(&dir, d, cm.items.as_ref(), mode)?;
                }
                if let Some(s) = &src.secret
                    && let Some(d) = secret_data(client, ns, &s.name).await?
                {
                    write_items(&dir, d, s.items.as_ref(), mode)?;
                }
                if let Some(d) = &src.downward_api {
                    for item in d.items.iter().flatten() {
                        if let Some(f) = &item.field_ref {
                            let value = field(pod, &f.field_path, pod_ip).unwrap_or_default();
                            write_file(
                                &dir,
                                &item.path,
                                value.as_bytes(),
                                item.mode.unwrap_or(mode),
                            )?;
                        }
                    }
                }
            }
        } else if let Some(h) = &v.host_path {
            out.insert(v.name.clone(), PathBuf::from(&h.path));
            continue;
        } else {
            return Err(format!(
                "volume {}: this kind of volume is not supported by the process node",
                v.name
            ));
        }
        out.insert(v.name.clone(), dir);
    }
    Ok(out)
}
