//! `plughost new NAME [--path DIR] [--api SPEC]`: write a plugin crate that builds and loads as
//! it is: `Cargo.toml`, `src/lib.rs` (a greeting plugin with a typed configuration, its schema,
//! a `validate_config` and unit tests), `README.md` and `.gitignore`.
//!
//! NAME is the crate's name; the plugin's name (`Plugin::NAME`, what `plughost exec` takes) is
//! the library's, NAME with `-` as `_`, so that `libNAME.so` holds plugin NAME.
//!
//! Slightly longer than the project's 600 lines on purpose: a third of it is the text of the
//! crate it writes, kept beside the code that fills it in.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};

/// The contract crate's package name; plugins import it as `plugin_api`.
const API_PACKAGE: &str = "plughost-plugin-api";

/// The plugin-api source this binary was built from, if it is still there.
const API_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../plugin-api");

pub(crate) fn new(name: &str, path: Option<&Path>, api: Option<&str>) -> anyhow::Result<ExitCode> {
    check_name(name)?;
    let plugin = name.replace('-', "_");
    let dir = path.map_or_else(|| Path::new(".").join(name), Path::to_owned);
    let (api, why) = match api {
        Some(spec) => (Api::parse(spec)?, "from --api".to_owned()),
        None => Api::default_for_this_host(),
    };
    let warning = api.warning();

    prepare(&dir)?;
    let files = [
        ("src/lib.rs", lib_rs(&plugin)),
        ("README.md", readme(name, &plugin)),
        (".gitignore", "/target\n".to_owned()),
        ("Cargo.toml", cargo_toml(name, &api, false)),
    ];
    for (file, text) in files {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    // A workspace above that lists the folder makes the crate its member; anywhere else the
    // crate is a workspace of its own, or cargo would refuse to build it.
    let enclosing = enclosing_workspace(&dir);
    let member_of = enclosing.as_ref().and_then(|_| claiming_workspace(&dir));
    if member_of.is_none() {
        let manifest = dir.join("Cargo.toml");
        std::fs::write(&manifest, cargo_toml(name, &api, true))
            .with_context(|| format!("cannot write {}", manifest.display()))?;
    }

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Created plugin {plugin} (crate {name}) in {}",
        dir.display()
    )?;
    writeln!(out, "plugin-api: {} ({why})", api.dependency())?;
    writeln!(
        out,
        "  to change it: edit [dependencies] in Cargo.toml, or run `plughost new` again with \
         --api path:DIR, --api git:URL[#TAG] or --api version:X"
    )?;
    if let Some(warning) = warning {
        writeln!(out, "warning: {warning}")?;
    }
    let target = match (&member_of, &enclosing) {
        (Some(root), _) => {
            writeln!(
                out,
                "note: the crate is a member of the Cargo workspace of {}, whose members \
                 include its folder; it builds into that workspace's target folder",
                root.display()
            )?;
            root.join("target").join("release").display().to_string()
        }
        (None, Some(root)) => {
            writeln!(
                out,
                "note: the crate is a workspace of its own (its Cargo.toml says [workspace]), \
                 although it is inside the Cargo workspace of {}; to make it a member there, \
                 delete that table and add the folder to the workspace's members",
                root.display()
            )?;
            "target/release".to_owned()
        }
        (None, None) => "target/release".to_owned(),
    };
    writeln!(out, "Next:")?;
    writeln!(out, "  cd {}", shell_word(&dir.display().to_string()))?;
    writeln!(out, "  cargo test")?;
    writeln!(out, "  cargo build --release")?;
    writeln!(
        out,
        "  plughost exec {plugin} world --plugins-dir {}   # Hello, world!",
        shell_word(&target)
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses names that would not make a valid crate, library and plugin name. Lowercase only:
/// cargo warns about other case, and file systems disagree about it.
fn check_name(name: &str) -> anyhow::Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > 64 {
        Some("it is longer than 64 characters".to_owned())
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it must start with a lowercase ASCII letter".to_owned())
    } else if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'))
    {
        Some(format!(
            "{c:?} is not allowed: use lowercase ASCII letters, digits, `-` and `_`"
        ))
    } else {
        let ident = name.replace('-', "_");
        if KEYWORDS.split_whitespace().any(|k| k == ident) {
            Some(format!("`{ident}` is a Rust keyword"))
        } else if RESERVED.split_whitespace().any(|r| r == ident) {
            Some(format!(
                "`{ident}` is reserved (a standard or dependency crate, a cargo build folder, a \
                 Windows device, or the host's own event source)"
            ))
        } else {
            None
        }
    };
    match reason {
        Some(reason) => bail!(
            "{name:?} cannot name a plugin crate: {reason} (the name is the crate's; the \
             plugin's is the same with `-` as `_`)"
        ),
        None => Ok(()),
    }
}

/// Strict and reserved keywords of Rust 2021 and 2024 (as crate names, with `-` as `_`).
const KEYWORDS: &str = "abstract as async await become box break const continue crate do dyn \
    else enum extern false final fn for gen if impl in let loop macro match mod move mut \
    override priv pub ref return self static struct super trait true try type typeof unsafe \
    unsized use virtual where while yield";

/// Names cargo refuses or that would clash with the generated crate's dependencies or the host.
const RESERVED: &str = "std core alloc proc_macro test deps examples build incremental con prn \
    aux nul com1 com2 com3 com4 com5 com6 com7 com8 com9 lpt1 lpt2 lpt3 lpt4 lpt5 lpt6 lpt7 \
    lpt8 lpt9 serde serde_json serde_derive plugin_api plughost_plugin_api abi_stable plughost";

/// Where the generated crate gets the contract crate.
#[derive(Debug)]
enum Api {
    Path(PathBuf),
    Git { url: String, tag: Option<String> },
    Version(String),
}

impl Api {
    fn parse(spec: &str) -> anyhow::Result<Api> {
        const FORMS: &str = "path:DIR, git:URL[#TAG] or version:X";
        let Some((kind, value)) = spec.split_once(':') else {
            bail!("--api {spec:?}: expected {FORMS}");
        };
        if value.is_empty() {
            bail!("--api {spec:?}: nothing after `{kind}:`");
        }
        Ok(match kind {
            "path" => {
                let dir = std::fs::canonicalize(value)
                    .with_context(|| format!("--api {spec:?}: cannot find {value}"))?;
                if !dir.join("Cargo.toml").is_file() {
                    bail!("--api {spec:?}: no Cargo.toml in {}", dir.display());
                }
                Api::Path(dir)
            }
            "git" => match value.split_once('#') {
                Some((_, "")) | Some(("", _)) => bail!("--api {spec:?}: expected git:URL#TAG"),
                Some((url, tag)) => Api::Git {
                    url: url.to_owned(),
                    tag: Some(tag.to_owned()),
                },
                None => Api::Git {
                    url: value.to_owned(),
                    tag: None,
                },
            },
            "version" => Api::Version(value.to_owned()),
            _ => bail!("--api {spec:?}: expected {FORMS}"),
        })
    }

    /// The source this binary was built from if it is still there, else the registry version
    /// it speaks, with why.
    fn default_for_this_host() -> (Api, String) {
        match std::fs::canonicalize(API_SOURCE) {
            Ok(dir) if dir.join("Cargo.toml").is_file() => (
                Api::Path(dir),
                "the source this plughost was built from".to_owned(),
            ),
            _ => (
                Api::Version(format!("={}", plughost::api_version())),
                format!(
                    "from the registry: the plugin-api this plughost speaks, exactly, since a \
                     host refuses plugins built against a newer one; its source ({API_SOURCE}) \
                     is not on this machine"
                ),
            ),
        }
    }

    /// The inline table of the dependency, after `plugin-api = `.
    fn dependency(&self) -> String {
        let source = match self {
            Api::Path(dir) => format!("path = {}", toml_string(&dir.to_string_lossy())),
            Api::Git { url, tag: None } => format!("git = {}", toml_string(url)),
            Api::Git {
                url,
                tag: Some(tag),
            } => {
                format!("git = {}, tag = {}", toml_string(url), toml_string(tag))
            }
            Api::Version(version) => format!("version = {}", toml_string(version)),
        };
        format!("{{ package = {}, {source} }}", toml_string(API_PACKAGE))
    }

    /// What to know about a path source: a package of another name, or a plugin-api version
    /// this host would refuse plugins built against.
    fn warning(&self) -> Option<String> {
        let Api::Path(dir) = self else { return None };
        if dir.to_str().is_none() {
            return Some(format!(
                "{} is not UTF-8: Cargo.toml names it approximately",
                dir.display()
            ));
        }
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        let name = package_field(&manifest, "name");
        if name.as_deref() != Some(API_PACKAGE) {
            return Some(format!(
                "the package in {} is {}, not {API_PACKAGE}: the crate will not build against it",
                dir.display(),
                name.as_deref().unwrap_or("unnamed")
            ));
        }
        let host = plughost::api_version();
        let found = parse_as(&host, &package_field(&manifest, "version")?)?;
        let accepted = found.major == host.major
            && found <= host
            && (host.major > 0 || found.minor == host.minor);
        (!accepted).then(|| {
            format!(
                "{} is plugin-api {found}, and this plughost speaks {host}: it will refuse the \
                 plugin; rebuild plughost from that source (cargo install --path host/cli)",
                dir.display()
            )
        })
    }
}

/// `text` parsed as the type of `_like`.
fn parse_as<T: std::str::FromStr>(_like: &T, text: &str) -> Option<T> {
    text.parse().ok()
}

/// The string value of `key` in the `[package]` table of a manifest, read line by line: enough
/// for the contract crate's own manifest.
fn package_field(manifest: &str, key: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == key {
                    return Some(v.trim().trim_matches('"').to_owned());
                }
            }
        }
    }
    None
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{:04X}", u32::from(c));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// `text` as one shell word.
fn shell_word(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./+,:@%".contains(c))
    {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Makes `dir` exist and be empty, refusing a file or a folder with anything in it.
fn prepare(dir: &Path) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty; choose another --path or empty it",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
        }
        Err(_) if dir.exists() && !dir.is_dir() => {
            bail!("{} already exists and is not a folder", dir.display())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", dir.display())),
    }
}

