//! Support for the operator's tests against a real control plane.
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

pub mod controlplane;
pub mod operator;
pub mod records;
