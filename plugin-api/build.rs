//! abi_stable writes the package name of every FFI type into the layouts a plugin carries, and
//! the host compares them. This crate was the package `plugin-api` until 1.4, when it became
//! `plughost-plugin-api`: the layouts keep saying `plugin-api`, so that plugins built before the
//! rename still pass the host's layout check (and new ones pass an older host's).
fn main() {
    println!("cargo:rustc-env=CARGO_PKG_NAME=plugin-api");
}
