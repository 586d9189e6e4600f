//! The per-bottle CA and the leaf certificates the proxy mints with it.
//!
//! The host calls [`BottleCa::generate`] once per bottle: the certificate goes
//! into the sandbox's trust variables, the key only into the proxy's config.
//! The CA carries X.509 name constraints limited to the bottle's hosts, so even
//! a stolen CA key cannot vouch for any other name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use bot_bottle_plugin_api::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints,
    SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// How long a bottle CA is valid. Short enough that a leaked certificate
/// soon means nothing, long enough for a week-long agent session.
pub const CA_VALIDITY: Duration = Duration::days(7);
/// Backdating of `notBefore` against guest clock skew.
pub const BACKDATE: Duration = Duration::minutes(5);
/// Leaf certificates kept per proxy; past this the cache starts over.
pub const LEAF_CACHE: usize = 512;
/// How long a leaf certificate is valid (at most as long as the CA).
pub const LEAF_VALIDITY: Duration = Duration::days(2);
/// A cached leaf is minted again once it is this old, well before it
/// expires: a proxy that runs for days keeps presenting valid leaves.
pub const LEAF_REFRESH: Duration = Duration::days(1);

/// Why a CA or leaf certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused the parameters or the key.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CA certificate PEM in the config does not parse.
    #[error("CA certificate is not a PEM certificate")]
    BadCert,
    /// The CA key PEM in the config does not parse (its value is not shown).
    #[error("CA key is not a PEM PKCS#8 key")]
    BadKey,
    /// A host pattern cannot be put in a certificate.
    #[error("host {0:?} cannot be named in a certificate")]
    BadHost(String),
    /// rustls refused the minted certificate.
    #[error("TLS setup for a leaf certificate failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// A freshly generated bottle CA.
#[derive(Debug, Clone)]
pub struct BottleCa {
    /// CA certificate, PEM. Public: goes into the sandbox's trust store.
    pub cert_pem: String,
    /// CA key, PEM PKCS#8. Goes to the proxy only.
    pub key_pem: Secret,
}

fn subtree_base(host: &str) -> Result<GeneralSubtree, CaError> {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    if let Ok(ip) = h.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        return Ok(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(
            ip, prefix,
        )));
    }
    let base = h.strip_prefix("*.").unwrap_or(&h);
    if base.is_empty() || base.contains('*') {
        return Err(CaError::BadHost(host.to_owned()));
    }
    Ok(GeneralSubtree::DnsName(base.to_owned()))
}

impl BottleCa {
    /// Generates a CA for one bottle, valid for [`CA_VALIDITY`] (backdated by
    /// [`BACKDATE`]), constrained to `hosts` (`*.x` permits the subtree `x`).
    /// IP addresses are excluded unless one is listed.
    pub fn generate(bottle_id: &str, hosts: &[String]) -> Result<BottleCa, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("bot-bottle egress CA {bottle_id}"),
        );
        dn.push(DnType::OrganizationName, "bot-bottle");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + CA_VALIDITY;
        let mut permitted = Vec::new();
        for h in hosts {
            let s = subtree_base(h)?;
            if !permitted.contains(&s) {
                permitted.push(s);
            }
        }
        let mut excluded = Vec::new();
        if !permitted
            .iter()
            .any(|s| matches!(s, GeneralSubtree::IpAddress(_)))
        {
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_v4_prefix(
                [0; 4], 0,
            )));
            excluded.push(GeneralSubtree::IpAddress(CidrSubnet::from_v6_prefix(
                [0; 16], 0,
            )));
        }
        if permitted.is_empty() {
            // No host at all: permit nothing (an impossible name).
            permitted.push(GeneralSubtree::DnsName("invalid".into()));
        }
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: excluded,
        });
        let cert = params.self_signed(&key)?;
        Ok(BottleCa {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    }
}

/// Mints and caches one TLS server config per allow-listed host.
pub(crate) struct LeafMinter {
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    leaf_key: KeyPair,
    /// Host -> (when minted, its TLS config).
    cache: Mutex<HashMap<String, (OffsetDateTime, Arc<rustls::ServerConfig>)>>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl std::fmt::Debug for LeafMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafMinter").finish_non_exhaustive()
    }
}

impl LeafMinter {
    pub(crate) fn new(cert_pem: &str, key_pem: &Secret) -> Result<Self, CaError> {
        let ca_key = KeyPair::from_pem(key_pem.expose()).map_err(|_| CaError::BadKey)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(|_| CaError::BadCert)?;
        let ca_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .and_then(|r| r.ok())
            .ok_or(CaError::BadCert)?;
        // Re-signing the parsed params gives an issuer with the same subject
        // and key identifier; leaves chain to the original certificate.
        let ca_cert = params.self_signed(&ca_key)?;
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        Ok(Self {
            ca_cert,
            ca_key,
            ca_der,
            leaf_key: KeyPair::generate()?,
            cache: Mutex::new(HashMap::new()),
            sessions: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer,
        })
    }

