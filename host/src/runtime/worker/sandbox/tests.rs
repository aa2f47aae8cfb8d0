//! Tests of the sandbox: what each kernel can enforce, the rules and filters it becomes.

use super::*;

use super::granted as sandbox;

const FULL: Kernel = Kernel {
    landlock: Landlock::Abi(7),
    seccomp: true,
};

fn lacks(kernel: Kernel, grants: &[&str]) -> Vec<String> {
    gaps(&kernel, &sandbox(grants))
        .iter()
        .map(Gap::to_string)
        .collect()
}

#[test]
fn a_full_kernel_lacks_nothing() {
    for grants in [
        &[][..],
        &["net:connect:db:5432", "fs:read:/etc"],
        &["net", "exec"],
    ] {
        assert!(lacks(FULL, grants).is_empty(), "{grants:?}");
    }
}

#[test]
fn without_landlock_files_cannot_be_confined() {
    let kernel = Kernel {
        landlock: Landlock::Disabled,
        ..FULL
    };
    assert_eq!(
        lacks(kernel, &[]),
        [
            "it lacks Landlock (built in, not enabled at boot: add landlock to the kernel's \
          lsm= parameter), needed to keep it from every file (it has no fs: grant)"
        ]
    );
    assert_eq!(
        lacks(kernel, &["fs:read:/etc/ssl", "events:emit"]),
        [
            "it lacks Landlock (built in, not enabled at boot: add landlock to the kernel's \
          lsm= parameter), needed to confine it to fs:read:/etc/ssl"
        ]
    );
    // Nothing to confine: every file is granted.
    assert!(lacks(kernel, &["fs:write:/"]).is_empty());
}

#[test]
fn old_landlock_cannot_keep_files_from_truncation_nor_enforce_ports() {
    let kernel = Kernel {
        landlock: Landlock::Abi(2),
        ..FULL
    };
    assert_eq!(
        lacks(kernel, &["net:connect:db:5432"]),
        [
            "it lacks Landlock ABI 3 (truncation; it has ABI 2), needed to keep it from every \
             file (it has no fs: grant)",
            "it lacks Landlock ABI 4 (TCP port rules; it has ABI 2), needed for \
             net:connect:db:5432",
        ]
    );
    let kernel = Kernel {
        landlock: Landlock::Abi(3),
        ..FULL
    };
    // Without net:connect, seccomp keeps it from every socket: no port rules needed.
    assert!(lacks(kernel, &["fs:read:/etc"]).is_empty());
    assert!(lacks(kernel, &["net"]).is_empty());
    assert_eq!(
        lacks(kernel, &["net:connect:*:*"]),
        [
            "it lacks Landlock ABI 4 (TCP port rules; it has ABI 3), needed for \
          net:connect:*:*"
        ]
    );
}

#[test]
fn without_seccomp_sockets_and_processes_cannot_be_kept_away() {
    let kernel = Kernel {
        seccomp: false,
        ..FULL
    };
    assert_eq!(
        lacks(kernel, &[]),
        [
            "it lacks seccomp filters, needed to keep it from opening sockets (net is not \
          granted) and to keep it from starting processes (exec is not granted)"
        ]
    );
    assert_eq!(
        lacks(kernel, &["net:connect:db:5432", "exec"]),
        ["it lacks seccomp filters, needed to keep it to TCP (only net:connect is granted)"]
    );
    assert!(lacks(kernel, &["net", "exec"]).is_empty());
}

#[test]
fn the_kernel_says_what_it_has() {
    assert_eq!(FULL.to_string(), "Landlock ABI 7, seccomp filters");
    let none = Kernel {
        landlock: Landlock::Missing,
        seccomp: false,
    };
    assert_eq!(
        none.to_string(),
        "no Landlock (not built into this kernel), no seccomp filters"
    );
    assert!(FULL.is_complete() && !none.is_complete());
}

#[test]
fn sandboxes_keep_only_what_the_kernel_enforces_in_one_order() {
    let a = sandbox(&["call:storage", "exec", "fs:read:/a", "exec", "events:emit"]);
    let b = sandbox(&["fs:read:/a", "exec"]);
    assert_eq!(a, b);
    assert_eq!(a.grants.len(), 2);
    assert!(!a.keeps_environment());
    assert!(sandbox(&["env"]).keeps_environment());
    assert!(Sandbox::strictest(Confinement::Off).keeps_environment());
    let json = serde_json::to_string(&a).unwrap();
    assert_eq!(
        json,
        r#"{"confinement":"enforce","grants":["fs:read:/a","exec"]}"#
    );
    assert_eq!(serde_json::from_str::<Sandbox>(&json).unwrap(), a);
}

#[test]
fn networks_are_read_from_the_grants() {
    assert_eq!(sandbox(&[]).network(), Network::None);
    assert_eq!(sandbox(&["net", "net:connect:a:1"]).network(), Network::Any);
    assert_eq!(
        sandbox(&["net:connect:a:443", "net:connect:b:80", "net:connect:c:443"]).network(),
        Network::Tcp(vec![80, 443])
    );
    assert_eq!(
        sandbox(&["net:connect:a:443", "net:connect:b:*"]).network(),
        Network::Tcp(Vec::new())
    );
}

#[test]
fn the_summary_says_what_the_plugin_may_do() {
    assert_eq!(
        summary(&sandbox(&["fs:read:/etc/passwd"]), &FULL),
        "confined: files fs:read:/etc/passwd; network none; processes no; environment \
         cleared (Landlock ABI 7, seccomp filters)"
    );
    let old = Kernel {
        landlock: Landlock::Abi(5),
        seccomp: true,
    };
    assert_eq!(
        summary(&sandbox(&["net:connect:a:443", "exec", "env"]), &old),
        "confined: files none; network TCP to port 443; processes yes (exec); environment \
         inherited (env) (Landlock ABI 5, seccomp filters; signals and abstract sockets not \
         scoped)"
    );
}
