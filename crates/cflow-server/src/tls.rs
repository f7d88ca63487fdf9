//! HTTPS: loads the PEM certificate chain and key for axum-server's rustls acceptor.

use crate::ServerError;
use axum_server::tls_rustls::RustlsConfig;
use std::path::Path;

/// rustls needs one process-wide crypto provider. Installing twice (several servers in one
/// process, or another crate got there first) fails harmlessly, so the error is ignored.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Reads the certificate chain and private key.
pub async fn load(cert: &Path, key: &Path) -> Result<RustlsConfig, ServerError> {
    install_crypto_provider();
    RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|source| ServerError::Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        })
}
