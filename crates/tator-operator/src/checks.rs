//! Readiness checks of managed (external) dependencies, run from the operator process before it
//! runs migrations or rolls the API: PostgreSQL (connect, authenticate, `SELECT 1`, required
//! extensions available), Redis (AUTH + PING), Elasticsearch (cluster health yellow or green) and
//! S3 buckets (HeadBucket).
//!
//! Every check is bounded in time. Passwords live in [`Password`], whose `Debug` is redacted, and
//! are scrubbed from every message a check returns.

use rustls::pki_types::pem::PemObject;
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// A password: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(value: String) -> Self {
        Self(value)
    }
    fn expose(&self) -> &str {
        &self.0
    }
    /// Removes the password from a message, should a library ever echo it.
    fn scrub(&self, message: String) -> String {
        if self.0.is_empty() {
            message
        } else {
            message.replace(&self.0, "***")
        }
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Why a dependency is not ready: a stable reason and a message without secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub reason: &'static str,
    pub message: String,
}

impl CheckError {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Time limit of each check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads one key of a Secret (for a check only; the value is never logged or stored).
pub async fn secret_value(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
) -> Result<String, CheckError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| {
            CheckError::new(
                "SecretUnreadable",
                format!("could not read Secret {name}: {e}"),
            )
        })?
        .ok_or_else(|| {
            CheckError::new("SecretNotFound", format!("Secret {name} does not exist"))
        })?;
    let bytes = secret.data.and_then(|mut d| d.remove(key)).ok_or_else(|| {
        CheckError::new("SecretNotFound", format!("Secret {name} has no key {key}"))
    })?;
    String::from_utf8(bytes.0).map_err(|_| {
        CheckError::new(
            "SecretNotFound",
            format!("key {key} of Secret {name} is not text"),
        )
    })
}

pub(crate) fn tls_config(
    ca_pem: Option<&str>,
    verify: bool,
) -> Result<rustls::ClientConfig, CheckError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CheckError::new("TLSError", e.to_string()))?;
    if !verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| {
                    CheckError::new("TLSError", format!("invalid CA certificate: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    CheckError::new("TLSError", format!("invalid CA certificate: {e}"))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// libpq's `sslmode=require` encrypts without verifying the server; this verifier does the same.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A managed PostgreSQL to check.
#[derive(Clone, Debug)]
pub struct PostgresTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Password,
    pub database: String,
    pub ssl_mode: tator_api::SslMode,
    pub ca_pem: Option<String>,
    pub extensions: Vec<String>,
}

fn classify_pg(e: &tokio_postgres::Error, password: &Password) -> CheckError {
    let text = password.scrub(e.to_string());
    let source = std::error::Error::source(e)
        .map(|s| password.scrub(s.to_string()))
        .unwrap_or_default();
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code == "28P01" || code == "28000" {
            return CheckError::new(
                "AuthenticationFailed",
                password.scrub(db.message().to_string()),
            );
        }
        return CheckError::new(
            "QueryFailed",
            password.scrub(format!("{} ({code})", db.message())),
        );
    }
    let full = format!("{text}: {source}");
    let lower = full.to_lowercase();
    if lower.contains("tls") || lower.contains("ssl") || lower.contains("certificate") {
        CheckError::new("TLSError", full)
    } else {
        CheckError::new("Unreachable", full)
    }
}

/// Connects, authenticates, runs `SELECT 1` and checks the required extensions are installed or
/// available to install. Returns a short description on success.
pub async fn check_postgres(target: &PostgresTarget) -> Result<String, CheckError> {
    use tator_api::SslMode;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&target.host)
        .port(target.port)
        .user(&target.user)
        .password(target.password.expose())
        .dbname(&target.database)
        .connect_timeout(CHECK_TIMEOUT)
        .application_name("tator-operator-check")
        .ssl_mode(match target.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    let verify = matches!(target.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
        target.ca_pem.as_deref(),
        verify,
    )?);
    let work = async {
        let (client, connection) = cfg
            .connect(tls)
            .await
            .map_err(|e| classify_pg(&e, &target.password))?;
        let conn = tokio::spawn(connection);
        let result = async {
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| classify_pg(&e, &target.password))?;
            let rows = client
                .query(
                    "SELECT name FROM pg_available_extensions WHERE name = ANY($1)",
                    &[&target.extensions],
                )
                .await
                .map_err(|e| classify_pg(&e, &target.password))?;
            let available: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
            let missing: Vec<&String> = target
                .extensions
                .iter()
                .filter(|x| !available.contains(x))
                .collect();
            if missing.is_empty() {
                Ok(format!(
                    "connected to {}:{} and found every required extension",
                    target.host, target.port
                ))
            } else {
                let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
                Err(CheckError::new(
                    "MissingExtension",
                    format!(
                        "the server does not offer the extension(s) {} that Tator needs",
                        names.join(", ")
                    ),
                ))
            }
        }
        .await;
        drop(client);
        conn.abort();
        result
    };
    tokio::time::timeout(CHECK_TIMEOUT * 2, work)
        .await
        .unwrap_or_else(|_| {
            Err(CheckError::new(
                "Unreachable",
                format!("no answer from {}:{} in time", target.host, target.port),
            ))
        })
}