    /// The TLS config presenting a leaf for `host`. Call only for hosts the
    /// allow-list admits: minting is the caller's gate.
    pub(crate) fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        self.server_config_at(host, OffsetDateTime::now_utc())
    }

    fn server_config_at(
        &self,
        host: &str,
        now: OffsetDateTime,
    ) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some((minted, c)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
        {
            if now - *minted < LEAF_REFRESH {
                return Ok(c.clone());
            }
        }
        let cfg = Arc::new(self.mint(&host, now)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= LEAF_CACHE {
            cache.clear();
        }
        cache.insert(host, (now, cfg.clone()));
        Ok(cfg)
    }

    fn mint(&self, host: &str, now: OffsetDateTime) -> Result<rustls::ServerConfig, CaError> {
        let mut params = CertificateParams::default();
        let san = match host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                host.to_owned()
                    .try_into()
                    .map_err(|_| CaError::BadHost(host.to_owned()))?,
            ),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = now - BACKDATE;
        params.not_after = (now + LEAF_VALIDITY).min(self.ca_cert.params().not_after);
        let leaf = params.signed_by(&self.leaf_key, &self.ca_cert, &self.ca_key)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), self.ca_der.clone()], key)?;
        // Our suite order, not the client's: see crate::tls.
        cfg.ignore_client_order = true;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        cfg.session_storage = self.sessions.clone();
        cfg.ticketer = self.ticketer.clone();
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_constrained_and_key_is_secret() {
        let ca =
            BottleCa::generate("bb-x", &["api.openai.com".into(), "*.example.com".into()]).unwrap();
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(format!("{:?}", ca.key_pem), "[redacted]");
        let p = CertificateParams::from_ca_cert_pem(&ca.cert_pem).unwrap();
        let nc = p.name_constraints.unwrap();
        assert!(nc
            .permitted_subtrees
            .contains(&GeneralSubtree::DnsName("api.openai.com".into())));
        assert!(nc
            .permitted_subtrees
            .contains(&GeneralSubtree::DnsName("example.com".into())));
        assert!(p.not_before < OffsetDateTime::now_utc() - Duration::minutes(4));
    }

    #[test]
    fn minter_caches_per_host() {
        let ca = BottleCa::generate("bb-x", &["a.test".into()]).unwrap();
        let m = LeafMinter::new(&ca.cert_pem, &ca.key_pem).unwrap();
        let a = m.server_config("a.test").unwrap();
        let b = m.server_config("A.TEST").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
    }

    #[test]
    fn bad_key_error_shows_no_value() {
        let ca = BottleCa::generate("bb-x", &["a.test".into()]).unwrap();
        let e = LeafMinter::new(&ca.cert_pem, &Secret::new("canary-not-a-key")).unwrap_err();
        assert!(!format!("{e} {e:?}").contains("canary"));
    }

    #[test]
    fn a_cached_leaf_is_minted_again_before_it_expires() {
        let ca = BottleCa::generate("bb-x", &["api.test".into()]).unwrap();
        let m = LeafMinter::new(&ca.cert_pem, &ca.key_pem).unwrap();
        let t0 = OffsetDateTime::now_utc();
        let first = m.server_config_at("api.test", t0).unwrap();
        let later = m
            .server_config_at("API.test", t0 + LEAF_REFRESH - Duration::hours(1))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &later), "cached within the refresh age");
        let renewed = m
            .server_config_at("api.test", t0 + LEAF_REFRESH + Duration::hours(1))
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &renewed), "minted again past it");
        assert!(LEAF_REFRESH < LEAF_VALIDITY - BACKDATE);
    }

    /// What a client trusting only the bottle CA says of `leaf` for `name`.
    fn client_accepts(
        ca_pem: &str,
        leaf: &rustls::pki_types::CertificateDer<'static>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .map(|_| ())
    }

    #[test]
    fn clients_refuse_a_leaf_for_a_name_outside_the_constraints() {
        // Should the CA key leak out of the proxy, it still vouches only
        // for the bottle's hosts: a leaf it signs for another name is
        // refused by an ordinary client (webpki) for the name constraints.
        let ca = BottleCa::generate("bb-x", &["api.test".into(), "*.wild.test".into()]).unwrap();
        let m = LeafMinter::new(&ca.cert_pem, &ca.key_pem).unwrap();
        let sign = |host: &str| {
            let mut p = CertificateParams::new(vec![host.to_owned()]).unwrap();
            p.not_before = OffsetDateTime::now_utc() - BACKDATE;
            p.not_after = OffsetDateTime::now_utc() + LEAF_VALIDITY;
            p.signed_by(&m.leaf_key, &m.ca_cert, &m.ca_key)
                .unwrap()
                .der()
                .clone()
        };
        client_accepts(&ca.cert_pem, &sign("api.test"), "api.test").unwrap();
        client_accepts(&ca.cert_pem, &sign("a.wild.test"), "a.wild.test").unwrap();
        for outside in ["evil.test", "api.test.evil.test", "wild.test.evil"] {
            let e = client_accepts(&ca.cert_pem, &sign(outside), outside).unwrap_err();
            assert!(
                format!("{e:?}").contains("NameConstraint"),
                "{outside}: {e:?}"
            );
        }
    }

    #[test]
    fn the_leaf_cache_stays_bounded() {
        let ca = BottleCa::generate("bb-x", &["*.many.test".into()]).unwrap();
        let m = LeafMinter::new(&ca.cert_pem, &ca.key_pem).unwrap();
        for i in 0..LEAF_CACHE + 5 {
            m.server_config(&format!("h{i}.many.test")).unwrap();
            assert!(m.cache.lock().unwrap().len() <= LEAF_CACHE);
        }
    }
}