/// The root of the Cargo workspace that makes the crate in `dir` (whose manifest has no
/// `[workspace]` table) its member, as cargo says. `None` when cargo refuses it (a workspace
/// above that does not list it) or cannot be run.
fn claiming_workspace(dir: &Path) -> Option<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = std::fs::canonicalize(dir.join("Cargo.toml")).ok()?;
    let output = std::process::Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let root_manifest = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim_end());
    let root_manifest = std::fs::canonicalize(root_manifest).ok()?;
    (root_manifest != manifest).then(|| root_manifest.parent().map(Path::to_owned))?
}

/// The root of a Cargo workspace above `dir`, if any.
fn enclosing_workspace(dir: &Path) -> Option<PathBuf> {
    let dir = std::fs::canonicalize(dir).ok()?;
    dir.ancestors().skip(1).find_map(|folder| {
        let manifest = std::fs::read_to_string(folder.join("Cargo.toml")).ok()?;
        manifest
            .lines()
            .any(|line| line.trim_start().starts_with("[workspace]"))
            .then(|| folder.to_owned())
    })
}

/// The Rust type of plugin `plugin`: UpperCamelCase, moved aside from the names `lib.rs` uses.
fn type_name(plugin: &str) -> String {
    let mut name: String = plugin
        .split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect();
    const TAKEN: &[&str] = &[
        "Config",
        "ConfigField",
        "Context",
        "Debug",
        "Default",
        "Deserialize",
        "Err",
        "None",
        "Ok",
        "Option",
        "Output",
        "Plugin",
        "PluginError",
        "Result",
        "Self",
        "Some",
        "String",
        "Vec",
    ];
    if TAKEN.contains(&name.as_str()) {
        name.push_str("Plugin");
    }
    name
}

