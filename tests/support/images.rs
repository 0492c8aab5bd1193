//! The job images as the project declares and builds them: the list in `images/images.txt`,
//! the workspace version every image is tagged with, the container storage
//! `scripts/build-images.sh` writes to (see `scripts/images-lib.sh`), and podman on it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::openbao::workspace_root;
use super::tools::Ran;

/// The platforms every image is built for (OCI architecture names), with the ELF machine of
/// the binary each must carry: `EM_X86_64` and `EM_AARCH64` (the ELF specification's
/// `e_machine` values, as in Linux's `include/uapi/linux/elf-em.h`).
pub const PLATFORMS: [(&str, u16); 2] = [("amd64", 62), ("arm64", 183)];

/// The Rust target of each platform's static binary, as `scripts/images-lib.sh` maps them.
pub fn rust_target(platform: &str) -> &'static str {
    match platform {
        "amd64" => "x86_64-unknown-linux-musl",
        "arm64" => "aarch64-unknown-linux-musl",
        other => panic!("no Rust target for platform {other}"),
    }
}

/// One line of `images/images.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageEntry {
    /// The name the manifests pull: `registry.home.arpa/homelab-pki/<image>`.
    pub image: String,
    /// The cluster whose Flux tree (`kubernetes/<cluster>/`) runs it.
    pub cluster: String,
    /// The workspace crate whose binary it carries.
    pub krate: String,
}

/// Parses the text of `images/images.txt`: three words a line, `#` comments and blank lines
/// skipped. A line with another number of words is an error naming it.
pub fn parse_image_list(text: &str) -> Result<Vec<ImageEntry>, String> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(
            |(n, line)| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [image, cluster, krate] => Ok(ImageEntry {
                    image: image.to_owned(),
                    cluster: cluster.to_owned(),
                    krate: krate.to_owned(),
                }),
                _ => Err(format!(
                    "line {n}: expected `image cluster crate`, found {line:?}"
                )),
            },
        )
        .collect()
}

/// `images/images.txt` of this checkout.
pub fn image_list() -> Vec<ImageEntry> {
    let path = workspace_root().join("images/images.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_image_list(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A value of Cargo.toml's `[workspace.package]` table, for the string keys it holds
/// (`version`, `license`, `repository`): `key = "value"` lines between that header and the
/// next.
pub fn workspace_package_field(cargo_toml: &str, key: &str) -> Option<String> {
    cargo_toml
        .lines()
        .skip_while(|l| l.trim() != "[workspace.package]")
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
        })
}

/// The workspace version: the tag of every image, `v<version>` the tag of a release.
pub fn workspace_version() -> String {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    workspace_package_field(&text, "version").expect("Cargo.toml has a workspace version")
}

/// Where cargo builds (`CARGO_TARGET_DIR`, as cargo and the scripts read it).
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| workspace_root().join("target"), PathBuf::from)
}

/// The release binary of `krate` for a platform, as `scripts/cross-build.sh` builds it
/// (`scripts/build-images.sh` runs it; scripts/test.sh runs that first).
pub fn release_bin(krate: &str, platform: &str) -> PathBuf {
    let path = target_dir()
        .join(rust_target(platform))
        .join("release")
        .join(krate);
    assert!(
        path.exists(),
        "{} is missing; run scripts/build-images.sh test (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The qemu-user emulator that runs an aarch64 binary on this machine: the static build, so
/// that it also runs inside an image with no libc.
pub fn qemu_aarch64() -> String {
    let path = "/usr/bin/qemu-aarch64-static";
    assert!(
        Path::new(path).exists(),
        "{path} is missing; run scripts/install-test-peers.sh (Debian qemu-user-static)"
    );
    path.to_owned()
}

/// The storage flags of every buildah and podman call on the project's images.
pub fn storage_args() -> Vec<String> {
    let containers = target_dir().join("containers");
    vec![
        "--root".to_owned(),
        containers.join("storage").display().to_string(),
        "--runroot".to_owned(),
        containers.join("run").display().to_string(),
        "--storage-driver".to_owned(),
        "vfs".to_owned(),
    ]
}

/// podman on the project's image storage.
pub fn podman(args: &[&str], dir: &Path) -> Ran {
    let output = Command::new("podman")
        .args(storage_args())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run podman (apt-get install podman runc)");
    Ran {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The local reference of an image's manifest list at `tag`.
pub fn list_reference(image: &str, tag: &str) -> String {
    format!("localhost/homelab-pki/{image}:{tag}")
}

/// What an ELF executable says of itself: its machine, and whether it asks for a program
/// interpreter (a dynamic loader), which a static binary in an image without libc must not.
#[derive(Debug, PartialEq, Eq)]
pub struct ElfFacts {
    pub machine: u16,
    pub interpreter: bool,
}

/// Reads the ELF header and program headers of a 64-bit little-endian executable (the layout
/// of the System V ABI's ELF specification: `e_machine` at 18, `e_phoff` at 32, `e_phentsize`
/// and `e_phnum` at 54 and 56; `PT_INTERP` is program header type 3).
pub fn elf_facts(bytes: &[u8]) -> Result<ElfFacts, String> {
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| format!("truncated at byte {at}"))
    };
    if bytes.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".to_owned());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".to_owned());
    }
    let machine = u16_at(18)?;
    let phoff = usize::try_from(u64_at(32)?).map_err(|e| e.to_string())?;
    let phentsize = usize::from(u16_at(54)?);
    let phnum = usize::from(u16_at(56)?);
    let mut interpreter = false;
    for i in 0..phnum {
        interpreter |= u32_at(phoff + i * phentsize)? == 3;
    }
    Ok(ElfFacts {
        machine,
        interpreter,
    })
}
