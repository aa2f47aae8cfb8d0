//! `GET /`: the status page. Plain HTML rendered here from the same [`PluginView`]s as
//! `GET /plugins`, so it reads without JavaScript; its small inline script (`page/page.js`)
//! keeps it live: it listens to `/events` and, on each host event and every 5 s, re-fetches
//! `GET /plugins` and redraws the table in place.
//!
//! Plugin descriptions, file names and refusal reasons come from plugin files, so they are
//! untrusted: everything interpolated goes through [`Text`], which escapes it (the script
//! sets text, never markup). A Content-Security-Policy allows only the page's own inline
//! script and style (by a nonce fresh for each page) and connections to this server.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::state;
use crate::view::{PluginList, PluginView, RefusalView};

const STYLE: &str = include_str!("page/page.css");
const SCRIPT: &str = include_str!("page/page.js");

/// Shown for a value that does not exist (no calls yet, never refused).
const NONE: &str = "–";

/// The status page: every plugin with its version, state, calls/s, error rate, p99, last
/// reload and last refusal; the refused files; the host's uptime.
#[utoipa::path(get, path = "/", tag = "host",
    responses((status = 200, description = "The status page (HTML, readable without JavaScript; \
        with it, updated live from /events)", content_type = "text/html")))]
pub(crate) async fn index(State(state): State<Arc<state::State>>) -> Response {
    let PluginList { plugins, refused } = PluginList::of(&state);
    let uptime = SystemTime::now()
        .duration_since(state.host().started_at())
        .unwrap_or_default()
        .as_secs();
    let nonce = nonce();
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
            // Always current: a cached page would show plugins that are gone.
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
        render(&plugins, &refused, uptime, &nonce),
    )
        .into_response()
}

/// The whole page.
fn render(plugins: &[PluginView], refused: &[RefusalView], uptime: u64, nonce: &str) -> String {
    let mut html = String::with_capacity(8192);
    let running = plugins.iter().filter(|p| p.state == "running").count();
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>plughost status</title>
<style nonce="{nonce}">{STYLE}</style>
</head>
<body>
<header>
<h1>plughost</h1>
<p id="host">up <span id="uptime">{uptime}</span> · <span id="count">{running} of {total} plugins running</span> · <span id="live" class="off">snapshot, reload the page to update</span></p>
</header>
<main>
<table id="plugins">
<thead><tr><th>Plugin</th><th>Version</th><th>State</th><th class="num">Calls/s</th><th class="num">Errors</th><th class="num">p99</th><th>Last reload</th><th>Last refusal</th></tr></thead>
<tbody>
"#,
        nonce = Text(nonce),
        uptime = Text(&duration(uptime)),
        total = plugins.len(),
    );
    for plugin in plugins {
        plugin_row(&mut html, plugin);
    }
    html.push_str("</tbody>\n</table>\n<h2>Refused files</h2>\n<ul id=\"refused\">\n");
    if refused.is_empty() {
        html.push_str("<li class=\"none\">none</li>\n");
    }
    for refusal in refused {
        let _ = writeln!(
            html,
            r#"<li><span class="bad">{}</span> <small>{}</small></li>"#,
            Text(&refusal.reason),
            Text(&when(&refusal.at)),
        );
    }
    let _ = write!(
        html,
        "</ul>\n</main>\n<script nonce=\"{}\">{SCRIPT}</script>\n</body>\n</html>\n",
        Text(nonce)
    );
    html
}

