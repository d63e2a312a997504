//! The process-wide rustls crypto provider, chosen once before the first TLS connection.

/// Installs ring as rustls' process-wide crypto provider; a provider already installed stays.
///
/// kube's client builds its rustls config from the process default. rustls chooses that
/// default by itself only when exactly one of its `ring` and `aws-lc-rs` features is on, and
/// feature unification across a build can leave none (kube without default features) or both
/// (another dependency's defaults): the client then panics on its first connection. Naming the
/// provider here makes the choice independent of features. The workspace enables only ring.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
