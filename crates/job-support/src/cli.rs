//! The `main` every job shares: `--help` and `--version`, configuration from the environment,
//! logging set up from it, the run, and the error chain printed once as an exit code.

use std::process::ExitCode;

use crate::config::{ConfigError, StoreConfig};
use crate::exit::{Failure, report};
use crate::logging;

/// A job's identity for `--help` and `--version`.
#[derive(Debug, Clone, Copy)]
pub struct JobInfo {
    /// Binary name.
    pub name: &'static str,
    /// Version.
    pub version: &'static str,
}

/// Handles the arguments of a job configured only through its environment: `-h`/`--help`
/// prints `help`, `-V`/`--version` the version, anything else is a configuration error.
/// Otherwise loads the configuration, sets up logging from it, and runs.
pub fn main_with<C>(
    job: JobInfo,
    args: &[String],
    help: impl FnOnce() -> String,
    load: impl FnOnce() -> Result<C, ConfigError>,
    store_of: impl Fn(&C) -> &StoreConfig,
    run: impl FnOnce(&C) -> anyhow::Result<()>,
) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("-h" | "--help") => {
            println!("{}", help());
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("{} {}", job.name, job.version);
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!(
                "{}: unexpected argument '{other}'; it is configured through the environment (see --help)",
                job.name
            );
            return Failure::Config.into();
        }
        None => {}
    }
    let config = match load() {
        Ok(config) => config,
        Err(e) => {
            logging::init(logging::LogFormat::Auto, None);
            return report(&e.into());
        }
    };
    let store = store_of(&config);
    logging::init(store.log_format, store.log_filter.as_deref());
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// Runs `future` on a single-threaded runtime: the jobs do one thing at a time.
pub fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}
