//! Reading `plughost.toml`: places in messages, values from the environment, damaged text.

use super::*;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::LogFormat;

fn parse(text: &str) -> Result<HostConfig, String> {
    HostConfig::parse(Path::new("plughost.toml"), text).map_err(|e| e.to_string())
}

#[test]
fn defaults_need_no_file() {
    let config = parse("").unwrap();
    assert_eq!(config.host, HostSettings::default());
    assert!(config.plugin("anything").enabled);
}

#[test]
fn reads_every_setting() {
    let config = parse(
        r#"
[host]
plugins_dir = "libs"
watch = false
debounce = "250ms"
call_timeout = "2s"
max_plugins = 3
log_format = "json"

[plugins.transform]
enabled = false
priority = 7
timeout = "150ms"
config = { mode = "lower", nested = { list = [1, 2] } }
"#,
    )
    .unwrap();
    assert_eq!(config.host.plugins_dir, PathBuf::from("libs"));
    assert!(!config.host.watch);
    assert_eq!(config.host.debounce, Duration::from_millis(250));
    assert_eq!(config.host.call_timeout, Some(Duration::from_secs(2)));
    assert_eq!(config.host.log_format, LogFormat::Json);
    let transform = config.plugin("transform");
    assert!(!transform.enabled);
    assert_eq!(transform.priority, 7);
    assert_eq!(transform.timeout, Some(Duration::from_millis(150)));
    assert_eq!(
        serde_json::Value::Object(transform.config),
        serde_json::json!({"mode": "lower", "nested": {"list": [1, 2]}})
    );
}

#[test]
fn unknown_key_points_at_it() {
    let error = parse("[host]\nwatch = true\n\n[plugins.counter]\nenabeld = false\n").unwrap_err();
    assert!(error.starts_with("plughost.toml:5:1: "), "{error}");
    assert!(error.contains("unknown field `enabeld`"), "{error}");
}

#[test]
fn wrong_type_points_at_the_value() {
    let error = parse("[host]\nmax_plugins = \"many\"\n").unwrap_err();
    assert!(
        error.starts_with("plughost.toml:2:15: host.max_plugins: "),
        "{error}"
    );
    assert!(error.contains("invalid type"), "{error}");
}

#[test]
fn syntax_error_points_at_it() {
    let error = parse("[host]\nwatch = \n").unwrap_err();
    assert!(error.starts_with("plughost.toml:2:"), "{error}");
}

/// Parses `text` with `vars` as the whole environment.
fn parse_with_env(text: &str, vars: &[(&str, &str)]) -> Result<HostConfig, String> {
    let lookup = |name: &str| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    };
    read(Path::new("plughost.toml"), text, Some(&lookup)).map_err(|e| e.to_string())
}

