//! A client of its own for each job cluster, from its kubeconfig Secret (re-read, with consent
//! checked, at every check); kubeconfigs that run commands or read local files are refused.

use super::*;

/// A client for one kubeconfig (rebuilt when the kubeconfig changes).
pub(super) struct Session {
    pub(super) kubeconfig_hash: String,
    pub(super) client: Client,
    pub(super) server: String,
}

/// Why a kubeconfig cannot be used.
pub(super) fn refuse(kc: &Kubeconfig) -> Option<String> {
    for a in &kc.auth_infos {
        let Some(info) = &a.auth_info else { continue };
        if info.exec.is_some() {
            return Some(format!(
                "user {:?} uses an exec plugin, which the operator does not run",
                a.name
            ));
        }
        if info.auth_provider.is_some() {
            return Some(format!("user {:?} uses an auth provider", a.name));
        }
        if info.token_file.is_some()
            || info.client_certificate.is_some()
            || info.client_key.is_some()
        {
            return Some(format!(
                "user {:?} refers to files: put the credentials inline (token, client-certificate-data, client-key-data)",
                a.name
            ));
        }
    }
    for c in &kc.clusters {
        let Some(cluster) = c.cluster.as_ref() else {
            continue;
        };
        // Credentials and copied Secrets go to this server: only over verified TLS.
        if !cluster
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("https://"))
        {
            return Some(format!(
                "cluster {:?} is not an https:// server: its credentials would cross the network in clear text",
                c.name
            ));
        }
        if cluster.insecure_skip_tls_verify == Some(true) {
            return Some(format!(
                "cluster {:?} skips TLS verification: give its CA as certificate-authority-data",
                c.name
            ));
        }
        if cluster.certificate_authority.is_some() {
            return Some(format!(
                "cluster {:?} refers to a CA file: use certificate-authority-data",
                c.name
            ));
        }
    }
    None
}

/// Reads the kubeconfig Secret and returns a client for it (the cached one if unchanged).
pub(super) async fn session<'a>(
    main: &Client,
    namespace: &str,
    secret_ref: &KubeconfigSecret,
    who: Option<(&str, &str)>,
    cached: &'a mut Option<Session>,
) -> Result<&'a Session, Finding> {
    let secrets: Api<Secret> = Api::namespaced(main.clone(), namespace);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| {
            Finding::new(
                false,
                "SecretUnreadable",
                format!("Secret {}: {e}", secret_ref.name),
            )
        })?
        .ok_or_else(|| {
            Finding::new(
                false,
                "SecretNotFound",
                format!("kubeconfig Secret {} does not exist", secret_ref.name),
            )
        })?;
    if let Some((name, uid)) = who
        && !crate::consent::consents(&secret.metadata, name, uid)
    {
        *cached = None;
        return Err(Finding::new(
            false,
            "SecretNotAllowed",
            format!(
                "kubeconfig Secret {} does not list this TatorDeployment in its annotation {}",
                secret_ref.name,
                crate::consent::ANNOTATION
            ),
        ));
    }
    let bytes = secret
        .data
        .and_then(|mut m| m.remove(&secret_ref.key))
        .ok_or_else(|| {
            Finding::new(
                false,
                "SecretNotFound",
                format!("Secret {} has no key {}", secret_ref.name, secret_ref.key),
            )
        })?;
    let hash = short_hash(&bytes.0, 32);
    if cached.as_ref().is_some_and(|s| s.kubeconfig_hash == hash) {
        return cached.as_ref().ok_or_else(Finding::pending);
    }
    let text = String::from_utf8(bytes.0)
        .map_err(|_| Finding::new(false, "InvalidKubeconfig", "the kubeconfig is not text"))?;
    // Parse errors can quote the input: report only where it failed.
    let kc = Kubeconfig::from_yaml(&text).map_err(|_| {
        Finding::new(
            false,
            "InvalidKubeconfig",
            format!(
                "key {} of Secret {} is not a kubeconfig",
                secret_ref.key, secret_ref.name
            ),
        )
    })?;
    if let Some(why) = refuse(&kc) {
        return Err(Finding::new(false, "UnsupportedKubeconfig", why));
    }
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Finding::new(false, "InvalidKubeconfig", scrub_kube(&e.to_string())))?;
    config.connect_timeout = Some(Duration::from_secs(5));
    config.read_timeout = Some(Duration::from_secs(15));
    config.write_timeout = Some(Duration::from_secs(15));
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)
        .map_err(|e| Finding::new(false, "InvalidKubeconfig", scrub_kube(&e.to_string())))?;
    if cached.is_some() {
        info!(secret = %secret_ref.name, "kubeconfig changed: new client");
    }
    *cached = Some(Session {
        kubeconfig_hash: hash,
        client,
        server,
    });
    cached.as_ref().ok_or_else(Finding::pending)
}

/// Error texts keep only their first line, without anything that looks like a credential.
pub(super) fn scrub_kube(m: &str) -> String {
    m.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

pub(super) fn reach_error(e: &kube::Error) -> Finding {
    match e {
        kube::Error::Api(s) if s.code == 401 => Finding::new(
            false,
            "Unauthorized",
            "the API server refused the kubeconfig's credentials (401)",
        ),
        kube::Error::Api(s) if s.code == 403 => Finding::new(
            false,
            "Forbidden",
            format!("the kubeconfig's user may not do this: {}", s.message),
        ),
        other => Finding::new(
            false,
            "Unreachable",
            scrub_kube(
                &std::error::Error::source(other)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| other.to_string()),
            ),
        ),
    }
}
