//! The worker loop of one job cluster: check, apply what changed (everything again every
//! [`FULL_APPLY_INTERVAL`]), prune what is no longer wanted, read Tator's token back, report.

use super::*;

pub(super) async fn run_worker(
    main: Client,
    consent: crate::consent::Mode,
    mut rx: watch::Receiver<Desired>,
    (report, checks): (Arc<Mutex<Report>>, Arc<std::sync::atomic::AtomicU64>),
    trigger: Option<UnboundedSender<ObjectRef<TatorDeployment>>>,
) {
    let mut session: Option<Session> = None;
    let mut last: Option<LastApply> = None;
    let mut failures: u32 = 0;
    loop {
        let d = rx.borrow_and_update().clone();
        let r = match tokio::time::timeout(
            ATTEMPT_TIMEOUT,
            sync_once(&main, consent, &d, &mut session, &mut last),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => {
                session = None;
                last = None;
                Report {
                    reachable: Finding::new(
                        false,
                        "Unreachable",
                        format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
                    ),
                    ..Report::default()
                }
            }
        };
        let healthy = r.reachable.ok && r.templates.ok;
        failures = if healthy {
            0
        } else {
            failures.saturating_add(1)
        };
        let changed = report
            .lock()
            .map(|mut cur| {
                let changed = *cur != r;
                *cur = r.clone();
                changed
            })
            .unwrap_or(false);
        if changed {
            info!(tator = %d.name, cluster = %d.cluster.name, reachable = %r.reachable.reason, templates = %r.templates.reason, "job cluster state changed");
            if let Some(tx) = &trigger {
                let _ = tx.unbounded_send(ObjectRef::new(&d.name).within(&d.namespace));
            }
        }
        checks.fetch_add(1, std::sync::atomic::Ordering::Release);
        let wait = if healthy {
            CHECK_INTERVAL
        } else {
            backoff(failures)
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// 2 s, 4 s, 8 s, … capped at [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.clamp(1, 5);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

/// What the last full apply left in a cluster.
pub(super) struct LastApply {
    /// [`Desired::digest`] of what was applied.
    pub(super) digest: String,
    pub(super) argo: bool,
    pub(super) at: std::time::Instant,
    pub(super) objects: Vec<String>,
}

/// How often a healthy cluster's objects are applied again although nothing changed (drift
/// repair); the checks in between only read.
pub const FULL_APPLY_INTERVAL: Duration = Duration::from_secs(300);

pub(super) fn templates_check(
    d: &Desired,
    argo: bool,
    credentials: Option<&Credentials>,
) -> Finding {
    match (&d.objects.templates, argo, credentials) {
        (Err(e), _, _) => Finding::new(false, "InvalidTemplate", e.clone()),
        (Ok(_), false, _) => Finding::new(
            false,
            "ArgoNotInstalled",
            "Argo Workflows' CRDs (workflowtemplates.argoproj.io) are not installed in the job cluster",
        ),
        (_, _, None) => Finding::new(
            false,
            "TokenPending",
            "waiting for the token controller to fill Tator's token Secret",
        ),
        (Ok(t), _, Some(_)) => Finding::new(
            true,
            "Applied",
            format!(
                "namespace {}, roles, token and {} WorkflowTemplate(s) applied",
                d.cluster.namespace,
                t.len()
            ),
        ),
    }
}

pub(super) fn unreachable(check: Finding, server: Option<String>) -> Report {
    Report {
        reachable: check,
        templates: Finding::new(false, "Unreachable", "the cluster could not be reached"),
        server,
        ..Report::default()
    }
}

pub(super) async fn sync_once(
    main: &Client,
    consent: crate::consent::Mode,
    d: &Desired,
    cached: &mut Option<Session>,
    last: &mut Option<LastApply>,
) -> Report {
    let who =
        (consent == crate::consent::Mode::Required).then_some((d.name.as_str(), d.uid.as_str()));
    let s = match session(
        main,
        &d.namespace,
        &d.cluster.kubeconfig_secret,
        who,
        cached,
    )
    .await
    {
        Ok(s) => s,
        Err(check) => return unreachable(check, None),
    };
    let client = s.client.clone();
    let server = Some(s.server.clone());
    if let Err(e) = client.apiserver_version().await {
        *cached = None;
        *last = None;
        return unreachable(reach_error(&e), server);
    }
    let reachable = Finding::new(true, "Connected", format!("{} answers", s.server));
    // Nothing changed since the last apply: read only (Argo's CRDs and Tator's token).
    if let Some(l) = last.as_ref()
        && l.digest == d.digest
        && l.at.elapsed() < FULL_APPLY_INTERVAL
    {
        let ns = d.cluster.namespace.as_str();
        let read = async {
            let argo = crd_present(&client, ns, &workflow_template_resource()).await?;
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            let token = secrets
                .get_opt(&d.objects.token_secret.name_any())
                .await
                .map_err(err("Secret token"))?;
            Ok::<_, RemoteError>((argo, token.as_ref().and_then(credentials_of)))
        };
        match read.await {
            Ok((argo, credentials)) if argo == l.argo && credentials.is_some() => {
                return Report {
                    reachable,
                    templates: templates_check(d, argo, credentials.as_ref()),
                    server,
                    credentials,
                    objects: l.objects.clone(),
                };
            }
            Ok(_) => {}
            Err(e) => {
                let failed = reach_error(&e.source);
                if failed.reason == "Unreachable" {
                    *cached = None;
                    *last = None;
                    return unreachable(failed, server);
                }
            }
        }
    }
    *last = None;
    match apply_remote(&client, d).await {
        Ok((objects, argo, credentials)) => {
            let templates = templates_check(d, argo, credentials.as_ref());
            if templates.ok {
                *last = Some(LastApply {
                    digest: d.digest.clone(),
                    argo,
                    at: std::time::Instant::now(),
                    objects: objects.clone(),
                });
            }
            Report {
                reachable,
                templates,
                server,
                credentials,
                objects,
            }
        }
        Err(e) => {
            let failed = reach_error(&e.source);
            // A connection that broke mid-way is unreachability; anything else is an apply error.
            if failed.reason == "Unreachable" {
                *cached = None;
                return unreachable(failed, server);
            }
            Report {
                reachable,
                templates: Finding::new(
                    false,
                    "ApplyFailed",
                    format!("{}: {}", e.what, failed.message),
                ),
                server,
                ..Report::default()
            }
        }
    }
}

pub(super) fn credentials_of(token: &Secret) -> Option<Credentials> {
    let data = token.data.as_ref()?;
    let token = String::from_utf8(data.get(TOKEN_KEY)?.0.clone()).ok()?;
    let ca = String::from_utf8(data.get(CA_KEY)?.0.clone()).ok()?;
    (!token.is_empty()).then_some(Credentials { token, ca })
}

pub(super) struct RemoteError {
    pub(super) what: String,
    pub(super) source: kube::Error,
}

pub(super) fn err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> RemoteError {
    let what = what.into();
    move |source| RemoteError { what, source }
}

pub(super) async fn ssa<K>(client: &Client, ns: &str, obj: &K) -> Result<K, RemoteError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(err(format!("{} {name}", K::kind(&()))))
}

/// Applies the desired objects, prunes the ones no longer desired, and reads the token back.
pub(super) async fn apply_remote(
    client: &Client,
    d: &Desired,
) -> Result<(Vec<String>, bool, Option<Credentials>), RemoteError> {
    let o = &d.objects;
    let ns = d.cluster.namespace.as_str();
    // The namespace: created when missing, never taken over when it exists.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_metadata_opt(ns)
        .await
        .map_err(err(format!("Namespace {ns}")))?
        .is_none()
    {
        match namespaces
            .create(&PostParams::default(), &o.namespace)
            .await
        {
            Ok(_) => info!(cluster = %d.cluster.name, namespace = ns, "created the job namespace"),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(err(format!("Namespace {ns}"))(e)),
        }
    }
    let mut objects = Vec::new();
    for sa in &o.service_accounts {
        ssa(client, ns, sa).await?;
        objects.push(format!("ServiceAccount/{}", sa.name_any()));
    }
    for r in &o.roles {
        ssa(client, ns, r).await?;
        objects.push(format!("Role/{}", r.name_any()));
    }
    for b in &o.role_bindings {
        ssa(client, ns, b).await?;
        objects.push(format!("RoleBinding/{}", b.name_any()));
    }
    let token = ssa(client, ns, &o.token_secret).await?;
    objects.push(format!("Secret/{}", o.token_secret.name_any()));
    for c in &d.copies {
        ssa(client, ns, c).await?;
        objects.push(format!("Secret/{}", c.name_any()));
    }
    let wt = workflow_template_resource();
    let argo = crd_present(client, ns, &wt).await?;
    if argo && let Ok(templates) = &o.templates {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &wt);
        for t in templates {
            let name = t.name_any();
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(t),
            )
            .await
            .map_err(err(format!("WorkflowTemplate {name}")))?;
            objects.push(format!("WorkflowTemplate/{name}"));
        }
    }
    prune(client, ns, &d.uid, &objects, argo).await?;
    let credentials = credentials_of(&token);
    objects.sort();
    Ok((objects, argo, credentials))
}

