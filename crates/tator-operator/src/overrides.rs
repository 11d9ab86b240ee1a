//! What `podOverrides` may change.
//!
//! Whoever may edit a TatorDeployment should not get more than the pods the operator runs for
//! it. Two rules hold whatever the policy:
//!
//! - the operator's invariants: its labels (`app.kubernetes.io/*`, `tator.io/*`, which the
//!   selectors and pruning rely on) and the pod's service account stay as generated, and the
//!   lists of containers, init containers and volumes merge item by item (a `null` or an item
//!   without a name would drop what the operator generates);
//! - with the default `restricted` policy, nothing in an override may go beyond PodSecurity
//!   `restricted`: no host namespaces, host paths, host ports or devices, no privilege, no root,
//!   no added capability but NET_BIND_SERVICE, no unconfined profile, only the volume types that
//!   policy allows, and no reference to a Secret (secret volumes, `secretKeyRef`, `envFrom`
//!   Secrets): the Secrets the operator uses are the ones the spec names in fields made for them.
//!
//! The operator's `--overrides-policy=unrestricted` (chart value `overridesPolicy`) lifts the
//! second rule for clusters that need more, such as a sidecar with host access.

use serde_json::{Map, Value};

/// How far `podOverrides` may go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Policy {
    /// Within PodSecurity `restricted` and the operator's invariants.
    #[default]
    Restricted,
    /// Anything a pod template allows, except the operator's invariants.
    Unrestricted,
}

/// Label prefixes the operator owns.
const OWN_LABELS: &[&str] = &["app.kubernetes.io/", "tator.io/"];
/// Pod fields that are never overridden.
const INVARIANT_POD_FIELDS: &[&str] = &["serviceAccountName", "serviceAccount"];
/// Lists that merge by name.
const NAMED_LISTS: &[&str] = &["containers", "initContainers", "volumes"];
/// Pod fields beyond `restricted`, or that would widen what the pod can reach, with the one
/// value that is allowed (the tightening one), if any.
const RESTRICTED_POD_FIELDS: &[(&str, Option<bool>)] = &[
    ("hostNetwork", Some(false)),
    ("hostPID", Some(false)),
    ("hostIPC", Some(false)),
    ("hostUsers", Some(false)),
    ("shareProcessNamespace", Some(false)),
    ("automountServiceAccountToken", Some(false)),
    ("nodeName", None),
    ("ephemeralContainers", None),
    ("runtimeClassName", None),
];
/// Volume types PodSecurity `restricted` allows, less the ones that carry Secrets or tokens.
const VOLUME_TYPES: &[&str] = &[
    "configMap",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
];
/// Pod securityContext fields an override may set.
const POD_SECURITY_FIELDS: &[&str] = &[
    "fsGroup",
    "fsGroupChangePolicy",
    "supplementalGroups",
    "supplementalGroupsPolicy",
    "seccompProfile",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
];
/// Container securityContext fields an override may set (values checked below).
const CONTAINER_SECURITY_FIELDS: &[&str] = &[
    "allowPrivilegeEscalation",
    "capabilities",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "seccompProfile",
];

