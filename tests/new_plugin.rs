//! `plughost new` writes a plugin crate that builds, passes its own tests and loads on the
//! first try, and refuses names and folders it must not use.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use plughost_tests::{plughost, stderr, stdout};

/// The cargo running these tests.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs `command`, panicking with its output unless it succeeds.
fn run(what: &str, command: &mut Command) -> Output {
    let started = Instant::now();
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    output
}

/// Runs `command`, panicking with its output unless it fails; its stderr.
fn refused(what: &str, command: &mut Command) -> String {
    let output = command.output().expect("run plughost");
    assert!(
        !output.status.success(),
        "{what} succeeded:\n{}",
        stdout(&output)
    );
    stderr(&output)
}

/// The workspace's shared target folder for generated crates: their dependencies are compiled
/// once, not on every run.
fn generated_target_dir() -> PathBuf {
    xtask::workspace_root()
        .join("target")
        .join("new-plugin-test")
}

#[test]
fn the_new_crate_builds_passes_its_tests_and_loads() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("greeter-test");
    let output = run(
        "plughost new",
        Command::new(plughost())
            .args(["new", "greeter-test", "--path"])
            .arg(&dir),
    );
    let said = stdout(&output);
    assert!(
        said.contains("Created plugin greeter_test (crate greeter-test)"),
        "{said}"
    );
    assert!(said.contains("plughost exec greeter_test world"), "{said}");
    // Built from this workspace, it points the crate at this workspace's plugin-api.
    let api = std::fs::canonicalize(xtask::workspace_root().join("plugin-api")).unwrap();
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let dependency = format!(
        r#"plugin-api = {{ package = "plughost-plugin-api", path = "{}" }}"#,
        api.display()
    );
    assert!(manifest.contains(&dependency), "{manifest}");
    assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
    for file in ["src/lib.rs", "README.md", ".gitignore"] {
        assert!(dir.join(file).is_file(), "no {file}");
    }

    // Its dependencies are a subset of the workspace's: the same lock resolves them offline.
    std::fs::copy(
        xtask::workspace_root().join("Cargo.lock"),
        dir.join("Cargo.lock"),
    )
    .unwrap();
    let target = generated_target_dir();
    run(
        "cargo test (the generated crate)",
        cargo()
            .arg("test")
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target),
    );
    run(
        "cargo build (the generated crate)",
        cargo()
            .arg("build")
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target),
    );
    let built = target.join("debug");
    let library = format!(
        "{}greeter_test{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    assert!(built.join(&library).is_file(), "no {library} in {built:?}");

    let shadow = tempfile::tempdir().unwrap();
    let exec = |extra: &[&str]| {
        let mut command = Command::new(plughost());
        command
            .args(["exec", "greeter_test", "world", "--plugins-dir"])
            .arg(&built)
            .arg("--shadow-dir")
            .arg(shadow.path())
            .args(extra)
            .current_dir(scratch.path());
        command
    };
    let output = run("plughost exec", &mut exec(&[]));
    assert_eq!(stdout(&output), "Hello, world!\n");
    let output = run(
        "plughost exec --init",
        &mut exec(&["--init", r#"{"greeting":"Hi"}"#]),
    );
    assert_eq!(stdout(&output), "Hi, world!\n");
    let error = refused(
        "an empty greeting",
        &mut exec(&["--init", r#"{"greeting":""}"#]),
    );
    assert!(error.contains("greeting must not be empty"), "{error}");
}

#[test]
fn new_refuses_bad_names_bad_api_specs_and_non_empty_folders() {
    let scratch = tempfile::tempdir().unwrap();
    let new = |name: &str, dir: &Path, extra: &[&str]| {
        let mut command = Command::new(plughost());
        command
            .args(["new", name, "--path"])
            .arg(dir)
            .args(extra)
            .current_dir(scratch.path());
        command
    };

    let dir = scratch.path().join("x");
    for (name, reason) in [
        ("", "it is empty"),
        ("Greeter", "must start with a lowercase ASCII letter"),
        ("1greeter", "must start with a lowercase ASCII letter"),
        ("greeter.v2", "'.' is not allowed"),
        ("greeter v2", "' ' is not allowed"),
        ("fn", "`fn` is a Rust keyword"),
        ("self", "`self` is a Rust keyword"),
        ("test", "`test` is reserved"),
        ("serde-json", "`serde_json` is reserved"),
    ] {
        let error = refused(name, &mut new(name, &dir, &[]));
        assert!(
            error.contains(&format!("{name:?} cannot name a plugin crate"))
                && error.contains(reason),
            "{name:?}: {error}"
        );
        assert!(!dir.exists(), "{name:?} left {dir:?} behind");
    }

    for spec in [
        "greeter",
        "svn:x",
        "version:",
        "git:#v1",
        "path:/no/such/folder",
    ] {
        let error = refused(spec, &mut new("greeter", &dir, &["--api", spec]));
        assert!(
            error.contains(&format!("--api {spec:?}")),
            "{spec}: {error}"
        );
        assert!(!dir.exists(), "{spec:?} left {dir:?} behind");
    }

    // A folder with anything in it is left alone.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let error = refused("a non-empty folder", &mut new("greeter", &dir, &[]));
    assert!(error.contains("already exists and is not empty"), "{error}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    assert_eq!(
        std::fs::read_to_string(dir.join("notes.txt")).unwrap(),
        "mine"
    );
    // A file in the way, too.
    let file = scratch.path().join("file");
    std::fs::write(&file, "mine").unwrap();
    let error = refused("a file", &mut new("greeter", &file, &[]));
    assert!(error.contains("is not a folder"), "{error}");

    // An empty folder is fine, and the crate's name is the folder's business only.
    let empty = scratch.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = run(
        "plughost new into an empty folder",
        &mut new("my-plugin", &empty, &["--api", "version:1.4.0"]),
    );
    assert!(
        stdout(&output).contains("Created plugin my_plugin (crate my-plugin)"),
        "{}",
        stdout(&output)
    );
    let manifest = std::fs::read_to_string(empty.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains(r#"plugin-api = { package = "plughost-plugin-api", version = "1.4.0" }"#),
        "{manifest}"
    );
    let lib = std::fs::read_to_string(empty.join("src/lib.rs")).unwrap();
    assert!(
        lib.contains(r#"const NAME: &'static str = "my_plugin";"#),
        "{lib}"
    );
}
