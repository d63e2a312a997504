//! The Kuryr mapping: Kubernetes Namespaces, Services with their EndpointSlices, and
//! NetworkPolicies translated into NSDB records, as [`crate::translate`] does for Weft's own
//! kinds. Pods are not translated: the CNI ADD makes their ports on the node, and the
//! node's agent keeps the ports' labels in step with the pods.

pub mod netpol;
