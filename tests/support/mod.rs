//! Shared helpers: temporary directories, external tools, fixed times.