#[test]
fn a_wrong_value_from_the_environment_is_named_not_quoted() {
    let secret = [
        ("N", "s3cret"),
        ("FMT", "s3cret"),
        ("D", "s3cret"),
        ("T", "s3cret"),
    ];
    for (text, expected) in [
        (
            "[host]\nmax_plugins = \"${N}\"\n",
            "plughost.toml:2:15: host.max_plugins: invalid type: string (value from ${N}), \
             expected usize",
        ),
        (
            "[host]\nlog_format = \"${FMT}\"\n",
            "plughost.toml:2:14: host.log_format: invalid value: string (value from \
             ${FMT}), expected `human` or `json`",
        ),
        (
            "[host]\ndebounce = \"${D}\"\n",
            "plughost.toml:2:12: host.debounce: invalid value: string (value from ${D}), \
             expected a duration",
        ),
        (
            "[plugins.a]\ntimeout = \"${T:-1s}${D}\"\n",
            "plughost.toml:2:11: plugins.a.timeout: invalid value: string (value from \
             ${T}, ${D}), expected a duration",
        ),
    ] {
        let error = parse_with_env(text, &secret).unwrap_err();
        assert_eq!(error, expected);
    }
    // A message in no standard shape may quote the value anywhere: none of it is kept.
    assert_eq!(
        without_value(r#"unknown unit "s3cret", expected ms"#, &["D".into()]),
        "invalid value: string (value from ${D})"
    );
    // The value from the environment reaches the settings; it is known to be from there.
    let config =
        parse_with_env("[plugins.a.config]\ntoken = \"${T}\"\n", &[("T", "s3cret")]).unwrap();
    assert_eq!(config.plugin("a").config["token"], "s3cret");
    assert_eq!(
        config.env_variables(&["plugins", "a", "config", "token"]),
        Some(&["T".to_owned()][..])
    );
    assert_eq!(config.env_variables(&["plugins", "a"]), None);
}

#[test]
fn an_unclosed_variable_names_the_key_and_place() {
    let error = parse_with_env("[plugins.s.config]\npath = \"${HOME/x\"\n", &[]).unwrap_err();
    assert_eq!(
        error,
        "plughost.toml:2:8: plugins.s.config.path: a `${` is not closed (write ${VAR} or \
         ${VAR:-default}, or $${ for a literal `${`)"
    );
    // Also when the environment is not read.
    let error = HostConfig::check_structure(
        Path::new("plughost.toml"),
        "[host]\nplugins_dir = \"${X\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("plughost.toml:2:15: host.plugins_dir: a `${` is not closed"),
        "{error}"
    );
}

#[test]
fn structure_is_checked_without_the_environment() {
    let check = |text: &str| {
        HostConfig::check_structure(Path::new("plughost.toml"), text).map_err(|e| e.to_string())
    };
    // Values using variables are the host's business, set or not here.
    check(
        "[host]\ndebounce = \"${PLUGHOST_UNIT_TEST_UNSET}\"\nmax_plugins = 3\n\
         [plugins.a]\nenabled = false\ntimeout = \"${PLUGHOST_UNIT_TEST_UNSET:-1s}\"\n\
         [plugins.a.config]\nlist = [\"${PLUGHOST_UNIT_TEST_UNSET}\"]\n",
    )
    .unwrap();
    // Everything else is checked as usual.
    let error = check("[host]\nmax_plugins = \"many\"\n").unwrap_err();
    assert!(
        error.starts_with("plughost.toml:2:15: host.max_plugins: invalid type"),
        "{error}"
    );
    let error = check("[plugins.a]\nenabeld = false\n").unwrap_err();
    assert!(error.contains("unknown field `enabeld`"), "{error}");
    let error = check("[plugins.a]\nenabled = \"$${literal}\"\n").unwrap_err();
    assert!(
        error.contains(r#"invalid type: string "${literal}""#),
        "{error}"
    );
}

/// Where `offset` is in `text`, as `line:column`.
fn place(text: &str, offset: usize) -> String {
    let at = Source::new(text).locate(Path::new("f"), offset);
    format!("{}:{}", at.line, at.column)
}

#[test]
fn locate_finds_line_and_column() {
    let text = "[host]\nwatch = true\n\n[plugins.a]\nenabled = false";
    // The first line.
    assert_eq!(place(text, 0), "1:1");
    assert_eq!(place(text, 3), "1:4");
    // Its newline is still on it; the next line starts after it.
    assert_eq!(place(text, 6), "1:7");
    assert_eq!(place(text, 7), "2:1");
    // A later line, after an empty one.
    assert_eq!(place(text, 20), "3:1");
    assert_eq!(place(text, 21), "4:1");
    assert_eq!(place(text, 30), "4:10");
    assert_eq!(place(text, 36), "5:4");
}

#[test]
fn locate_counts_characters_not_bytes() {
    // `é` is 2 bytes, `€` 3, `🦀` 4: the value starts at byte 14 of the second line.
    let text = "# x\n\"é€🦀\" = \"v\"\n";
    let value = text.find("\"v").unwrap();
    assert_eq!(value, 4 + 14);
    assert_eq!(place(text, value), "2:9");
    // Each character is one column, wherever it starts.
    assert_eq!(place(text, 5), "2:2");
    assert_eq!(place(text, 7), "2:3");
    assert_eq!(place(text, 10), "2:4");
}

#[test]
fn locate_at_and_past_the_end() {
    // After a final newline: the empty line that follows it.
    assert_eq!(place("a = 1\n", 6), "2:1");
    assert_eq!(place("a = 1\né", 8), "2:2");
    // Past the end is the end.
    assert_eq!(place("a = 1\né", 100), "2:2");
    assert_eq!(place("", 0), "1:1");
    assert_eq!(place("", 5), "1:1");
}

#[test]
fn locate_agrees_with_a_scan_from_the_start() {
    // What every message said before lines were indexed: counted from the start each time.
    fn scanned(text: &str, offset: usize) -> String {
        let before = &text[..offset.min(text.len())];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        format!("{line}:{}", before[line_start..].chars().count() + 1)
    }
    let text = "\n[host]\r\nwatch = true\n\n\n[plugins.\"ü\"]\n  x = \"日本\" # ✓\n\n";
    for offset in (0..=text.len() + 2).filter(|&o| o > text.len() || text.is_char_boundary(o)) {
        assert_eq!(
            place(text, offset),
            scanned(text, offset),
            "offset {offset}"
        );
    }
}

#[test]
fn a_config_locates_its_keys() {
    let config =
        parse("[host]\nwatch = true\n\n[plugins.\"é\"]\n[plugins.\"é\".config]\nk = 1\n").unwrap();
    let at = |keys: &[&str]| config.locate(keys).unwrap().to_string();
    assert_eq!(at(&["host", "watch"]), "plughost.toml:2:1");
    assert_eq!(at(&["plugins", "é"]), "plughost.toml:4:10");
    // After the 2-byte `é`: column 14, byte 15 of the line.
    assert_eq!(at(&["plugins", "é", "config"]), "plughost.toml:5:14");
    assert_eq!(at(&["plugins", "é", "config", "k"]), "plughost.toml:6:1");
    // Not in the file: the nearest enclosing key that is; else the file.
    assert_eq!(
        at(&["plugins", "é", "config", "absent"]),
        "plughost.toml:5:14"
    );
    assert_eq!(at(&["nothing"]), "plughost.toml");
    assert_eq!(HostConfig::default().locate(&["host"]), None);
}

/// Whatever the text, reading it gives settings or a located error, never a panic.
#[test]
fn damaged_settings_never_make_the_parser_panic() {
    let original = "# settings\n[host]\nplugins_dir = \"plugins\"\ndebounce = \"100ms\"\n\
                    max_plugins = 3\n\n[plugins.storage]\npriority = 1\n\n\
                    [plugins.storage.config]\nnamespace = \"${NS:-main}\"\nlist = [1, 2, 3]\n\
                    nested = { a = { b = \"é\" } }\n";
    let mut state: u64 = 0x0dd0_5eed_0000_0001;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"[]{}=\".,$:-#\\\n ab1_\xc3\xa9";
    for round in 0..2000 {
        let mut bytes = original.as_bytes().to_vec();
        for _ in 0..1 + round % 8 {
            let at = (next() as usize) % bytes.len();
            bytes[at] = alphabet[(next() as usize) % alphabet.len()];
        }
        let text = String::from_utf8_lossy(&bytes);
        let outcome = std::panic::catch_unwind(|| {
            let _ = HostConfig::parse(Path::new("plughost.toml"), &text);
            let _ = HostConfig::check_structure(Path::new("plughost.toml"), &text);
        });
        assert!(outcome.is_ok(), "round {round}: reading {text:?} panicked");
    }
}

#[test]
fn a_probe_program_path_is_taken_from_the_files_folder() {
    let read = |text: &str| {
        HostConfig::parse(Path::new("/etc/plughost/plughost.toml"), text)
            .unwrap()
            .host
            .probe
    };
    use crate::config::ProbeSetting;
    assert_eq!(read(""), ProbeSetting::Auto);
    assert_eq!(read("[host]\nprobe = \"off\"\n"), ProbeSetting::Off);
    assert_eq!(
        read("[host]\nprobe = \"bin/plughost\"\n"),
        ProbeSetting::Program(PathBuf::from("/etc/plughost/bin/plughost"))
    );
    assert_eq!(
        read("[host]\nprobe = \"/usr/bin/plughost\"\n"),
        ProbeSetting::Program(PathBuf::from("/usr/bin/plughost"))
    );
    assert_eq!(
        read("[host]\nprobe = \"plughost\"\n"),
        ProbeSetting::Program(PathBuf::from("plughost"))
    );
}

#[test]
fn settings_that_cannot_work_are_refused_at_their_place() {
    for (text, expected) in [
        (
            "[host]\ninit_timeout = \"0s\"\n",
            "plughost.toml:2:16: host.init_timeout: must be longer than 0",
        ),
        (
            "[host]\nmax_pinned = 0\n",
            "plughost.toml:2:14: host.max_pinned: must be at least 1",
        ),
    ] {
        assert_eq!(parse(text).unwrap_err(), expected);
    }
}

#[test]
fn event_settings_are_read_and_checked_at_their_place() {
    let config = parse(
        "[host]\nmax_event_size = \"64KiB\"\n[plugins.audit]\nevent_queue = 16\nevent_policy = \
         \"drop_oldest\"\nevent_block = \"50ms\"\nevent_timeout = \"2s\"\n",
    )
    .unwrap();
    assert_eq!(config.host.max_event_size.0, 64 * 1024);
    let audit = config.plugin("audit");
    assert_eq!(audit.event_queue, 16);
    assert_eq!(audit.event_policy, crate::config::QueuePolicy::DropOldest);
    assert_eq!(audit.event_block, Duration::from_millis(50));
    assert_eq!(audit.event_timeout, Duration::from_secs(2));
    for (text, expected) in [
        (
            "[plugins.audit]\nevent_queue = 0\n",
            "plughost.toml:2:15: plugins.audit.event_queue: must be at least 1",
        ),
        (
            "[plugins.audit]\nevent_timeout = \"0s\"\n",
            "plughost.toml:2:17: plugins.audit.event_timeout: must be longer than 0",
        ),
    ] {
        assert_eq!(parse(text).unwrap_err(), expected);
    }
    let error = parse("[plugins.audit]\nevent_policy = \"sometimes\"\n").unwrap_err();
    assert!(
        error.starts_with("plughost.toml:2:16:") && error.contains("drop_oldest"),
        "{error}"
    );
}

#[test]
fn the_admin_table_is_read_with_its_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.admin, crate::config::AdminSettings::default());
    assert_eq!(config.admin.listen, None);
    assert_eq!(config.admin.max_body.0, 1024 * 1024);
    assert_eq!(config.admin.rate_limit, 1000);
    assert!(!config.admin.write_config);

    let config = parse_with_env(
        "[admin]\nlisten = \"0.0.0.0:9477\"\ntoken = \"${ADMIN}\"\nmax_body = \"64KiB\"\n\
         rate_limit = 0\nwrite_config = true\n",
        &[("ADMIN", "s3cret")],
    )
    .unwrap();
    assert_eq!(config.admin.listen, Some("0.0.0.0:9477".parse().unwrap()));
    assert_eq!(config.admin.token.as_ref().unwrap().expose(), "s3cret");
    assert_eq!(config.admin.max_body.0, 64 * 1024);
    assert_eq!(config.admin.rate_limit, 0);
    assert!(config.admin.write_config);
    assert!(!format!("{config:?}").contains("s3cret"));
}

