//! PostgreSQL, Redis and Elasticsearch: the in-cluster workloads, and the Secrets the operator
//! generates once. Where Tator finds these services (in-cluster or managed) is
//! [`super::tator_env::endpoints`]. Secret values are only ever `secretKeyRef`s.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, StatefulSet, StatefulSetSpec},
        core::v1::{
            ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, PodSpec,
            Probe, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};

use super::{
    common::*,
    names::{DATABASE, ELASTICSEARCH, PGBOUNCER, POSTGRES, REDIS, REDIS_IMAGE},
    tator_env::DJANGO_SECRET_KEY,
};
use crate::validate::ValidatedTator;

/// Extensions Tator needs.
pub const EXTENSIONS: &[&str] = &["ltree", "postgis", "vector", "pg_trgm"];
pub const ES_IMAGE: &str = "docker.elastic.co/elasticsearch/elasticsearch:8.15.5";
pub const PGBOUNCER_IMAGE: &str = "bitnami/pgbouncer:1.23.1";
const POSTGRES_UID: i64 = 999;
const REDIS_UID: i64 = 999;
const ES_UID: i64 = 1000;
const PGBOUNCER_UID: i64 = 1001;
/// Secrets the operator generates for in-cluster services (and the Django key).
pub fn generated_secrets(t: &ValidatedTator) -> Vec<GeneratedSecret> {
    let mut out = vec![GeneratedSecret {
        name: t.child_name("django"),
        component: "api",
        fixed: BTreeMap::new(),
        random: vec![(DJANGO_SECRET_KEY.into(), 64)],
    }];
    if t.spec.postgres.in_cluster.is_some() {
        out.push(GeneratedSecret {
            name: t.child_name(POSTGRES),
            component: POSTGRES,
            fixed: BTreeMap::from([("username".to_string(), "tator".to_string())]),
            random: vec![("password".into(), 32)],
        });
    }
    out.extend(super::objects::generated_secret(t));
    out.extend(super::monitoring::generated_secret(t));
    if t.spec.redis.in_cluster.as_ref().is_some_and(|r| r.auth) {
        out.push(GeneratedSecret {
            name: t.child_name(REDIS),
            component: REDIS,
            fixed: BTreeMap::new(),
            random: vec![("password".into(), 32)],
        });
    }
    out
}

