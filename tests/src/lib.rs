//! The lab (real control plane + network namespaces) and the end-to-end suites. Not built yet (issue 3).
