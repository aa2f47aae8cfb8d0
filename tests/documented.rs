//! What the documentation tells a new user to run does what it says: the `plughost exec` lines
//! in the example plugins' crate docs (run as written, their `# output` comments checked), and
//! `cargo xtask build-plugins`, which says what it is doing while a first build takes minutes.

use std::process::Command;

use plughost_tests::{stderr, stdout, PluginDir};

/// One documented command line: its words after `plughost`, and the output its comment
/// promises.
#[derive(Debug)]
struct Documented {
    file: String,
    line: String,
    args: Vec<String>,
    expected: String,
}

/// Splits a shell command line as `sh` would for the quoting used in the docs (single and
/// double quotes, backslash escapes outside them), up to an unquoted `#` starting a word: the
/// comment, returned trimmed.
fn shell_words(line: &str) -> (Vec<String>, Option<String>) {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '#' if word.is_none() => return (words, Some(line[at + 1..].trim().to_owned())),
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let word = word.get_or_insert_with(String::new);
                for (_, c) in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                let word = word.get_or_insert_with(String::new);
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next().map(|(_, c)| c)),
                        c => word.push(c),
                    }
                }
            }
            '\\' => word
                .get_or_insert_with(String::new)
                .extend(chars.next().map(|(_, c)| c)),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    (words, None)
}

/// Every `plughost exec` line in the crate docs (`//!`) of `plugins/*/src/lib.rs`.
fn documented_exec_lines() -> Vec<Documented> {
    let plugins = xtask::workspace_root().join("plugins");
    let mut found = Vec::new();
    for package in xtask::packages_under("plugins").unwrap() {
        let file = plugins.join(&package).join("src/lib.rs");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let Some(doc) = line.trim_start().strip_prefix("//!") else {
                continue;
            };
            let doc = doc.trim();
            if !doc.starts_with("plughost exec ") {
                continue;
            }
            let (mut args, comment) = shell_words(doc);
            args.remove(0);
            found.push(Documented {
                file: format!("plugins/{package}/src/lib.rs"),
                line: doc.to_owned(),
                args,
                expected: comment.unwrap_or_else(|| panic!("{doc:?} has no `# output` comment")),
            });
        }
    }
    found
}

#[test]
fn shell_words_reads_the_docs_quoting() {
    let (words, comment) =
        shell_words(r#"plughost exec filter '[1, 5]' --init "{\"a\":1}" x\ y   # [5] # z"#);
    assert_eq!(
        words,
        [
            "plughost",
            "exec",
            "filter",
            "[1, 5]",
            "--init",
            r#"{"a":1}"#,
            "x y"
        ]
    );
    assert_eq!(comment.as_deref(), Some("[5] # z"));
    assert_eq!(shell_words("a#b").0, ["a#b"]);
}

#[test]
fn the_exec_lines_in_the_example_plugins_docs_print_what_they_say() {
    let documented = documented_exec_lines();
    for package in ["transform", "filter"] {
        assert!(
            documented
                .iter()
                .any(|d| d.file == format!("plugins/{package}/src/lib.rs")),
            "plugins/{package}/src/lib.rs documents no `plughost exec` line: {documented:#?}"
        );
    }
    // Where no plughost.toml is: the line alone decides.
    let elsewhere = tempfile::tempdir().unwrap();
    for doc in &documented {
        let dir = PluginDir::new();
        for package in xtask::packages_under("plugins").unwrap() {
            dir.add(&package);
        }
        let args: Vec<&str> = doc.args.iter().map(String::as_str).collect();
        let out = dir
            .command(&args)
            .current_dir(elsewhere.path())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: `{}` failed: {}",
            doc.file,
            doc.line,
            stderr(&out)
        );
        assert_eq!(
            stdout(&out).trim_end(),
            doc.expected,
            "{}: `{}`",
            doc.file,
            doc.line
        );
    }
}

/// `cargo xtask build-plugins` as a user runs it (into a folder of the test's own): cargo's
/// progress is shown, compiling xtask itself included (on a first build that alone takes about
/// a minute), the build says what it builds, and each installed library is named.
#[test]
fn cargo_xtask_build_plugins_shows_its_progress() {
    let dest = tempfile::tempdir().unwrap();
    let root = xtask::workspace_root();
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["xtask", "build-plugins", "--dest"])
        .arg(dest.path())
        .output()
        .unwrap();
    let (said, printed) = (stderr(&out), stdout(&out));
    assert!(out.status.success(), "{said}");
    // Cargo's own lines for xtask, which `--quiet` in the alias hid.
    assert!(said.contains("Running `"), "{said}");
    let packages = xtask::packages_under("plugins").unwrap();
    assert!(
        said.contains(&format!(
            "building {} plugin crate(s) ({}) in debug mode",
            packages.len(),
            packages.join(", ")
        )),
        "{said}"
    );
    // Cargo's lines for the plugins' build, passed through.
    assert!(said.matches("Finished `").count() >= 2, "{said}");
    for package in &packages {
        let library = library_file(package);
        assert!(
            printed.contains(&format!(
                "installed {package} -> {}",
                dest.path().join(&library).display()
            )),
            "{printed}"
        );
        assert!(dest.path().join(&library).is_file());
    }
    assert!(
        said.contains(&format!(
            "{} plugin libraries installed in {} (",
            packages.len(),
            dest.path().display()
        )),
        "{said}"
    );
}

/// The file name cargo gives the library of `package`.
fn library_file(package: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        package.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}