fn cargo_toml(name: &str, api: &Api, standalone: bool) -> String {
    let workspace = if standalone {
        "
# This crate is a workspace of its own, so that it builds wherever it is. To make it a member
# of an enclosing workspace instead, delete this table and add the folder to that workspace's
# members.
[workspace]
"
    } else {
        "
# A member of the enclosing Cargo workspace, whose members include this folder. To build it on
# its own instead, add an empty [workspace] table here and exclude the folder there.
"
    };
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# A shared library with the C ABI entry points plughost loads.
crate-type = ["cdylib"]
{workspace}
[dependencies]
# The contract with the host, imported as `plugin_api`. A host loads plugins built against its
# own plugin-api version or an older one of the same major version.
plugin-api = {api}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"
"#,
        api = api.dependency()
    )
}

fn readme(name: &str, plugin: &str) -> String {
    let library = format!(
        "{}{plugin}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    format!(
        r#"# {name}

A plughost plugin named `{plugin}`: it answers `Hello, <input>!`.

```sh
cargo test
cargo build --release
plughost exec {plugin} world --plugins-dir target/release                             # Hello, world!
plughost exec {plugin} world --plugins-dir target/release --init '{{"greeting":"Hi"}}'  # Hi, world!
```

(`target` is the enclosing workspace's if this crate is a member of one.)

To install it, copy the library into the host's plugins folder (`host.plugins_dir` of its
`plughost.toml`, `plugins` by default):

```sh
cp target/release/{library} /path/to/plugins/
```

A running `plughost run` loads it at once, and reloads it when a new build is copied over it.
Configure it in that `plughost.toml`:

```toml
[plugins.{plugin}.config]
greeting = "Hi"
```

Start changing it in `src/lib.rs`.
"#
    )
}

fn lib_rs(plugin: &str) -> String {
    LIB_RS
        .replace("__PLUGIN__", plugin)
        .replace("__TYPE__", &type_name(plugin))
}