fn service(
    t: &ValidatedTator,
    name: String,
    component: &str,
    port: i32,
    headless: bool,
) -> Service {
    Service {
        metadata: child_meta(t, name, component, None),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_string()),
            publish_not_ready_addresses: headless.then_some(true),
            selector: Some(selector_labels(t, component)),
            ports: Some(vec![ServicePort {
                name: Some(component.into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Settings of Tator's `containers/postgis/postgresql.conf` that suit a pod, as `postgres -c`
/// arguments (any PostGIS image takes them). Left out: its per-operation work_mem and
/// maintenance_work_mem of 1 GB (a few parallel sorts would pass the pod's memory limit),
/// wal_level minimal (no replicas or point-in-time recovery) and the log collector (logs stay on
/// stderr for kubectl logs). shared_buffers is Tator's 4096MB, or a quarter of the memory limit
/// when that is less.
pub fn postgres_args(resources: &k8s_openapi::api::core::v1::ResourceRequirements) -> Vec<String> {
    const SETTINGS: &[(&str, &str)] = &[
        ("listen_addresses", "*"),
        ("max_connections", "2000"),
        ("dynamic_shared_memory_type", "posix"),
        ("max_parallel_workers_per_gather", "8"),
        ("max_parallel_maintenance_workers", "8"),
        ("max_parallel_workers", "8"),
        ("vacuum_cost_page_miss", "5"),
        ("random_page_cost", "1.1"),
        ("track_activity_query_size", "4096"),
        ("default_text_search_config", "pg_catalog.english"),
    ];
    let mut args = vec!["postgres".to_string()];
    for (k, v) in SETTINGS {
        args.push("-c".into());
        args.push(format!("{k}={v}"));
    }
    let limit_mb = resources
        .limits
        .as_ref()
        .and_then(|l| l.get("memory"))
        .and_then(|q| mebibytes(&q.0));
    let shared_buffers = limit_mb.map_or(4096, |m| (m / 4).clamp(128, 4096));
    args.push("-c".into());
    args.push(format!("shared_buffers={shared_buffers}MB"));
    args
}

/// Mebibytes of a memory quantity such as 8Gi, 512Mi or 2G (None for forms not handled).
fn mebibytes(q: &str) -> Option<u64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, unit) = q.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit {
        "Ki" => Some(n / 1024),
        "Mi" => Some(n),
        "Gi" => Some(n * 1024),
        "Ti" => Some(n * 1024 * 1024),
        "k" => Some(n * 1000 / (1024 * 1024)),
        "M" => Some(n * 1_000_000 / (1024 * 1024)),
        "G" => Some(n * 1_000_000_000 / (1024 * 1024)),
        "" => Some(n / (1024 * 1024)),
        _ => None,
    }
}

/// The release whose database image the in-cluster server runs: the serving one, else the
/// requested one (the data tier does not roll with a pending migration).
pub fn server_version(t: &ValidatedTator) -> String {
    t.serving_version
        .as_ref()
        .unwrap_or(&t.target_version)
        .to_string()
}

/// In-cluster PostgreSQL: a StatefulSet with a volume claim template, a headless and a client
/// Service, and optionally pgbouncer.
pub fn postgres(
    t: &ValidatedTator,
    version: &str,
) -> (Vec<StatefulSet>, Vec<Deployment>, Vec<Service>) {
    let Some(pg) = &t.spec.postgres.in_cluster else {
        return (vec![], vec![], vec![]);
    };
    let secret = t.child_name(POSTGRES);
    let mut c = container(
        POSTGRES,
        tator_image(t, "tator_postgis", version, &pg.pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    c.env = Some(vec![
        env_secret("POSTGRES_USER", &key_ref(&secret, "username")),
        env_secret("POSTGRES_PASSWORD", &key_ref(&secret, "password")),
        env("POSTGRES_DB", DATABASE),
        env("PGDATA", "/var/lib/postgresql/data/pgdata"),
    ]);
    c.ports = Some(vec![ContainerPort {
        name: Some(POSTGRES.into()),
        container_port: 5432,
        ..Default::default()
    }]);
    c.volume_mounts = Some(vec![
        VolumeMount {
            name: "data".into(),
            mount_path: "/var/lib/postgresql/data".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "run".into(),
            mount_path: "/var/run/postgresql".into(),
            ..Default::default()
        },
    ]);
    if let Some(mounts) = c.volume_mounts.as_mut() {
        mounts.push(VolumeMount {
            name: "shm".into(),
            mount_path: "/dev/shm".into(),
            ..Default::default()
        });
    }
    let ready = format!("pg_isready -h 127.0.0.1 -U \"$POSTGRES_USER\" -d {DATABASE}");
    c.readiness_probe = Some(exec_probe(&ready, 5, 10));
    c.liveness_probe = Some(exec_probe(&ready, 30, 20));
    let resources = resources_or(&pg.pod, requirements("500m", "2Gi", "8Gi"));
    c.args = Some(postgres_args(&resources));
    c.resources = Some(resources);
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![
            Volume {
                name: "run".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            },
            // Parallel queries keep their shared memory in /dev/shm (64 MiB in a pod otherwise).
            Volume {
                name: "shm".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: Some("Memory".into()),
                    size_limit: Some(Quantity(pg.shm_size.clone())),
                }),
                ..Default::default()
            },
        ]),
        security_context: Some(pod_security(POSTGRES_UID)),
        termination_grace_period_seconds: Some(120),
        ..Default::default()
    };
    let sts = StatefulSet {
        metadata: child_meta(t, t.child_name(POSTGRES), POSTGRES, None),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(t.child_name("postgres-hl")),
            selector: label_selector(t, POSTGRES),
            template: pod_template(t, POSTGRES, None, spec, BTreeMap::new(), &pg.pod),
            volume_claim_templates: Some(vec![claim_template("data", &pg.storage)]),
            persistent_volume_claim_retention_policy: Some(retention(t)),
            ..Default::default()
        }),
        status: None,
    };
    let mut services = vec![
        service(t, t.child_name("postgres-hl"), POSTGRES, 5432, true),
        service(t, t.child_name(POSTGRES), POSTGRES, 5432, false),
    ];
    let mut deployments = Vec::new();
    if pg.pgbouncer.enabled {
        let pb = &pg.pgbouncer;
        let mut c = container(
            PGBOUNCER,
            pb.pod
                .image
                .clone()
                .unwrap_or_else(|| PGBOUNCER_IMAGE.into()),
            t.spec.image.pull_policy.as_str(),
            false,
        );
        c.env = Some(vec![
            env("POSTGRESQL_HOST", t.child_name(POSTGRES)),
            env("POSTGRESQL_PORT", "5432"),
            env_secret("POSTGRESQL_USERNAME", &key_ref(&secret, "username")),
            env_secret("POSTGRESQL_PASSWORD", &key_ref(&secret, "password")),
            env("POSTGRESQL_DATABASE", DATABASE),
            env("PGBOUNCER_DATABASE", DATABASE),
            env("PGBOUNCER_PORT", "5432"),
            env("PGBOUNCER_POOL_MODE", "session"),
        ]);
        c.ports = Some(vec![ContainerPort {
            name: Some(PGBOUNCER.into()),
            container_port: 5432,
            ..Default::default()
        }]);
        let tcp = |initial| Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(5432),
                ..Default::default()
            }),
            initial_delay_seconds: Some(initial),
            period_seconds: Some(10),
            ..Default::default()
        };
        c.readiness_probe = Some(tcp(3));
        c.liveness_probe = Some(tcp(20));
        c.resources = Some(resources_or(
            &pb.pod,
            requirements("100m", "128Mi", "512Mi"),
        ));
        let spec = PodSpec {
            // Nothing in this pod calls the Kubernetes API: no token in it.
            automount_service_account_token: Some(false),
            containers: vec![c],
            security_context: Some(pod_security(PGBOUNCER_UID)),
            ..Default::default()
        };
        deployments.push(Deployment {
            metadata: child_meta(t, t.child_name(PGBOUNCER), PGBOUNCER, None),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: label_selector(t, PGBOUNCER),
                template: pod_template(t, PGBOUNCER, None, spec, BTreeMap::new(), &pb.pod),
                ..Default::default()
            }),
            status: None,
        });
        services.push(service(t, t.child_name(PGBOUNCER), PGBOUNCER, 5432, false));
    }
    (vec![sts], deployments, services)
}

