//! Shared helpers: scratch directories, the independent command-line tools the tests check our
//! output with, real OpenBao servers, and the job binaries. A missing tool fails the test with
//! the command that installs it, rather than skipping: a skipped interop test proves nothing.

pub mod flux;
pub mod forwarder;
pub mod haproxy;
pub mod images;
pub mod jobs;
pub mod kube_api;
pub mod kube_authn;
pub mod kube_rbac;
pub mod openbao;
pub mod openbao_raft;
pub mod proxy;
pub mod pushgateway;
pub mod tools;