const LIB_RS: &str = r##"//! `__PLUGIN__`: a plughost plugin that greets whoever its input names.
//!
//! ```text
//! cargo build --release
//! plughost exec __PLUGIN__ world --plugins-dir target/release                           # Hello, world!
//! plughost exec __PLUGIN__ world --plugins-dir target/release --init '{"greeting":"Hi"}'  # Hi, world!
//! ```
//!
//! To make it yours: put your settings in [`Config`] and describe each in `CONFIG_SCHEMA`
//! (the host lists and checks configurations against it), keep what `init` makes of them in
//! [`__TYPE__`], and do the work in `execute`. The `Plugin` trait has defaults for what is not
//! written here (`shutdown`, `health`, events, state kept across hot reloads, calls to other
//! plugins): see the crate docs of `plugin_api` (`cargo doc --open`).

use plugin_api::{export_plugin, ConfigField, Context, Output, Plugin, PluginError};
use serde::Deserialize;

/// The settings the host hands to Init: `--init '{"greeting":"Hi"}'` on `plughost exec`, or the
/// `[plugins.__PLUGIN__.config]` table of its `plughost.toml`. Unknown keys are refused, so a
/// misspelt key is an error instead of being ignored. Keep it in step with `CONFIG_SCHEMA`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The word to greet with.
    #[serde(default = "default_greeting")]
    pub greeting: String,
}

fn default_greeting() -> String {
    "Hello".to_owned()
}

/// The plugin: what `init` kept of its configuration. `execute` takes `&self` and may run on
/// several threads at once: use atomics or a `Mutex` for anything it changes.
#[derive(Debug, Default)]
pub struct __TYPE__ {
    greeting: String,
}

impl Plugin for __TYPE__ {
    type Config = Config;
    /// The name the host knows the plugin by (`plughost exec __PLUGIN__ ...`).
    const NAME: &'static str = "__PLUGIN__";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Greets whoever its input names";
    /// What it needs beyond computing (`fs:read:PATH`, `net:connect:HOST:PORT`, `exec`...):
    /// the operator grants each in plughost.toml, or the host refuses to start it.
    const CAPABILITIES: &'static [&'static str] = &[];
    const TAGS: &'static [&'static str] = &["text"];
    /// One entry per key of `Config`, with its default as JSON.
    const CONFIG_SCHEMA: &'static [ConfigField] = &[ConfigField::string("greeting")
        .default_json(r#""Hello""#)
        .describe("The word to greet with")];

    /// Refuses a configuration before any instance exists: the host calls this from
    /// `plughost config check` and before every `init`.
    fn validate_config(config: &Config) -> Result<(), PluginError> {
        if config.greeting.trim().is_empty() {
            return Err(PluginError::new("greeting must not be empty"));
        }
        Ok(())
    }

    fn init(&mut self, config: Config) -> Result<(), PluginError> {
        self.greeting = config.greeting;
        Ok(())
    }

    /// One call: `input` is the caller's bytes, the answer goes to `output`. An error, or a
    /// panic (caught by `export_plugin!`), reaches the caller as the call's error.
    fn execute(
        &self,
        _ctx: &Context<'_>,
        input: &[u8],
        output: &mut Output<'_>,
    ) -> Result<(), PluginError> {
        let name = std::str::from_utf8(input)
            .map_err(|e| PluginError::new(format!("input is not UTF-8 text: {e}")))?;
        output.write(format!("{}, {name}!", self.greeting).as_bytes());
        Ok(())
    }
}

// The C ABI entry points the host looks for. Exactly one per library.
export_plugin!(__TYPE__);

#[cfg(test)]
mod tests {
    use super::*;
    // Calls the plugin through the entry points `export_plugin!` writes, as a host does: the
    // configuration checked against `CONFIG_SCHEMA` first, errors in the host's words.
    use plugin_api::testing::Harness;

    #[test]
    fn greets_with_the_default_greeting_or_the_configured_one() {
        let plugin = Harness::<__TYPE__>::init("{}").unwrap();
        assert_eq!(plugin.execute_str("world").unwrap(), "Hello, world!");
        plugin.shutdown().unwrap();

        let plugin = Harness::<__TYPE__>::init(r#"{"greeting": "Hi"}"#).unwrap();
        assert_eq!(plugin.execute_str("world").unwrap(), "Hi, world!");
    }

    #[test]
    fn refuses_an_empty_greeting_unknown_keys_and_bytes_that_are_not_text() {
        let error = Harness::<__TYPE__>::init(r#"{"greeting": " "}"#).unwrap_err();
        assert!(
            error.message().contains("greeting must not be empty"),
            "{error}"
        );

        let error = Harness::<__TYPE__>::init(r#"{"greting": "Hi"}"#).unwrap_err();
        assert!(
            error.message().contains("unknown field `greting`"),
            "{error}"
        );

        let plugin = Harness::<__TYPE__>::init("{}").unwrap();
        let error = plugin.execute(b"\xff").unwrap_err();
        assert!(error.message().contains("not UTF-8"), "{error}");
    }
}
"##;
