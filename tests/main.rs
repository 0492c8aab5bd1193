//! The cross-crate integration tests, one binary: each module exercises generated material
//! or a job against an independent, real peer started by the test itself.

mod support;
