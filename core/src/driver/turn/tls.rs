//! TLS to the TURN server (`turns:`, feature `tls`): the client configuration, built once
//! per allocation (and used again to reach an alternate server after a 300), and the
//! certificate check: certificates given as PEM are both pinned and trusted as roots.
//!
//! # Pinning
//!
//! A TURN server with a self-signed certificate is common, and the usual recipe for one
//! (`openssl req -x509 -newkey rsa:2048 -nodes …`, as coturn's documentation has it)
//! makes a certificate with `CA:TRUE`, which webpki refuses as a server's own
//! (`CaUsedAsEndEntity`). So a server certificate that is byte for byte one of the
//! certificates given is accepted as it is, whatever its extensions, names and dates say:
//! the user named that very certificate. The handshake signature is still verified
//! against it, so the server must hold its private key. Any other certificate goes
//! through the ordinary webpki verification, with the given certificates as the roots.

use std::pin::Pin;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tracing::debug;

use super::{CONNECT_TIMEOUT, Stream};
use crate::driver::{DriverError, io};

/// The certificates of a PEM text (`-----BEGIN CERTIFICATE-----` blocks; other blocks,
/// such as keys, are skipped). None at all is an error, as is a malformed block.
pub(super) fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, DriverError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DriverError::Certificates(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(DriverError::Certificates(
            "no certificate in it (expected PEM \"-----BEGIN CERTIFICATE-----\" blocks)".into(),
        ));
    }
    Ok(certs)
}

/// What connecting over TLS needs, built once.
#[derive(Debug, Clone)]
pub(super) struct TlsClient {
    config: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    /// Trusts `ca_pem`'s certificates (pinned, and as roots), or the system's roots.
    pub(super) fn new(ca_pem: Option<&[u8]>) -> Result<Self, DriverError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| DriverError::Certificates(e.to_string()))?;
        let config = match ca_pem {
            Some(pem) => {
                let verifier = PinningVerifier::new(certificates(pem)?, provider)?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            None => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The TLS handshake on `tcp`, checking the certificate against `name` (bounded by
    /// [`CONNECT_TIMEOUT`]).
    pub(super) async fn connect(
        &self,
        tcp: TcpStream,
        name: &str,
    ) -> Result<Pin<Box<dyn Stream>>, DriverError> {
        let tls_err = |what: String| DriverError::Io {
            context: "TLS".into(),
            source: std::io::Error::other(what),
        };
        let name =
            ServerName::try_from(name.to_owned()).map_err(|e| tls_err(format!("{name}: {e}")))?;
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| tls_err("handshake timed out".into()))?
            .map_err(io("TLS handshake"))?;
        Ok(Box::pin(stream))
    }
}

/// Accepts a server certificate equal to one of the pinned ones (signatures still
/// verified), else verifies it with webpki against the same certificates as roots.
#[derive(Debug)]
struct PinningVerifier {
    pinned: Vec<CertificateDer<'static>>,
    /// `None` when none of the certificates makes a trust anchor: then only pinning.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl PinningVerifier {
    fn new(
        pinned: Vec<CertificateDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, DriverError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &pinned {
            if let Err(e) = roots.add(cert.clone()) {
                // Still pinned: it need not be a usable trust anchor for that.
                debug!(error = %e, "a certificate given is not a trust anchor");
            }
        }
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| DriverError::Certificates(e.to_string()))?,
            )
        };
        Ok(Self {
            pinned,
            webpki,
            provider,
        })
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            debug!("the server's certificate is one of those given: pinned");
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificates_is_an_error() {
        for pem in [
            &b""[..],
            b"hello",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            let e = certificates(pem).unwrap_err().to_string();
            assert!(e.contains("no certificate"), "{e}");
            assert!(TlsClient::new(Some(pem)).is_err());
        }
    }
}