#[test]
fn admin_errors_point_at_their_place_and_never_show_the_token() {
    for (text, expected) in [
        (
            "[admin]\nlisen = \"127.0.0.1:1\"\n",
            "plughost.toml:2:1: admin.lisen: unknown field `lisen`",
        ),
        (
            "[admin]\nlisten = \"localhost\"\n",
            "plughost.toml:2:10: admin.listen: invalid socket address syntax",
        ),
        (
            "[admin]\nlisten = \"0.0.0.0:9477\"\n",
            "plughost.toml:2:10: admin.listen: the admin API would listen on 0.0.0.0:9477, \
             which is not a loopback address, without a token: anyone who can reach it could \
             change plugins; set [admin] token = \"${PLUGHOST_ADMIN_TOKEN}\" or listen on \
             127.0.0.1",
        ),
        (
            "[admin]\ntoken = \"\"\n",
            "plughost.toml:2:9: admin.token: must not be empty: an empty bearer token is no \
             protection (set it, or leave the key out)",
        ),
        (
            "[admin]\ntoken = 12345\n",
            "plughost.toml:2:9: admin.token: must be a string, such as \
             \"${PLUGHOST_ADMIN_TOKEN}\" (found a value of type integer, not shown)",
        ),
    ] {
        let error = parse(text).unwrap_err();
        assert!(error.starts_with(expected), "{error}\n  is not\n{expected}");
        assert!(!error.contains("12345"), "{error}");
    }
    // Loopback needs no token.
    assert!(parse("[admin]\nlisten = \"127.0.0.1:9477\"\n").is_ok());
    assert!(parse("[admin]\nlisten = \"[::1]:9477\"\n").is_ok());
    // An empty token from the environment names its variable.
    let error = parse_with_env("[admin]\ntoken = \"${ADMIN}\"\n", &[("ADMIN", "")]).unwrap_err();
    assert_eq!(
        error,
        "plughost.toml:2:9: admin.token (value from ${ADMIN}): must not be empty: an empty \
         bearer token is no protection (set it, or leave the key out)"
    );
    // A token of the wrong kind from the environment is not quoted either.
    let error = parse_with_env(
        "[admin]\nlisten = \"${ADDR}\"\n",
        &[("ADDR", "s3cret-not-an-address")],
    )
    .unwrap_err();
    assert!(!error.contains("s3cret"), "{error}");
    assert!(
        error.starts_with("plughost.toml:2:10: admin.listen:"),
        "{error}"
    );
}

