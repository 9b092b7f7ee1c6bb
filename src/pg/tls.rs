//! TLS to the server with rustls (ring), as libpq's `sslmode` asks: `require` encrypts
//! without checking who answers (unless a root CA file exists: then, like libpq, the
//! chain is checked as `verify-ca` does), `verify-ca` checks the chain against the CA
//! file, `verify-full` the chain and the host name. Also SCRAM's channel binding
//! (`tls-server-end-point`): the hash of the server's certificate.
//!
//! One difference from libpq (OpenSSL): rustls refuses a self-signed CA certificate
//! that the server presents as its own (`CaUsedAsEndEntity`), which libpq accepts under
//! `verify-ca`/`verify-full`; the server needs a certificate signed by that CA.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::conninfo::{Params, SslMode};

/// How the server's certificate is checked.
#[derive(Debug)]
enum Check {
    /// `require` (no CA file), `prefer`, `allow`: encryption only.
    Nothing(WebPkiSupportedAlgorithms),
    /// `verify-ca`, or `require` with a CA file: the chain, not the name.
    Chain(Arc<WebPkiServerVerifier>),
}

impl ServerCertVerifier for Check {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self {
            Check::Nothing(_) => Ok(ServerCertVerified::assertion()),
            // webpki checks the chain before the name: a name error means the chain held.
            Check::Chain(v) => {
                match v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self {
            Check::Nothing(algs) => rustls::crypto::verify_tls12_signature(message, cert, dss, algs),
            Check::Chain(v) => v.verify_tls12_signature(message, cert, dss),
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self {
            Check::Nothing(algs) => rustls::crypto::verify_tls13_signature(message, cert, dss, algs),
            Check::Chain(v) => v.verify_tls13_signature(message, cert, dss),
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match self {
            Check::Nothing(algs) => algs.supported_schemes(),
            Check::Chain(v) => v.supported_verify_schemes(),
        }
    }
}

/// The CA file libpq would use: `sslrootcert`, else `~/.postgresql/root.crt`.
fn root_file(p: &Params) -> Option<PathBuf> {
    p.sslrootcert
        .clone()
        .or_else(|| p.home.as_ref().map(|h| h.join(".postgresql/root.crt")))
}

/// The client configuration for `p.sslmode` (called only when TLS is to be tried).
pub fn config(p: &Params) -> Result<Arc<ClientConfig>, String> {
    // ring, not aws-lc-rs: no C toolchain beyond what ring's own build needs, for both
    // musl targets. rustls deprecates it for lacking post-quantum key exchange, which
    // PostgreSQL's OpenSSL does not offer by default either.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let root = root_file(p);
    let root_exists = root.as_ref().is_some_and(|r| r.exists());
    let wants_chain = p.sslmode >= SslMode::VerifyCa || (p.sslmode == SslMode::Require && root_exists);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    let builder = if wants_chain {
        let Some(root) = root.filter(|r| r.exists()) else {
            return Err(format!(
                "sslmode={} needs the server's CA certificate: set sslrootcert (or create {})",
                p.sslmode.name(),
                p.home.as_ref().map_or("~/.postgresql/root.crt".into(), |h| h
                    .join(".postgresql/root.crt")
                    .display()
                    .to_string())
            ));
        };
        let mut store = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(&root)
            .map_err(|e| format!("cannot read the CA file {}: {e}", root.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("cannot read the CA file {}: {e}", root.display()))?;
            store.add(c).map_err(|e| {
                format!(
                    "the CA file {} holds a certificate rustls refuses: {e}",
                    root.display()
                )
            })?;
        }
        if store.is_empty() {
            return Err(format!("the CA file {} holds no certificate", root.display()));
        }
        let full = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .map_err(|e| format!("TLS set-up failed: {e}"))?;
        if p.sslmode == SslMode::VerifyFull {
            builder.with_webpki_verifier(full)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Check::Chain(full)))
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Check::Nothing(
                provider.signature_verification_algorithms,
            )))
    };
    let mut config = match client_identity(p)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("the client certificate cannot be used: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.enable_sni = p.sslsni;
    Ok(Arc::new(config))
}

/// The client certificate and key, when `sslcert` names them or libpq's defaults exist
/// (`~/.postgresql/postgresql.crt` and `.key`). A key others may read is refused, as
/// libpq refuses it.
fn client_identity(
    p: &Params,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    let home = |f: &str| p.home.as_ref().map(|h| h.join(".postgresql").join(f));
    let cert = match &p.sslcert {
        Some(c) => c.clone(),
        None => match home("postgresql.crt").filter(|c| c.exists()) {
            Some(c) => c,
            None => return Ok(None),
        },
    };
    let key = p
        .sslkey
        .clone()
        .or_else(|| home("postgresql.key"))
        .unwrap_or_else(|| cert.with_extension("key"));
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("cannot read the client certificate {}: {e}", cert.display()))?;
    key_is_private(&key)?;
    let key = PrivateKeyDer::from_pem_file(&key)
        .map_err(|e| format!("cannot read the client key {}: {e}", key.display()))?;
    Ok(Some((certs, key)))
}