/// A managed Redis to check.
#[derive(Clone, Debug)]
pub struct RedisTarget {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub password: Option<Password>,
}

/// Longest answer line read from a Redis: the replies used here are short status or integer
/// lines, so a server that sends more is not a Redis worth waiting for.
const RESP_LINE_MAX: u64 = 4096;

async fn resp_line<S: AsyncRead + Unpin>(reader: &mut BufReader<S>) -> Result<String, CheckError> {
    let mut line = String::new();
    (&mut *reader)
        .take(RESP_LINE_MAX)
        .read_line(&mut line)
        .await
        .map_err(|e| CheckError::new("Unreachable", format!("connection lost: {e}")))?;
    if line.is_empty() {
        return Err(CheckError::new(
            "Unreachable",
            "the server closed the connection",
        ));
    }
    if !line.ends_with('\n') {
        return Err(CheckError::new(
            "Unhealthy",
            format!("an answer longer than {RESP_LINE_MAX} bytes"),
        ));
    }
    Ok(line.trim_end().to_string())
}

fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).into_bytes());
        out.extend(a.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

/// A byte stream to a Redis, plain or TLS.
pub trait RedisStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send> RedisStream for S {}

/// A connection to a Redis, authenticated when a password is configured. Not bounded in time:
/// callers put a limit around their whole exchange.
pub struct RedisConnection {
    reader: BufReader<Box<dyn RedisStream>>,
}

impl RedisConnection {
    /// Connects (TLS when asked, verified against the public roots) and sends AUTH.
    pub async fn open(target: &RedisTarget) -> Result<Self, CheckError> {
        let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| {
                CheckError::new(
                    "Unreachable",
                    format!("could not connect to {}:{}: {e}", target.host, target.port),
                )
            })?;
        let stream: Box<dyn RedisStream> = if target.tls {
            let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_config(None, true)?));
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| CheckError::new("TLSError", e.to_string()))?;
            let handshake = tokio::time::timeout(CHECK_TIMEOUT / 2, connector.connect(name, tcp));
            Box::new(
                handshake
                    .await
                    .map_err(|_| {
                        CheckError::new(
                            "TLSError",
                            format!(
                                "{}:{} did not complete a TLS handshake (does it offer TLS?)",
                                target.host, target.port
                            ),
                        )
                    })?
                    .map_err(|e| {
                        CheckError::new(
                            "TLSError",
                            format!(
                                "TLS handshake with {}:{} failed: {e}",
                                target.host, target.port
                            ),
                        )
                    })?,
            )
        } else {
            Box::new(tcp)
        };
        let mut conn = Self {
            reader: BufReader::new(stream),
        };
        if let Some(pw) = &target.password {
            let answer = conn.command(&["AUTH", pw.expose()]).await?;
            if answer != "+OK" {
                return Err(CheckError::new(
                    "AuthenticationFailed",
                    pw.scrub(format!("AUTH refused: {answer}")),
                ));
            }
        }
        Ok(conn)
    }

    /// Sends one command and reads its one-line answer.
    pub async fn command(&mut self, args: &[&str]) -> Result<String, CheckError> {
        self.reader
            .get_mut()
            .write_all(&resp_command(args))
            .await
            .map_err(|e| CheckError::new("Unreachable", format!("connection lost: {e}")))?;
        let answer = resp_line(&mut self.reader).await?;
        if answer.starts_with("-NOAUTH") {
            return Err(CheckError::new(
                "AuthenticationFailed",
                "the server requires a password and none is configured",
            ));
        }
        Ok(answer)
    }

    /// Sends a command whose answer is an integer (`LLEN`, `ZCARD`).
    pub async fn integer(&mut self, args: &[&str]) -> Result<u64, CheckError> {
        let answer = self.command(args).await?;
        answer
            .strip_prefix(':')
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                CheckError::new(
                    "Unhealthy",
                    format!(
                        "unexpected answer to {}",
                        args.first().copied().unwrap_or("")
                    ),
                )
            })
    }
}

