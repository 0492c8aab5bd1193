//! Arbitrary bytes as the clients file (a ConfigMap anyone with access may edit): the parser
//! must answer with a list of problems or a list of clients, never panic.
#![no_main]

#[path = "../../crates/client-issuer-job/src/clients_file.rs"]
#[allow(dead_code)]
mod clients_file;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = clients_file::parse_clients_file(&String::from_utf8_lossy(data));
});
