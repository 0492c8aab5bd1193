# shellcheck shell=bash disable=SC2034  # the variables are for the scripts that source this
# Sourced by the image scripts (build-images.sh, cross-build.sh, push-images.sh), from the
# checkout's root: the list of images, the platforms and the Rust target of each, where the
# images are stored, and the labels every image carries.

# The platforms every image is built for (OCI architecture names), and the Rust target whose
# static binary each gets.
PLATFORMS=(amd64 arm64)
declare -A RUST_TARGET=([amd64]=x86_64-unknown-linux-musl [arm64]=aarch64-unknown-linux-musl)

# Where cargo builds: CARGO_TARGET_DIR if set, as cargo reads it.
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir

# The images live in a container storage of their own under target/: two checkouts never see
# each other's images (the tests of one would otherwise inspect what the other just built),
# and vfs needs no overlay filesystem from the kernel.
STORAGE=(--root "$target_dir/containers/storage" --runroot "$target_dir/containers/run" --storage-driver vfs)

# The lines of images/images.txt, without comments: "image cluster crate".
image_lines() {
  grep -Ev '^[[:space:]]*(#|$)' images/images.txt
}

# The version of the workspace's crates (Cargo.toml's [workspace.package] version): the tag of
# every image, the git tag of a release with a leading v. Fails if the crates disagree.
workspace_version() {
  cargo metadata --no-deps --format-version 1 --locked |
    jq -er '[.packages[].version] | unique | if length == 1 then .[0]
            else error("the workspace crates disagree on their version: \(.)") end'
}

# A workspace crate's field from `cargo metadata` (description, license, ...).
crate_field() {
  cargo metadata --no-deps --format-version 1 --locked |
    jq -er --arg crate "$1" --arg field "$2" \
      '.packages[] | select(.name == $crate) | .[$field] // error("\($crate) has no \($field) in its Cargo.toml")'
}
