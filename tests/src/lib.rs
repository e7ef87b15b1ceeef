//! The lab (a real control plane and a Layer-2 network of namespaces on one machine) and the end-to-end
//! suites that run against it.

pub mod harness;
pub mod lab;
pub mod metallb;