/// In-cluster Redis: a one-replica Deployment (Tator keeps only transient data in it) and a
/// Service, with a generated password unless `auth: false`.
pub fn redis(t: &ValidatedTator) -> (Vec<Deployment>, Vec<Service>) {
    let Some(r) = &t.spec.redis.in_cluster else {
        return (vec![], vec![]);
    };
    let mut c = container(
        REDIS,
        r.pod.image.clone().unwrap_or_else(|| REDIS_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        true,
    );
    // As Tator runs it: bounded memory, least recently used keys evicted first.
    let mut args = format!(
        "exec redis-server --port 6379 --save '' --appendonly no --dir /data --maxmemory {} --maxmemory-policy allkeys-lru",
        r.max_memory
    );
    let mut probe = "redis-cli -h 127.0.0.1 ping | grep -q PONG".to_string();
    if r.auth {
        c.env = Some(vec![env_secret(
            "REDIS_PASSWORD",
            &key_ref(&t.child_name(REDIS), "password"),
        )]);
        // The password reaches redis-server as configuration on its standard input (`-`), not
        // on its command line, which every process on the node can read.
        args = args.replacen("exec redis-server ", "exec redis-server - ", 1);
        args.push_str(" <<EOF\nrequirepass \"$REDIS_PASSWORD\"\nEOF");
        probe =
            "REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli -h 127.0.0.1 ping | grep -q PONG".into();
    }
    c.command = Some(vec!["sh".into(), "-c".into(), args]);
    c.ports = Some(vec![ContainerPort {
        name: Some(REDIS.into()),
        container_port: 6379,
        ..Default::default()
    }]);
    c.volume_mounts = Some(vec![VolumeMount {
        name: "data".into(),
        mount_path: "/data".into(),
        ..Default::default()
    }]);
    c.readiness_probe = Some(exec_probe(&probe, 2, 10));
    c.liveness_probe = Some(exec_probe(&probe, 20, 20));
    c.resources = Some(resources_or(&r.pod, requirements("100m", "256Mi", "2Gi")));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(vec![Volume {
            name: "data".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        }]),
        security_context: Some(pod_security(REDIS_UID)),
        ..Default::default()
    };
    let deployment = Deployment {
        metadata: child_meta(t, t.child_name(REDIS), REDIS, None),
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: label_selector(t, REDIS),
            strategy: Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
                type_: Some("Recreate".into()),
                rolling_update: None,
            }),
            template: pod_template(t, REDIS, None, spec, BTreeMap::new(), &r.pod),
            ..Default::default()
        }),
        status: None,
    };
    (
        vec![deployment],
        vec![service(t, t.child_name(REDIS), REDIS, 6379, false)],
    )
}

