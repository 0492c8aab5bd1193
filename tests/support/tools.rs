//! Running `openssl` and `keytool` on files in a scratch directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory that is removed when dropped.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create a scratch directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `name` inside the directory and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write a scratch file");
        path
    }
}

/// What a finished command printed.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(output: &Output) -> Self {
        Self {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Both streams, for assertions that do not care where a tool printed.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(self.success, "command failed:\n{}", self.all());
        self
    }

    #[track_caller]
    pub fn failed(self) -> Self {
        assert!(
            !self.success,
            "command succeeded but should have failed:\n{}",
            self.all()
        );
        self
    }
}

/// Runs `program` with `args` in `dir`.
#[track_caller]
pub fn run(program: &str, args: &[&str], dir: &Path) -> Ran {
    match Command::new(program).args(args).current_dir(dir).output() {
        Ok(output) => Ran::from(&output),
        Err(e) => panic!(
            "cannot run {program}: {e}; install the test peers with ./scripts/test.sh (or `just peers`)"
        ),
    }
}

#[track_caller]
pub fn openssl(args: &[&str], dir: &Path) -> Ran {
    run("openssl", args, dir)
}

#[track_caller]
pub fn keytool(args: &[&str], dir: &Path) -> Ran {
    run("keytool", args, dir)
}

/// `keytool -list -v` of the PKCS#12 `keystore` in `dir`, opened with `storepass`, as a Java
/// client's keystore is read; the listing, once it succeeded.
#[track_caller]
pub fn keytool_listing(keystore: &str, storepass: &str, dir: &Path) -> String {
    keytool(
        &[
            "-list",
            "-v",
            "-storetype",
            "PKCS12",
            "-keystore",
            keystore,
            "-storepass",
            storepass,
        ],
        dir,
    )
    .ok()
    .stdout
}

/// `openssl verify` of the `cacerts` files in `dir`, as an operator checks a cluster bundle.
#[track_caller]
pub fn verify_cacerts(dir: &Path) -> Ran {
    openssl(
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cert-chain.pem",
            "ca-cert.pem",
        ],
        dir,
    )
}

/// 16 bytes as a UUID is written (`8-4-4-4-12` lowercase hex digits), as Kubernetes writes
/// object uids.
pub fn uuid_text(bytes: &[u8; 16]) -> String {
    let h: String = bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0xf])
        .filter_map(|n| char::from_digit(n.into(), 16))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
