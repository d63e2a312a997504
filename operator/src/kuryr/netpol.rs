//! NetworkPolicy (networking.k8s.io/v1) -> NSDB chains attached to pods in `Allow` mode.

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::error::Error;

/// The chains of one NetworkPolicy.
pub fn chains(np: &NetworkPolicy) -> Result<Vec<nsdb::Chain>, Error> {
    let _ = np;
    Err(Error::InvalidSpec {
        kind: "NetworkPolicy",
        name: String::new(),
        message: "translation not written yet".into(),
    })
}
