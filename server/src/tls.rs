//! HTTPS with rustls, and optional client certificates for agents (mTLS).
//!
//! With `tls.client_ca_file`, the server asks every client for a certificate and verifies any it
//! gets against those CAs, but lets clients without one in (browsers have none). The agent API
//! then demands one: a node's agent must present a certificate that chains to the CA and names
//! the node id as a DNS subject alternative name, on top of its node credential.

use std::sync::Arc;

use anyhow::Context;
use axum::middleware::AddExtension;
use axum_server::accept::Accept;
use axum_server::tls_rustls::RustlsAcceptor;
use futures::future::BoxFuture;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tower::Layer;

use crate::config::TlsSettings;

/// The leaf certificate the client presented, already verified against `tls.client_ca_file`
/// by the handshake; `None` when it presented none. An extension of every request on a TLS
/// connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Option<CertificateDer<'static>>);

/// The rustls configuration: the certificate chain and key, TLS 1.2 and 1.3, HTTP/1.1 and
/// HTTP/2 by ALPN, and client certificates verified against `client_ca_file` when set. Errors
/// name the file at fault.
pub fn server_config(tls: &TlsSettings) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("tls.cert_file {}", tls.cert_file.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "tls.cert_file {} holds no certificate",
        tls.cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .with_context(|| format!("tls.key_file {}", tls.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("tls.client_ca_file {}", path.display()))?
            {
                roots
                    .add(cert)
                    .with_context(|| format!("tls.client_ca_file {}", path.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .with_context(|| format!("tls.client_ca_file {}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("tls.cert_file and tls.key_file do not make a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Does the certificate name `node_id` (a DNS subject alternative name)?
pub fn names_node(cert: &CertificateDer<'_>, node_id: &str) -> bool {
    let Ok(name) = ServerName::try_from(node_id) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .and_then(|c| c.verify_is_valid_for_subject_name(&name))
        .is_ok()
}

/// rustls's acceptor, which also hands each request the client's certificate
/// ([`PeerCertificate`]).
#[derive(Clone)]
pub struct ClientCertAcceptor(pub RustlsAcceptor);

impl<I, S> Accept<I, S> for ClientCertAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Send + 'static,
{
    type Stream = TlsStream<I>;
    type Service = AddExtension<S, PeerCertificate>;
    type Future = BoxFuture<'static, std::io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let acceptor = self.0.clone();
        Box::pin(async move {
            let (stream, service) = acceptor.accept(stream, service).await?;
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| c.clone().into_owned());
            Ok((
                stream,
                axum::Extension(PeerCertificate(peer)).layer(service),
            ))
        })
    }
}