fn key_is_private(key: &Path) -> Result<(), String> {
    let meta =
        std::fs::metadata(key).map_err(|e| format!("cannot read the client key {}: {e}", key.display()))?;
    let mode = meta.permissions().mode();
    let ok = if meta.uid() == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the client key {} has group or world access; permissions should be u=rw (0600) or less",
            key.display()
        ))
    }
}

/// A handshake's failure in words an operator can act on.
pub fn explain(e: &rustls::Error) -> String {
    // webpki's reason travels as an opaque `Other` error: told apart by its name.
    if matches!(e, rustls::Error::InvalidCertificate(CertificateError::Other(o)) if format!("{o:?}").contains("CaUsedAsEndEntity"))
    {
        return "the server presents a CA certificate as its own, which rustls refuses (libpq \
                accepts it): give the server a certificate signed by that CA"
            .into();
    }
    e.to_string()
}

/// The name the certificate is checked against (and sent as SNI): the host as given.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|_| format!("{host:?} is not a valid name for TLS"))
}

/// RFC 5929's `tls-server-end-point`: the certificate hashed with its signature's hash
/// (SHA-256 for MD5 and SHA-1), as the server computes it. None for an algorithm
/// PostgreSQL itself cannot bind (RSA-PSS, Ed25519): SCRAM then goes without binding.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    use ring::digest::{SHA256, SHA384, SHA512, digest};
    let (certificate, _) = der(cert, 0x30)?;
    let (_, rest) = der(certificate, 0x30)?; // tbsCertificate
    let (alg, _) = der(rest, 0x30)?; // signatureAlgorithm
    let (oid, _) = der(alg, 0x06)?;
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    let hash = match oid.split_last()? {
        (4 | 5 | 11 | 14, head) if head == RSA => &SHA256,
        (12, head) if head == RSA => &SHA384,
        (13, head) if head == RSA => &SHA512,
        (2 | 1, head) if head == ECDSA => &SHA256,
        (3, head) if head == ECDSA => &SHA384,
        (4, head) if head == ECDSA => &SHA512,
        _ => return None,
    };
    Some(digest(hash, cert).as_ref().to_vec())
}

/// One DER element of `tag` at the start of `b`: (its content, what follows).
fn der(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = b.split_first()?;
    if t != tag {
        return None;
    }
    let (&l, rest) = rest.split_first()?;
    let (len, rest) = if l < 0x80 {
        (usize::from(l), rest)
    } else {
        let n = usize::from(l & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (&rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_short_and_long() {
        assert_eq!(
            der(&[0x30, 0x02, 1, 2, 9], 0x30),
            Some((&[1u8, 2][..], &[9u8][..]))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(der(&long, 0x04).map(|(c, r)| (c.len(), r.len())), Some((0x80, 0)));
        assert_eq!(der(&[0x30, 0x05, 1], 0x30), None);
        assert_eq!(der(&[0x31, 0x00], 0x30), None);
    }

    #[test]
    fn the_signature_algorithm_picks_the_hash() {
        // A skeleton certificate: SEQUENCE { SEQUENCE {} , SEQUENCE { OID } , BIT STRING }.
        let cert = |oid: &[u8]| {
            let mut alg = vec![0x06, u8::try_from(oid.len()).unwrap()];
            alg.extend(oid);
            let mut body = vec![0x30, 0x00, 0x30, u8::try_from(alg.len()).unwrap()];
            body.extend(alg);
            body.extend([0x03, 0x01, 0x00]);
            let mut c = vec![0x30, u8::try_from(body.len()).unwrap()];
            c.extend(body);
            c
        };
        let sha256_rsa = cert(&[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B]);
        assert_eq!(end_point_hash(&sha256_rsa).map(|h| h.len()), Some(32));
        let sha384_ecdsa = cert(&[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03]);
        assert_eq!(end_point_hash(&sha384_ecdsa).map(|h| h.len()), Some(48));
        let ed25519 = cert(&[0x2B, 0x65, 0x70]);
        assert_eq!(end_point_hash(&ed25519), None);
    }
}
