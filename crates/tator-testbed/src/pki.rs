//! Certificates for the local control plane.
//!
//! Every certificate is X.509 v3 with extensions: rustls (used by kube-rs) refuses v1
//! certificates, which plain `openssl x509 -req` produces.

use std::{net::IpAddr, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Error;

/// A PEM certificate and its PEM private key.
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The certificates one cluster needs.
pub struct ClusterPki {
    pub ca: CertPair,
    pub serving: CertPair,
    pub admin: CertPair,
    pub controller_manager: CertPair,
    pub scheduler: CertPair,
    /// Private key that signs ServiceAccount tokens.
    pub service_account_key_pem: String,
    /// Its public key, which verifies them.
    pub service_account_pub_pem: String,
}

fn pki_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> Error {
    move |source| Error::Pki { what, source }
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    common_name: &str,
    organization: Option<&str>,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<CertPair, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name, organization);
    params.subject_alt_names = sans;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![usage];
    params.is_ca = IsCa::ExplicitNoCa;
    let key = KeyPair::generate().map_err(pki_err("key"))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(pki_err("leaf certificate"))?;
    Ok(CertPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl ClusterPki {
    /// Generates a fresh CA and every certificate signed by it.
    pub fn generate() -> Result<Self, Error> {
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = dn("tator-testbed-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(pki_err("CA key"))?;
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(pki_err("CA certificate"))?;
        let ca = CertPair {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        };
        let issuer = Issuer::new(ca_params, ca_key);

        let mut serving_sans = vec![
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
            SanType::IpAddress(IpAddr::from([127, 96, 0, 1])),
        ];
        for name in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ] {
            serving_sans.push(SanType::DnsName(
                name.try_into().map_err(pki_err("DNS name"))?,
            ));
        }
        let serving = leaf(
            &issuer,
            "kube-apiserver",
            None,
            serving_sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let admin = leaf(
            &issuer,
            "testbed-admin",
            Some("system:masters"),
            vec![],
            client.clone(),
        )?;
        let controller_manager = leaf(
            &issuer,
            "system:kube-controller-manager",
            None,
            vec![],
            client.clone(),
        )?;
        let scheduler = leaf(&issuer, "system:kube-scheduler", None, vec![], client)?;
        let sa_key = KeyPair::generate().map_err(pki_err("service account key"))?;
        Ok(Self {
            ca,
            serving,
            admin,
            controller_manager,
            scheduler,
            service_account_key_pem: sa_key.serialize_pem(),
            service_account_pub_pem: sa_key.public_key_pem(),
        })
    }

    /// Writes the files the control-plane processes read into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), Error> {
        let files = [
            ("ca.crt", &self.ca.cert_pem),
            ("ca.key", &self.ca.key_pem),
            ("apiserver.crt", &self.serving.cert_pem),
            ("apiserver.key", &self.serving.key_pem),
            ("sa.key", &self.service_account_key_pem),
            ("sa.pub", &self.service_account_pub_pem),
        ];
        for (name, contents) in files {
            crate::write_private(&dir.join(name), contents)?;
        }
        Ok(())
    }
}