/// AUTH (when a password is configured) and PING.
pub async fn check_redis(target: &RedisTarget) -> Result<String, CheckError> {
    let work = async {
        let mut conn = RedisConnection::open(target).await?;
        let answer = conn.command(&["PING"]).await?;
        if answer == "+PONG" {
            Ok(())
        } else {
            Err(CheckError::new(
                "Unhealthy",
                format!("unexpected answer to PING: {answer}"),
            ))
        }
    };
    tokio::time::timeout(CHECK_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(CheckError::new(
                "Unreachable",
                format!("no answer from {}:{} in time", target.host, target.port),
            ))
        })?;
    Ok(format!("{}:{} answered PING", target.host, target.port))
}

/// A managed Elasticsearch to check.
#[derive(Clone, Debug)]
pub struct ElasticsearchTarget {
    pub url: String,
    pub credentials: Option<(String, Password)>,
    pub ca_pem: Option<String>,
}

/// GET /_cluster/health: green or yellow is ready.
pub async fn check_elasticsearch(target: &ElasticsearchTarget) -> Result<String, CheckError> {
    // The operator's own rustls configuration (ring): the spec's CA, or the public roots.
    let tls = tls_config(target.ca_pem.as_deref(), true)?;
    let builder = reqwest::Client::builder()
        .timeout(CHECK_TIMEOUT)
        .no_proxy()
        // Basic auth must not follow a redirect to another place.
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls);
    let client = builder
        .build()
        .map_err(|e| CheckError::new("TLSError", e.to_string()))?;
    let mut req = client.get(format!(
        "{}/_cluster/health",
        target.url.trim_end_matches('/')
    ));
    if let Some((user, pw)) = &target.credentials {
        req = req.basic_auth(user, Some(pw.expose()));
    }
    let scrub = |m: String| match &target.credentials {
        Some((_, pw)) => pw.scrub(m),
        None => m,
    };
    let resp = req.send().await.map_err(|e| {
        let text = scrub(format!(
            "{e}: {}",
            std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_default()
        ));
        if text.to_lowercase().contains("certificate") || text.to_lowercase().contains("tls") {
            CheckError::new("TLSError", text)
        } else {
            CheckError::new("Unreachable", text)
        }
    })?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(CheckError::new(
            "AuthenticationFailed",
            format!("the cluster answered {status}"),
        ));
    }
    if !status.is_success() {
        return Err(CheckError::new(
            "Unhealthy",
            format!("the cluster answered {status}"),
        ));
    }
    let body = crate::bounded::body(resp, crate::bounded::BODY_MAX)
        .await
        .map_err(|e| CheckError::new("Unhealthy", format!("unreadable health answer: {e}")))?;
    let body: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| CheckError::new("Unhealthy", format!("unreadable health answer: {e}")))?;
    match body["status"].as_str() {
        Some(s @ ("green" | "yellow")) => Ok(format!("cluster health is {s}")),
        Some(s) => Err(CheckError::new(
            "Unhealthy",
            format!("cluster health is {s}"),
        )),
        None => Err(CheckError::new(
            "Unhealthy",
            "the health answer has no status",
        )),
    }
}

