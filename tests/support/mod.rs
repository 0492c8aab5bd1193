//! Shared helpers: scratch directories and the independent command-line tools the tests
//! check our output with. A missing tool fails the test with the command that installs it,
//! rather than skipping: a skipped interop test proves nothing.

pub mod tools;