pub(super) async fn crd_present(
    client: &Client,
    ns: &str,
    r: &ApiResource,
) -> Result<bool, RemoteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, r);
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(err(format!("{} (is its CRD installed?)", r.plural))(e)),
    }
}

/// Deletes the objects of one kind that carry the owner's label and are not in `keep`.
pub(super) async fn prune_api<K>(
    api: Api<K>,
    uid: &str,
    kind: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, RemoteError>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let list = api
        .list_metadata(&ListParams::default().labels(&remote::owner_selector(uid)))
        .await
        .map_err(err(format!("{kind} list")))?;
    let mut deleted = Vec::new();
    for m in list.items {
        let id = format!("{kind}/{}", m.name_any());
        if keep.contains(&id) || m.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match api.delete(&m.name_any(), &DeleteParams::background()).await {
            Ok(_) => deleted.push(id),
            Err(kube::Error::Api(s)) if s.code == 404 => deleted.push(id),
            Err(e) => return Err(err(format!("deleting {id}"))(e)),
        }
    }
    Ok(deleted)
}

pub(super) async fn prune(
    client: &Client,
    ns: &str,
    uid: &str,
    keep: &[String],
    argo: bool,
) -> Result<Vec<String>, RemoteError> {
    let keep: BTreeSet<String> = keep.iter().cloned().collect();
    let c = || client.clone();
    let mut deleted = Vec::new();
    deleted.extend(
        prune_api(
            Api::<RoleBinding>::namespaced(c(), ns),
            uid,
            "RoleBinding",
            &keep,
        )
        .await?,
    );
    deleted.extend(prune_api(Api::<Role>::namespaced(c(), ns), uid, "Role", &keep).await?);
    deleted.extend(
        prune_api(
            Api::<ServiceAccount>::namespaced(c(), ns),
            uid,
            "ServiceAccount",
            &keep,
        )
        .await?,
    );
    deleted.extend(prune_api(Api::<Secret>::namespaced(c(), ns), uid, "Secret", &keep).await?);
    if argo {
        let api: Api<DynamicObject> = Api::namespaced_with(c(), ns, &workflow_template_resource());
        deleted.extend(prune_api(api, uid, "WorkflowTemplate", &keep).await?);
    }
    if !deleted.is_empty() {
        info!(namespace = ns, ?deleted, "pruned job cluster objects");
    }
    Ok(deleted)
}