#[test]
fn a_config_shown_masks_sensitive_keys_and_values_from_the_environment() {
    let config = parse_with_env(
        "[plugins.storage.config]\nnamespace = \"main\"\ntoken = \"literal\"\n\
         password = \"${PASS}\"\nnested = { key = \"${PASS}\" }\n",
        &[("PASS", "s3cret")],
    )
    .unwrap();
    let mut info: crate::PluginInfo = serde_json::from_value(serde_json::json!({
        "name": "storage", "version": "1.0.0", "api_version": "1.4.0", "description": "",
        "author": "", "license": "", "capabilities": [], "tags": [], "config_schema": [],
        "dependencies": []
    }))
    .unwrap();
    info.config_schema = vec![crate::ConfigKey {
        key: "token".into(),
        ty: "string",
        required: false,
        sensitive: true,
        default: None,
        description: String::new(),
    }];
    let shown = serde_json::Value::Object(config.masked_config("storage", Some(&info)));
    assert_eq!(
        shown,
        serde_json::json!({
            "namespace": "main", "token": "***", "password": "***", "nested": "***"
        })
    );
    let shown = serde_json::Value::Object(config.masked_config("storage", None));
    assert_eq!(
        shown,
        serde_json::json!({
            "namespace": "***", "token": "***", "password": "***", "nested": "***"
        }),
        "no schema known: any key may be a secret"
    );
}
