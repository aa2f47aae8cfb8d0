//! The seccomp part of a [`Sandbox`]: the system calls that fail with an error, by what the
//! plugin was not granted. Landlock cannot see these: the socket's domain and type, a
//! connection made without `connect()`, a port the kernel picks, a new process.

use std::collections::BTreeMap;

use super::{Network, Sandbox};

/// The seccomp filters of `sandbox`, one per error they return (a filter has one action for
/// every system call it matches; the kernel runs them all). Everything they do not match is
/// allowed; none if the sandbox denies nothing Landlock does not (`net` and `exec` granted).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
))]
pub(super) fn filters(sandbox: &Sandbox) -> Result<Vec<seccompiler::BpfProgram>, String> {
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    let text = |e: seccompiler::BackendError| e.to_string();
    let condition = |arg, op, value: i32| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value as u64).map_err(text)
    };
    let mut eacces: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut eperm: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let mut enosys: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let network = sandbox.network();
    match network {
        Network::Any => {}
        Network::None => {
            // Any domain: local sockets (a path or an abstract name) reach other programs too.
            eacces.insert(libc::SYS_socket, Vec::new());
        }
        Network::Tcp(_) => {
            // Only what Landlock's port rules see: TCP over IPv4 or IPv6. A SOCK_STREAM of
            // another protocol (SCTP, MPTCP) would pass them by.
            let mut tcp_only = vec![
                SeccompRule::new(vec![
                    condition(0, SeccompCmpOp::Ne, libc::AF_INET)?,
                    condition(0, SeccompCmpOp::Ne, libc::AF_INET6)?,
                ])
                .map_err(text)?,
                SeccompRule::new(vec![
                    condition(2, SeccompCmpOp::Ne, 0)?,
                    condition(2, SeccompCmpOp::Ne, libc::IPPROTO_TCP)?,
                ])
                .map_err(text)?,
            ];
            // The type without its flags (SOCK_NONBLOCK, SOCK_CLOEXEC) is its low 4 bits.
            for kind in (0..16).filter(|&kind| kind != libc::SOCK_STREAM) {
                tcp_only.push(
                    SeccompRule::new(vec![condition(1, SeccompCmpOp::MaskedEq(0xf), kind)?])
                        .map_err(text)?,
                );
            }
            eacces.insert(libc::SYS_socket, tcp_only);
            // TCP Fast Open connects with the first data sent, where Landlock (which checks
            // `connect()`) does not look: MSG_FASTOPEN in the flags of sendto (argument 3),
            // sendmsg (2) or sendmmsg (3).
            let fast_open = libc::MSG_FASTOPEN;
            for (call, flags) in [
                (libc::SYS_sendto, 3),
                (libc::SYS_sendmsg, 2),
                (libc::SYS_sendmmsg, 3),
            ] {
                let rule = SeccompRule::new(vec![condition(
                    flags,
                    SeccompCmpOp::MaskedEq(fast_open as u64),
                    fast_open,
                )?])
                .map_err(text)?;
                eacces.insert(call, vec![rule]);
            }
        }
    }
    if network != Network::Any {
        // `listen()` on a socket never bound binds it to a port the kernel picks: no `bind()`
        // for Landlock to check, and the plugin would take connections from anyone.
        eacces.insert(libc::SYS_listen, Vec::new());
        // Its requests create sockets without the socket system call.
        enosys.insert(libc::SYS_io_uring_setup, Vec::new());
    }
    if !sandbox.exec() {
        eacces.insert(libc::SYS_execve, Vec::new());
        eacces.insert(libc::SYS_execveat, Vec::new());
        #[cfg(target_arch = "x86_64")]
        {
            eperm.insert(libc::SYS_fork, Vec::new());
            eperm.insert(libc::SYS_vfork, Vec::new());
        }
        // New threads (CLONE_THREAD) are allowed, new processes not.
        eperm.insert(
            libc::SYS_clone,
            vec![SeccompRule::new(vec![condition(
                0,
                SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                0,
            )?])
            .map_err(text)?],
        );
        // Its flags are in memory a filter cannot read: "not implemented", and glibc falls
        // back to clone (threads start, posix_spawn fails).
        enosys.insert(libc::SYS_clone3, Vec::new());
    }
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 numbers of the same calls, which the architecture check lets through: denied
        // whatever their arguments (no program a plugin loads into makes x32 calls).
        const X32: i64 = 0x4000_0000;
        let denied: Vec<i64> = eacces
            .keys()
            .chain(eperm.keys())
            .chain(enosys.keys())
            .copied()
            .collect();
        for number in denied {
            let twin = match number {
                libc::SYS_execve => X32 | 520,
                libc::SYS_execveat => X32 | 545,
                libc::SYS_sendmsg => X32 | 518,
                libc::SYS_sendmmsg => X32 | 538,
                other => X32 | other,
            };
            eperm.insert(twin, Vec::new());
        }
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(text)?;
    [
        (eacces, libc::EACCES),
        (eperm, libc::EPERM),
        (enosys, libc::ENOSYS),
    ]
    .into_iter()
    .filter(|(rules, _)| !rules.is_empty())
    .map(|(rules, errno)| {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            arch,
        )
        .map_err(text)?;
        BpfProgram::try_from(filter).map_err(text)
    })
    .collect()
}

/// Elsewhere the system calls differ (32-bit x86 has no `socket`, only `socketcall`), and
/// seccompiler does not know them.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
pub(super) fn filters(_: &Sandbox) -> Result<Vec<seccompiler::BpfProgram>, String> {
    Err(format!(
        "no filter is written for {}: only x86_64, aarch64 and riscv64",
        std::env::consts::ARCH
    ))
}

/// Installs `filters` on every thread of the process.
pub(super) fn install(filters: &[seccompiler::BpfProgram]) -> Result<(), String> {
    for filter in filters {
        seccompiler::apply_filter_all_threads(filter).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::granted as sandbox;
    use super::*;

    #[test]
    fn filters_compile_for_every_kind_of_sandbox() {
        let count = |grants: &[&str]| filters(&sandbox(grants)).unwrap().len();
        // EACCES (socket, listen, execve), EPERM (fork, clone), ENOSYS (clone3, io_uring).
        assert_eq!(count(&[]), 3);
        assert_eq!(count(&["net:connect:db:5432"]), 3);
        // Sockets limited to TCP without Fast Open or listening, io_uring denied.
        assert!(count(&["exec", "net:connect:db:*"]) >= 2);
        assert_eq!(count(&["net", "exec"]), 0);
    }
}
