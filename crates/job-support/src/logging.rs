//! Logging set-up shared by the jobs: `tracing` with an `EnvFilter` (default `info`, from
//! `RUST_LOG`), JSON lines when stderr is not a terminal (a pod's log), readable text on one.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, text otherwise.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Installs the global subscriber. `filter` is `RUST_LOG`'s value, if set.
pub fn init(format: LogFormat, filter: Option<&str>) {
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        // vaultrs and rustify log every non-2xx answer at ERROR, including the 404 of an entry
        // that does not exist yet; the jobs report real failures themselves, with context.
        .unwrap_or_else(|| EnvFilter::new("info,vaultrs=off,rustify=off"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second init (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// A configured key algorithm that differs from the one of a key already stored: the stored
/// key is kept (a CA key is replaced only through an explicit step), and the operator is told
/// which variable says what, rather than the setting being silently ignored. Returns whether
/// they differ.
pub fn report_kept_key_algorithm(
    variable: &'static str,
    configured: pki_core::KeyAlgorithm,
    stored: &pki_core::SigningKey,
    path: &str,
) -> bool {
    match stored.algorithm() {
        Some(stored) if stored != configured => {
            tracing::warn!(
                variable,
                configured = %configured,
                stored = %stored,
                path,
                "{variable} is {configured} but the key stored at '{path}' is {stored}; the stored \
                 key is kept, and {configured} applies only to keys generated from now on"
            );
            true
        }
        _ => false,
    }
}