/// One plugin's row; `page.js` draws the same cells from the JSON of `GET /plugins`.
fn plugin_row(html: &mut String, plugin: &PluginView) {
    let calls = plugin.calls.as_ref();
    let _ = write!(
        html,
        r#"<tr data-plugin="{name}"><td data-field="name"><b>{name}</b>"#,
        name = Text(&plugin.name)
    );
    if let Some(description) = &plugin.description {
        let _ = write!(html, "<small>{}</small>", Text(description));
    }
    let _ = write!(
        html,
        r#"</td><td data-field="version">{}</td>"#,
        Text(plugin.version.as_deref().unwrap_or(NONE))
    );
    let _ = write!(
        html,
        r#"<td data-field="state"><span class="state {state}">{state}</span>"#,
        state = Text(&plugin.state)
    );
    if let Some(note) = state_note(plugin) {
        let _ = write!(html, "<small>{}</small>", Text(&note));
    }
    html.push_str("</td>");
    let (per_second, errors, p99) = match calls {
        Some(c) => (
            format!("{:.1}", c.per_second),
            format!("{:.1} %", c.error_rate * 100.0),
            if c.calls > 0 {
                milliseconds(c.p99_ms)
            } else {
                NONE.to_owned()
            },
        ),
        None => (NONE.to_owned(), NONE.to_owned(), NONE.to_owned()),
    };
    let _ = write!(
        html,
        r#"<td data-field="calls" class="num">{}</td><td data-field="errors" class="num">{}</td><td data-field="p99" class="num">{}</td>"#,
        Text(&per_second),
        Text(&errors),
        Text(&p99)
    );
    html.push_str(r#"<td data-field="reload">"#);
    match &plugin.loaded_at {
        Some(at) => {
            let _ = write!(
                html,
                "{}<small>{}</small>",
                Text(&when(at)),
                Text(&reloads(plugin.reloads))
            );
        }
        None => html.push_str(NONE),
    }
    html.push_str(r#"</td><td data-field="refusal">"#);
    match &plugin.last_refusal {
        Some(refusal) => {
            let _ = write!(
                html,
                r#"<span class="bad">{}</span><small>{}</small>"#,
                Text(&refusal.reason),
                Text(&when(&refusal.at))
            );
        }
        None => html.push_str(NONE),
    }
    html.push_str("</td></tr>\n");
}

/// What the state alone does not say: an open circuit, a failing health check.
fn state_note(plugin: &PluginView) -> Option<String> {
    let mut notes = Vec::new();
    if let Some(circuit) = plugin.circuit.as_deref().filter(|c| *c != "closed") {
        notes.push(format!("circuit {}", circuit.replace('_', "-")));
    }
    if let Some(health) = plugin
        .health
        .as_ref()
        .filter(|h| matches!(h.status, "degraded" | "unhealthy"))
    {
        notes.push(match &health.reason {
            Some(reason) => format!("{}: {reason}", health.status),
            None => health.status.to_owned(),
        });
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}

fn reloads(n: u64) -> String {
    if n == 1 {
        "1 reload".to_owned()
    } else {
        format!("{n} reloads")
    }
}

/// An RFC 3339 time, easier on the eye: `2026-01-02 10:11:12 UTC`.
fn when(rfc3339: &str) -> String {
    rfc3339.replacen('T', " ", 1).replace('Z', " UTC")
}

/// A call time with as many digits as matter.
fn milliseconds(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// An uptime: its two largest units (`3d 4h`, `5m 12s`).
fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// A nonce for one page's inline script and style: 128 bits of std's SipHash, keyed with
/// random keys from the OS, over a counter; unique per page, and not guessable from others.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    // The system's random source; without one there is no page worth serving safely.
    getrandom::fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Text to put in HTML (between tags or in a quoted attribute), escaped.
struct Text<'a>(&'a str);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::CallsView;

    fn plugin(name: &str) -> PluginView {
        PluginView {
            name: name.to_owned(),
            state: "running".to_owned(),
            enabled: true,
            version: Some("1.2.3".to_owned()),
            api_version: Some("1.4.0".to_owned()),
            description: Some("Does <b>things</b>".to_owned()),
            file: Some("/plugins/libx.so".to_owned()),
            isolation: "in-process".to_owned(),
            loaded_at: Some("2026-01-02T10:11:12Z".to_owned()),
            reloads: 2,
            refusals: 1,
            last_refusal: Some(RefusalView {
                file: "/plugins/<script>.so".to_owned(),
                reason: "/plugins/<script>alert(1)</script>.so: it is a text file".to_owned(),
                at: "2026-01-02T10:11:13Z".to_owned(),
            }),
            still_mapped: 0,
            health: None,
            circuit: Some("half_open".to_owned()),
            calls: Some(CallsView {
                calls: 200,
                per_second: 12.345,
                errors: 1,
                error_rate: 0.005,
                timeouts: 0,
                panics: 0,
                rejected: 0,
                in_flight: 0,
                p50_ms: 0.1,
                p95_ms: 0.2,
                p99_ms: 0.42,
            }),
            emits: vec![],
            subscribes: vec![],
            requires: vec![],
            capabilities: vec![],
            needs: vec![],
            grants: vec![],
            sha256: None,
            signer: None,
            signature: None,
        }
    }

    #[test]
    fn untrusted_text_is_shown_as_text() {
        let refused = [RefusalView {
            file: "/plugins/x\".so".to_owned(),
            reason: "<img src=x onerror=alert(1)> & 'more'".to_owned(),
            at: "2026-01-02T10:11:13Z".to_owned(),
        }];
        let html = render(&[plugin("a\"b<i>")], &refused, 5, "n0nce");
        assert!(
            html.contains("/plugins/&lt;script&gt;alert(1)&lt;/script&gt;.so: it is a text file")
        );
        assert!(html.contains("Does &lt;b&gt;things&lt;/b&gt;"));
        assert!(html.contains(r#"data-plugin="a&quot;b&lt;i&gt;""#));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt; &amp; &#39;more&#39;"));
        // The only script is the page's own.
        assert_eq!(html.matches("<script").count(), 1);
        assert!(!html.contains("<img"));
    }

    #[test]
    fn a_row_shows_what_an_operator_looks_for() {
        let html = render(&[plugin("filter")], &[], 3725, "n0nce");
        for expected in [
            r#"<td data-field="version">1.2.3</td>"#,
            r#"<span class="state running">running</span><small>circuit half-open</small>"#,
            r#"<td data-field="calls" class="num">12.3</td>"#,
            r#"<td data-field="errors" class="num">0.5 %</td>"#,
            r#"<td data-field="p99" class="num">0.42 ms</td>"#,
            "2026-01-02 10:11:12 UTC<small>2 reloads</small>",
            r#"<span id="uptime">1h 2m</span>"#,
            r#"<li class="none">none</li>"#,
        ] {
            assert!(html.contains(expected), "no {expected} in\n{html}");
        }
    }

    #[test]
    fn the_inline_assets_cannot_end_their_element_early() {
        assert!(!SCRIPT.to_ascii_lowercase().contains("</script"));
        assert!(!STYLE.to_ascii_lowercase().contains("</style"));
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce(), nonce());
        assert_eq!(nonce().len(), 32);
    }
}
