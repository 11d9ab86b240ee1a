//! A container's environment as the kubelet builds it: `env` with `value`, `secretKeyRef`,
//! `configMapKeyRef`, `fieldRef` and `resourceFieldRef`, `envFrom`, and `$(VAR)` expansion.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{ConfigMap, Container, Pod, Secret, Service},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{Api, Client};

/// Expands `$(VAR)` from `vars`; `$$` is a literal `$`; unknown references stay as written.
pub fn expand(input: &str, vars: &BTreeMap<String, String>) -> String {
    let b = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = input[i + 2..].find(')')
            {
                let name = &input[i + 2..i + 2 + end];
                if let Some(v) = vars.get(name) {
                    out.push_str(v);
                } else {
                    out.push_str(&input[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = input[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// A quantity as a number (cores or bytes).
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        _ => return None,
    };
    Some(n * mult)
}

/// The value of a `fieldRef` path.
pub fn field(pod: &Pod, path: &str, pod_ip: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        map?.get(key).cloned()
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" | "status.podIPs" => Some(pod_ip.to_string()),
        "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
        p if p.starts_with("metadata.labels") => keyed("metadata.labels", meta.labels.as_ref()),
        p if p.starts_with("metadata.annotations") => {
            keyed("metadata.annotations", meta.annotations.as_ref())
        }
        _ => None,
    }
}

fn resource(c: &Container, name: &str, divisor: Option<&Quantity>) -> Option<String> {
    let (kind, res) = name.split_once('.')?;
    let r = c.resources.as_ref();
    let set = match kind {
        "limits" => r.and_then(|r| r.limits.as_ref()),
        "requests" => r.and_then(|r| r.requests.as_ref()),
        _ => None,
    };
    // Without a limit the kubelet reports the node's allocatable (see cluster.rs).
    let value = match set.and_then(|m| m.get(res)) {
        Some(q) => quantity(&q.0)?,
        None if res == "cpu" => 32.0,
        None => quantity("256Gi")?,
    };
    let d = divisor.and_then(|d| quantity(&d.0)).unwrap_or(1.0);
    Some(format!("{}", (value / d).ceil() as i64))
}

/// Why a container cannot start yet (the kubelet's `CreateContainerConfigError`).
#[derive(Debug)]
pub struct ConfigError(pub String);

async fn secret(client: &Client, ns: &str, name: &str) -> Result<Option<Secret>, ConfigError> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| ConfigError(format!("reading Secret {name}: {e}")))
}

async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<ConfigMap>, ConfigError> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .map_err(|e| ConfigError(format!("reading ConfigMap {name}: {e}")))
}

fn secret_value(s: &Secret, key: &str) -> Option<String> {
    if let Some(v) = s.data.as_ref().and_then(|d| d.get(key)) {
        return Some(String::from_utf8_lossy(&v.0).into_owned());
    }
    s.string_data.as_ref().and_then(|d| d.get(key)).cloned()
}

/// `KUBERNETES_SERVICE_HOST`/`_PORT` (and `_PORT_HTTPS`) of the `default/kubernetes` Service.
async fn kubernetes_service(client: &Client) -> Result<Vec<(String, String)>, ConfigError> {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = api
        .get_opt("kubernetes")
        .await
        .map_err(|e| ConfigError(format!("reading Service default/kubernetes: {e}")))?;
    let spec = svc.and_then(|s| s.spec);
    let host = spec.as_ref().and_then(|s| s.cluster_ip.clone());
    let port = spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|p| {
            p.iter()
                .find(|p| p.name.as_deref() == Some("https"))
                .or(p.first())
        })
        .map(|p| p.port.to_string());
    Ok(match (host, port) {
        (Some(h), Some(p)) => vec![
            ("KUBERNETES_SERVICE_HOST".into(), h),
            ("KUBERNETES_SERVICE_PORT".into(), p.clone()),
            ("KUBERNETES_SERVICE_PORT_HTTPS".into(), p),
        ],
        _ => Vec::new(),
    })
}

/// The container's environment after the image's (`base`): the pod's `envFrom`, then `env`.
pub async fn resolve(
    client: &Client,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    base: &[(String, String)],
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut order: Vec<String> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    fn set(vars: &mut BTreeMap<String, String>, k: String, v: String, order: &mut Vec<String>) {
        if !vars.contains_key(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    }
    for (k, v) in base {
        set(&mut vars, k.clone(), v.clone(), &mut order);
    }
    // What the kubelet gives every container: where the API server's Service is (in-cluster
    // clients such as the operator find the API server with these).
    for (k, v) in kubernetes_service(client).await? {
        set(&mut vars, k, v, &mut order);
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            match config_map(client, ns, &r.name).await? {
                Some(cm) => {
                    for (k, v) in cm.data.unwrap_or_default() {
                        set(&mut vars, format!("{prefix}{k}"), v, &mut order);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("configmap \"{}\" not found", r.name))),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secret(client, ns, &r.name).await? {
                Some(s) => {
                    for (k, v) in s.data.unwrap_or_default() {
                        set(
                            &mut vars,
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                            &mut order,
                        );
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(from) = &e.value_from {
            if let Some(r) = &from.secret_key_ref {
                match secret(client, ns, &r.name).await? {
                    Some(s) => match secret_value(&s, &r.key) {
                        Some(v) => Some(v),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in Secret {}/{}",
                                r.key, ns, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => return Err(ConfigError(format!("secret \"{}\" not found", r.name))),
                }
            } else if let Some(r) = &from.config_map_key_ref {
                match config_map(client, ns, &r.name).await? {
                    Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                        Some(v) => Some(v.clone()),
                        None if r.optional == Some(true) => None,
                        None => {
                            return Err(ConfigError(format!(
                                "couldn't find key {} in ConfigMap {}/{}",
                                r.key, ns, r.name
                            )));
                        }
                    },
                    None if r.optional == Some(true) => None,
                    None => {
                        return Err(ConfigError(format!("configmap \"{}\" not found", r.name)));
                    }
                }
            } else if let Some(f) = &from.field_ref {
                field(pod, &f.field_path, pod_ip)
            } else if let Some(r) = &from.resource_field_ref {
                resource(c, &r.resource, r.divisor.as_ref())
            } else {
                None
            }
        } else {
            Some(expand(e.value.as_deref().unwrap_or(""), &vars))
        };
        if let Some(v) = value {
            set(&mut vars, e.name.clone(), v, &mut order);
        }
    }
    Ok(order
        .into_iter()
        .filter_map(|k| vars.get(&k).map(|v| (k, v.clone())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let vars = BTreeMap::from([("POD_NAME".to_string(), "tator-seaweedfs-0".to_string())]);
        assert_eq!(
            expand("-ip=$(POD_NAME).tator-seaweedfs-hl", &vars),
            "-ip=tator-seaweedfs-0.tator-seaweedfs-hl"
        );
        assert_eq!(expand("$$(POD_NAME)", &vars), "$(POD_NAME)");
        assert_eq!(expand("$(UNSET) $HOME", &vars), "$(UNSET) $HOME");
        assert_eq!(
            expand("caf\u{e9} $(POD_NAME", &vars),
            "caf\u{e9} $(POD_NAME"
        );
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("2Gi"), Some(2.0 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("lots"), None);
    }
}