/// Checks the overrides of one component (`path` names it in errors, e.g. `api.podOverrides`).
pub fn check(path: &str, overrides: &Value, policy: Policy) -> Result<(), String> {
    let Some(root) = overrides.as_object() else {
        return Err(format!("{path} must be an object (a PodTemplateSpec)"));
    };
    if let Some(meta) = root.get("metadata").and_then(Value::as_object)
        && let Some(labels) = meta.get("labels").and_then(Value::as_object)
    {
        for key in labels.keys() {
            if OWN_LABELS.iter().any(|p| key.starts_with(p)) {
                return Err(format!(
                    "{path}.metadata.labels.{key}: the operator's labels select and prune its objects and cannot be overridden"
                ));
            }
        }
    }
    let Some(spec) = root.get("spec") else {
        return Ok(());
    };
    let Some(spec) = spec.as_object() else {
        return Err(format!("{path}.spec must be an object"));
    };
    let at = |k: &str| format!("{path}.spec.{k}");
    for k in INVARIANT_POD_FIELDS {
        if spec.contains_key(*k) {
            return Err(format!(
                "{}: the operator sets the service account of its pods",
                at(k)
            ));
        }
    }
    for k in NAMED_LISTS {
        match spec.get(*k) {
            None => {}
            Some(Value::Array(items))
                if items
                    .iter()
                    .all(|i| i.get("name").is_some_and(Value::is_string)) => {}
            Some(_) => {
                return Err(format!(
                    "{} must be a list of items with a name (they merge by name with the generated ones, which cannot be removed)",
                    at(k)
                ));
            }
        }
    }
    if policy == Policy::Unrestricted {
        return Ok(());
    }
    let beyond = |what: &str| {
        format!(
            "{what} goes beyond what podOverrides may change (PodSecurity restricted, no Secrets); the operator's --overrides-policy=unrestricted allows it"
        )
    };
    for (k, allowed) in RESTRICTED_POD_FIELDS {
        if let Some(v) = spec.get(*k)
            && allowed.is_none_or(|a| v != &Value::Bool(a))
        {
            return Err(beyond(&format!("{}: {v}", at(k))));
        }
    }
    if let Some(sc) = spec.get("securityContext") {
        check_security(&at("securityContext"), sc, POD_SECURITY_FIELDS, &beyond)?;
    }
    for (i, v) in items(spec, "volumes") {
        let here = format!("{}[{i}]", at("volumes"));
        for key in v.keys() {
            if key != "name" && !VOLUME_TYPES.contains(&key.as_str()) {
                return Err(beyond(&format!("{here}.{key}")));
            }
        }
    }
    for list in ["containers", "initContainers"] {
        for (i, c) in items(spec, list) {
            check_container(&format!("{}[{i}]", at(list)), c, &beyond)?;
        }
    }
    Ok(())
}

fn items<'a>(
    spec: &'a Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = (usize, &'a Map<String, Value>)> {
    spec.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .enumerate()
}

fn check_container(
    here: &str,
    c: &Map<String, Value>,
    beyond: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    if c.contains_key("volumeDevices") {
        return Err(beyond(&format!("{here}.volumeDevices")));
    }
    if let Some(sc) = c.get("securityContext") {
        check_security(
            &format!("{here}.securityContext"),
            sc,
            CONTAINER_SECURITY_FIELDS,
            beyond,
        )?;
    }
    // Host ports and Secret references, wherever a container's lists can hold them.
    for (list, pointer) in [
        ("ports", "/hostPort"),
        ("ports", "/hostIP"),
        ("env", "/valueFrom/secretKeyRef"),
        ("envFrom", "/secretRef"),
    ] {
        let entries = c.get(list).and_then(Value::as_array).into_iter().flatten();
        for (j, e) in entries.enumerate() {
            if e.pointer(pointer).is_some() {
                return Err(beyond(&format!(
                    "{here}.{list}[{j}]{}",
                    pointer.replace('/', ".")
                )));
            }
        }
    }
    Ok(())
}

