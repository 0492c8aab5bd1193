//! The `main` every job shares: configuration from the environment, logging set up from it,
//! the run, and the error chain printed once as an exit code. Arguments are parsed by each
//! job with `clap` before this runs (so `--help` and `--version` need no configuration);
//! the `-o` option of `plan` and `report` is defined here once.

use std::process::ExitCode;

use crate::config::{ConfigError, StoreConfig};
use crate::exit::report;
use crate::logging;

/// How `plan` and `report` print what they found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, for a terminal.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// The `-o table|json` option.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArg {
    /// Print a table (the default) or JSON.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

/// The text under every command's `--help`: the job's own variables, the Pushgateway's (for
/// the `job` label `metrics_job`), the store's, and the exit codes.
#[must_use]
pub fn variables_help(job_variables: &str, metrics_job: &str) -> String {
    format!(
        "{job_variables}\n\n{}\n\n{}\n\n{}",
        crate::metrics::variables_help(metrics_job),
        crate::config::STORE_VARIABLES_HELP,
        crate::exit::Failure::TABLE
    )
}

/// Loads the configuration, sets up logging from it, and runs; the run's error, if any, is
/// printed once and mapped to its exit code. `run` returns the code of a run that finished
/// (0, or a documented code such as "changes pending"). A `quiet` command (a `plan`, whose
/// output is its report) logs warnings and errors only, unless `RUST_LOG` says otherwise: its
/// info lines would narrate writes it does not make.
pub fn main_with<C>(
    quiet: bool,
    load: impl FnOnce() -> Result<C, ConfigError>,
    store_of: impl Fn(&C) -> &StoreConfig,
    run: impl FnOnce(&C) -> anyhow::Result<ExitCode>,
) -> ExitCode {
    let config = match load() {
        Ok(config) => config,
        Err(e) => {
            logging::init(logging::LogFormat::Auto, None);
            return report(&e.into());
        }
    };
    let store = store_of(&config);
    let filter = match (&store.log_filter, quiet) {
        (Some(filter), _) => Some(filter.as_str()),
        (None, true) => Some("warn"),
        (None, false) => None,
    };
    logging::init(store.log_format, filter);
    match run(&config) {
        Ok(code) => code,
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
