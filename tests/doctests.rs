//! The documentation, checked. Every Rust snippet of `README.md` and `docs/*.md` is compiled
//! as a doc test of this library (`cargo test -p plughost-tests --doc`; `cargo test --workspace`
//! runs them too): a snippet marked `no_run` is compiled only, any other one also runs. Every
//! relative link between those pages must name a file or folder that exists (the unit test
//! below, `cargo test -p plughost-tests --lib`).

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

#[cfg(doctest)]
#[doc = include_str!("../docs/writing-plugins.md")]
mod writing_plugins {}

#[cfg(doctest)]
#[doc = include_str!("../docs/configuration.md")]
mod configuration {}

#[cfg(doctest)]
#[doc = include_str!("../docs/embedding.md")]
mod embedding {}

#[cfg(doctest)]
#[doc = include_str!("../docs/events.md")]
mod events {}

#[cfg(doctest)]
#[doc = include_str!("../docs/hot-reload.md")]
mod hot_reload {}

#[cfg(doctest)]
#[doc = include_str!("../docs/operations.md")]
mod operations {}

#[cfg(doctest)]
#[doc = include_str!("../docs/benchmarks.md")]
mod benchmarks {}

#[cfg(doctest)]
#[doc = include_str!("../docs/admin.md")]
mod admin {}

#[cfg(doctest)]
#[doc = include_str!("../docs/internals.md")]
mod internals {}

#[cfg(doctest)]
#[doc = include_str!("../docs/design.md")]
mod design {}

#[cfg(test)]
mod links {
    use std::path::{Path, PathBuf};

    /// README.md and every `docs/*.md`.
    fn pages() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let mut pages = vec![root.join("README.md")];
        let docs = std::fs::read_dir(root.join("docs")).expect("read docs/");
        for entry in docs {
            let path = entry.expect("read docs/").path();
            if path.extension().is_some_and(|ext| ext == "md") {
                pages.push(path);
            }
        }
        pages.sort();
        pages
    }

    /// The targets of `[text](target)` links outside fenced code blocks, with their line.
    fn link_targets(text: &str) -> Vec<(usize, String)> {
        let mut targets = Vec::new();
        let mut in_code = false;
        for (index, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code {
                continue;
            }
            let mut rest = line;
            while let Some(start) = rest.find("](") {
                let after = &rest[start + 2..];
                let Some(end) = after.find(')') else { break };
                targets.push((index + 1, after[..end].trim().to_owned()));
                rest = &after[end..];
            }
        }
        targets
    }

    /// A link to another page (or a file of the repository) must name something that exists;
    /// web addresses and anchors within a page are not checked.
    #[test]
    fn relative_links_resolve() {
        let mut broken = Vec::new();
        let mut checked = 0;
        for page in pages() {
            let text = std::fs::read_to_string(&page).expect("read page");
            let dir = page.parent().expect("page folder");
            for (line, target) in link_targets(&text) {
                let target = target.split_whitespace().next().unwrap_or_default();
                if target.is_empty()
                    || target.starts_with('#')
                    || target.contains("://")
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let path = target.split('#').next().unwrap_or_default();
                checked += 1;
                if !dir.join(path).exists() {
                    broken.push(format!("{}:{line}: {target}", page.display()));
                }
            }
        }
        assert!(
            checked > 0,
            "no relative links found: is the parser broken?"
        );
        assert!(
            broken.is_empty(),
            "links to nothing:\n{}",
            broken.join("\n")
        );
    }

    /// `FACTS.md` is no longer in the repository: its facts are in docs/design.md.
    #[test]
    fn no_page_cites_facts_md() {
        for page in pages() {
            let text = std::fs::read_to_string(&page).expect("read page");
            assert!(
                !text.contains("FACTS.md"),
                "{} cites FACTS.md",
                page.display()
            );
        }
    }
}