/// A securityContext that only keeps or tightens: no privilege, no root, no added capability but
/// NET_BIND_SERVICE, a confined seccomp profile.
fn check_security(
    here: &str,
    sc: &Value,
    allowed: &[&str],
    beyond: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let Some(sc) = sc.as_object() else {
        return Err(format!("{here} must be an object"));
    };
    for (k, v) in sc {
        let field = format!("{here}.{k}");
        let ok = allowed.contains(&k.as_str())
            && match k.as_str() {
                "allowPrivilegeEscalation" => v == &Value::Bool(false),
                "runAsNonRoot" => v == &Value::Bool(true),
                "runAsUser" | "runAsGroup" | "fsGroup" => v.as_i64().is_some_and(|id| id > 0),
                "supplementalGroups" => v
                    .as_array()
                    .is_some_and(|g| g.iter().all(|id| id.as_i64().is_some_and(|id| id > 0))),
                "seccompProfile" => matches!(
                    v.get("type").and_then(Value::as_str),
                    Some("RuntimeDefault" | "Localhost")
                ),
                "capabilities" => v
                    .get("add")
                    .and_then(Value::as_array)
                    .is_none_or(|add| add.iter().all(|c| c == "NET_BIND_SERVICE")),
                _ => true,
            };
        if !ok {
            return Err(beyond(&format!("{field}: {v}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(o: Value, policy: Policy) -> String {
        check("api.podOverrides", &o, policy).unwrap_err()
    }

    #[test]
    fn ordinary_overrides_pass() {
        for o in [
            json!({"metadata": {"labels": {"team": "vision"}, "annotations": {"a": "b"}}}),
            json!({"spec": {
                "containers": [{"name": "api", "args": ["--x"], "env": [{"name": "A", "value": "1"}],
                    "securityContext": {"readOnlyRootFilesystem": true, "runAsUser": 1000,
                        "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}],
                "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
                            {"name": "cfg", "configMap": {"name": "c"}}],
                "priorityClassName": "high", "terminationGracePeriodSeconds": 60,
                "securityContext": {"fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
                "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
                "automountServiceAccountToken": false, "hostNetwork": false, "hostUsers": false,
            }}),
        ] {
            assert_eq!(
                check("api.podOverrides", &o, Policy::Restricted),
                Ok(()),
                "{o}"
            );
        }
    }

    #[test]
    fn escalations_are_refused_under_the_default_policy() {
        for (o, field) in [
            (json!({"spec": {"hostNetwork": true}}), "spec.hostNetwork"),
            (json!({"spec": {"hostPID": true}}), "spec.hostPID"),
            (
                json!({"spec": {"automountServiceAccountToken": true}}),
                "spec.automountServiceAccountToken",
            ),
            (
                json!({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
                "spec.volumes[0].hostPath",
            ),
            (
                json!({"spec": {"volumes": [{"name": "s", "secret": {"secretName": "other"}}]}}),
                "spec.volumes[0].secret",
            ),
            (
                json!({"spec": {"volumes": [{"name": "t", "projected": {"sources": []}}]}}),
                "spec.volumes[0].projected",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "securityContext": {"privileged": true}}]}}),
                "securityContext.privileged",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "securityContext": {"allowPrivilegeEscalation": true}}]}}),
                "allowPrivilegeEscalation",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "securityContext": {"runAsUser": 0}}]}}),
                "runAsUser",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}}),
                "capabilities",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "x", "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}}),
                "initContainers[0].securityContext.seccompProfile",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "ports": [{"containerPort": 1, "hostPort": 1}]}]}}),
                "hostPort",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]}]}}),
                "secretKeyRef",
            ),
            (
                json!({"spec": {"containers": [{"name": "api", "envFrom": [{"secretRef": {"name": "other"}}]}]}}),
                "envFrom[0].secretRef",
            ),
            (
                json!({"spec": {"securityContext": {"runAsNonRoot": false}}}),
                "spec.securityContext.runAsNonRoot",
            ),
            (
                json!({"spec": {"securityContext": {"sysctls": []}}}),
                "spec.securityContext.sysctls",
            ),
        ] {
            let err = refused(o.clone(), Policy::Restricted);
            assert!(
                err.contains(field) && err.contains("--overrides-policy=unrestricted"),
                "{o}: {err}"
            );
            assert_eq!(
                check("api.podOverrides", &o, Policy::Unrestricted),
                Ok(()),
                "{o}"
            );
        }
    }

    #[test]
    fn the_operators_invariants_hold_under_every_policy() {
        for policy in [Policy::Restricted, Policy::Unrestricted] {
            for (o, field) in [
                (
                    json!({"spec": {"serviceAccountName": "tator-operator"}}),
                    "spec.serviceAccountName",
                ),
                (
                    json!({"metadata": {"labels": {"app.kubernetes.io/instance": "other"}}}),
                    "app.kubernetes.io/instance",
                ),
                (
                    json!({"metadata": {"labels": {"tator.io/component": "x"}}}),
                    "tator.io/component",
                ),
                (
                    json!({"spec": {"containers": null}}),
                    "spec.containers must be a list",
                ),
                (
                    json!({"spec": {"containers": [{"image": "x"}]}}),
                    "spec.containers must be a list",
                ),
                (json!({"spec": {"volumes": []}}), ""),
            ] {
                if field.is_empty() {
                    assert_eq!(check("api.podOverrides", &o, policy), Ok(()));
                    continue;
                }
                let err = refused(o.clone(), policy);
                assert!(err.contains(field), "{o}: {err}");
            }
        }
    }
}
