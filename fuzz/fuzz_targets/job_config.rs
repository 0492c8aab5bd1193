//! Arbitrary bytes as a job's environment: each line `NAME=value` is one variable, as a Pod
//! spec sets them. Every configuration parser (the store's, shared by the jobs, and the client
//! issuer's) must answer with a configuration or an error naming the variable, never panic.
#![no_main]

#[path = "../../crates/client-issuer-job/src/config.rs"]
#[allow(dead_code)]
mod config;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    let _ = job_support::StoreConfig::from_vars(vars.clone(), "fuzz");
    let _ = config::Config::from_vars(vars);
});