/// Whether anything uses Elasticsearch: the release (none since Tator 1.5.0) or the logging
/// stack. Otherwise it is neither deployed nor checked.
pub fn elasticsearch_used(t: &ValidatedTator) -> bool {
    t.needs.elasticsearch
        || super::features::filebeat_wanted(t)
        || super::features::kibana_wanted(t)
}

/// In-cluster Elasticsearch: a StatefulSet (single-node by default) that needs no privileged
/// init container (`node.store.allow_mmap: false` instead of raising vm.max_map_count).
pub fn elasticsearch(t: &ValidatedTator) -> (Vec<StatefulSet>, Vec<Service>) {
    let Some(es) = t
        .spec
        .elasticsearch
        .in_cluster
        .as_ref()
        .filter(|_| elasticsearch_used(t))
    else {
        return (vec![], vec![]);
    };
    let name = t.child_name(ELASTICSEARCH);
    let headless = t.child_name("elasticsearch-hl");
    let mut c = container(
        ELASTICSEARCH,
        es.pod.image.clone().unwrap_or_else(|| ES_IMAGE.into()),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    let mut envs = vec![
        env("cluster.name", name.clone()),
        env("node.store.allow_mmap", "false"),
        env("xpack.security.enabled", "false"),
        env("ES_JAVA_OPTS", format!("-Xms{h} -Xmx{h}", h = es.heap)),
        EnvVar {
            name: "node.name".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if es.replicas == 1 {
        envs.push(env("discovery.type", "single-node"));
    } else {
        let nodes: Vec<String> = (0..es.replicas).map(|i| format!("{name}-{i}")).collect();
        envs.push(env("discovery.seed_hosts", headless.clone()));
        envs.push(env("cluster.initial_master_nodes", nodes.join(",")));
    }
    c.env = Some(envs);
    c.ports = Some(vec![
        ContainerPort {
            name: Some("http".into()),
            container_port: 9200,
            ..Default::default()
        },
        ContainerPort {
            name: Some("transport".into()),
            container_port: 9300,
            ..Default::default()
        },
    ]);
    c.volume_mounts = Some(vec![VolumeMount {
        name: "data".into(),
        mount_path: "/usr/share/elasticsearch/data".into(),
        ..Default::default()
    }]);
    c.readiness_probe = Some(Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/_cluster/health?local=true".into()),
            port: IntOrString::Int(9200),
            ..Default::default()
        }),
        initial_delay_seconds: Some(10),
        period_seconds: Some(10),
        ..Default::default()
    });
    c.resources = Some(resources_or(&es.pod, requirements("500m", "2Gi", "4Gi")));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        security_context: Some(pod_security(ES_UID)),
        ..Default::default()
    };
    let sts = StatefulSet {
        metadata: child_meta(t, name.clone(), ELASTICSEARCH, None),
        spec: Some(StatefulSetSpec {
            replicas: Some(es.replicas),
            service_name: Some(headless.clone()),
            selector: label_selector(t, ELASTICSEARCH),
            pod_management_policy: Some("Parallel".into()),
            template: pod_template(t, ELASTICSEARCH, None, spec, BTreeMap::new(), &es.pod),
            volume_claim_templates: Some(vec![claim_template("data", &es.storage)]),
            persistent_volume_claim_retention_policy: Some(retention(t)),
            ..Default::default()
        }),
        status: None,
    };
    let mut hl = service(t, headless, ELASTICSEARCH, 9300, true);
    if let Some(ports) = hl.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports[0].name = Some("transport".into());
    }
    let mut client = service(t, name, ELASTICSEARCH, 9200, false);
    if let Some(ports) = client.spec.as_mut().and_then(|s| s.ports.as_mut()) {
        ports[0].name = Some("http".into());
    }
    (vec![sts], vec![hl, client])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn first_container(
        template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    ) -> k8s_openapi::api::core::v1::Container {
        template.spec.as_ref().unwrap().containers[0].clone()
    }

    #[test]
    fn redis_is_bounded_and_evicts_least_recently_used_keys() {
        let mut td = minimal("1.5.0");
        let t = validate(&td).unwrap();
        let (d, _) = redis(&t);
        let cmd = first_container(&d[0].spec.as_ref().unwrap().template)
            .command
            .unwrap();
        assert!(
            cmd[2].contains("--maxmemory 2048mb --maxmemory-policy allkeys-lru"),
            "{}",
            cmd[2]
        );
        td.spec.redis.in_cluster.as_mut().unwrap().max_memory = "1gb".into();
        let (d, _) = redis(&validate(&td).unwrap());
        let cmd = first_container(&d[0].spec.as_ref().unwrap().template)
            .command
            .unwrap();
        assert!(cmd[2].contains("--maxmemory 1gb "), "{}", cmd[2]);
    }

    /// The password is configuration on standard input, never an argument of redis-server
    /// (anyone on the node can read a process's arguments).
    #[test]
    fn the_redis_password_is_not_on_the_command_line() {
        let mut td = minimal("1.5.0");
        td.spec.redis.in_cluster.as_mut().unwrap().auth = true;
        let (d, _) = redis(&validate(&td).unwrap());
        let script = first_container(&d[0].spec.as_ref().unwrap().template)
            .command
            .unwrap()[2]
            .clone();
        let (command, stdin) = script.split_once(" <<EOF\n").expect("a here-document");
        assert!(command.starts_with("exec redis-server - "), "{script}");
        assert!(!command.contains("REDIS_PASSWORD"), "{script}");
        assert_eq!(stdin, "requirepass \"$REDIS_PASSWORD\"\nEOF");
    }

    #[test]
    fn postgres_has_memory_backed_shm_and_tators_settings() {
        let mut td = minimal("1.5.0");
        td.spec.postgres.in_cluster.as_mut().unwrap().shm_size = "1Gi".into();
        let t = validate(&td).unwrap();
        let (sts, _, _) = postgres(&t, "1.5.0");
        let template = &sts[0].spec.as_ref().unwrap().template;
        let pod = template.spec.as_ref().unwrap();
        let shm = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "shm")
            .and_then(|v| v.empty_dir.clone())
            .unwrap();
        assert_eq!(shm.medium.as_deref(), Some("Memory"));
        assert_eq!(shm.size_limit, Some(Quantity("1Gi".into())));
        let c = first_container(template);
        assert!(
            c.volume_mounts
                .unwrap()
                .iter()
                .any(|m| m.name == "shm" && m.mount_path == "/dev/shm")
        );
        assert_eq!(
            c.image.as_deref(),
            Some("cvisionai/tator_postgis:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        let args = c.args.unwrap().join(" ");
        assert!(args.starts_with("postgres "), "{args}");
        for setting in [
            "max_connections=2000",
            "dynamic_shared_memory_type=posix",
            "max_parallel_workers=8",
            "random_page_cost=1.1",
            // A quarter of the default 8Gi limit (Tator's 4096MB needs a 16Gi pod).
            "shared_buffers=2048MB",
        ] {
            assert!(args.contains(&format!("-c {setting}")), "{setting}: {args}");
        }
        assert_eq!(mebibytes("16Gi"), Some(16384));
        assert_eq!(mebibytes("512Mi"), Some(512));
        assert_eq!(mebibytes("lots"), None);
    }

    #[test]
    fn elasticsearch_only_where_something_uses_it() {
        let mut td = minimal("1.5.0");
        let t = validate(&td).unwrap();
        assert_eq!(elasticsearch(&t), (vec![], vec![]));
        td.spec.logging.enabled = true;
        let (sts, services) = elasticsearch(&validate(&td).unwrap());
        assert_eq!((sts.len(), services.len()), (1, 2));
    }
}
