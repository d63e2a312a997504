//! Support for the operator's tests against a real control plane.

pub mod controlplane;
pub mod operator;
