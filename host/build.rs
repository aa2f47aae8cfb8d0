//! Sets `cfg(isolation)` where plugins can run in worker processes (Linux: the worker needs
//! `memfd_create`, shared futexes and the parent-death signal). `PLUGHOST_NO_ISOLATION=1`
//! builds without it, to check that the rest of the crate builds as it does elsewhere.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(isolation)");
    println!("cargo::rerun-if-env-changed=PLUGHOST_NO_ISOLATION");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    if linux && std::env::var_os("PLUGHOST_NO_ISOLATION").is_none() {
        println!("cargo::rustc-cfg=isolation");
    }
}