/// A bucket on an S3 or S3-compatible service to check.
#[derive(Clone, Debug)]
pub struct S3Target {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: Password,
}

/// The S3 error code in an error answer's XML body, if any.
fn s3_error_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let end = body[start..].find("</Code>")? + start;
    Some(body[start..end].to_string())
}

/// HeadBucket with the given credentials (path-style, SigV4 in the query string). A 403 is told
/// apart with a ListObjectsV2 of zero keys, whose error body names the cause.
pub async fn check_s3(target: &S3Target) -> Result<String, CheckError> {
    use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
    let where_ = format!("bucket {} at {}", target.bucket, target.endpoint);
    let endpoint: url::Url = target
        .endpoint
        .parse()
        .map_err(|e| CheckError::new("InvalidEndpoint", format!("{}: {e}", target.endpoint)))?;
    let bucket = Bucket::new(
        endpoint,
        UrlStyle::Path,
        target.bucket.clone(),
        target.region.clone(),
    )
    .map_err(|e| CheckError::new("InvalidEndpoint", format!("{}: {e}", target.endpoint)))?;
    let creds = Credentials::new(target.access_key.clone(), target.secret_key.expose());
    let tls = tls_config(None, true)?;
    let client = reqwest::Client::builder()
        .timeout(CHECK_TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| CheckError::new("TLSError", e.to_string()))?;
    let scrub = |m: String| target.secret_key.scrub(m);
    let head = bucket.head_bucket(Some(&creds)).sign(CHECK_TIMEOUT * 12);
    let resp = client.head(head).send().await.map_err(|e| {
        CheckError::new(
            "Unreachable",
            scrub(format!(
                "{where_}: {}",
                std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.to_string())
            )),
        )
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(format!("{where_} answered HeadBucket"));
    }
    if status == reqwest::StatusCode::NOT_FOUND {
        return Err(CheckError::new(
            "BucketNotFound",
            format!("{where_} does not exist"),
        ));
    }
    if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
        // HEAD answers carry no body: ask again in a way whose error says why.
        let mut list = bucket.list_objects_v2(Some(&creds));
        list.with_max_keys(0);
        let url = list.sign(CHECK_TIMEOUT * 12);
        let code = match client.get(url).send().await {
            Ok(r) => crate::bounded::body(r, crate::bounded::BODY_MAX)
                .await
                .ok()
                .and_then(|b| s3_error_code(&String::from_utf8_lossy(&b))),
            Err(_) => None,
        };
        return Err(match code.as_deref() {
            Some(
                c @ ("InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "InvalidToken"
                | "ExpiredToken"
                | "AuthorizationHeaderMalformed"),
            ) => CheckError::new(
                "InvalidCredentials",
                format!("{where_} refused the credentials ({c})"),
            ),
            Some(c) => CheckError::new(
                "AccessDenied",
                format!("{where_} denied access to the credentials ({c})"),
            ),
            None => CheckError::new("AccessDenied", format!("{where_} answered {status}")),
        });
    }
    Err(CheckError::new(
        "Unreachable",
        format!("{where_} answered {status}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let p = Password::new("s3cret".into());
        assert_eq!(format!("{p:?}"), "Password(***)");
        assert_eq!(p.scrub("bad s3cret here".into()), "bad *** here");
    }

    #[test]
    fn s3_error_codes_are_read_from_error_bodies() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>x</Message></Error>";
        assert_eq!(
            s3_error_code(body).as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(s3_error_code("<html>"), None);
    }

    #[test]
    fn resp_commands_are_framed() {
        assert_eq!(resp_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            resp_command(&["AUTH", "pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n"
        );
    }
}
