//! The checks that decide whether a library may be called: magic, header version, plugin-api
//! version (semver) and abi_stable's layout comparison.
//!
//! The version rule: a plugin built against plugin-api `X.Y.Z` is accepted when the host's own
//! plugin-api version matches the requirement `^X.Y.Z`: the same major version (for 0.x, the
//! same minor), and the host no older than the plugin, since a newer plugin may rely on
//! additions this host does not have.

use std::path::Path;

use abi_stable::abi_stability::abi_checking::{
    check_layout_compatibility_with_globals, AbiInstability, AbiInstabilityErrors, CheckingGlobals,
};
use abi_stable::type_layout::{TLFieldOrFunction, TypeLayout};
use abi_stable::StableAbi;
use plugin_api::ffi::{
    ApiVersion, PluginModule, API_VERSION, HEADER_SYMBOL, HEADER_VERSION, MAGIC,
};

use crate::error::LoadError;

/// The host's own plugin-api version.
pub(crate) fn host_api_version() -> semver::Version {
    to_semver(API_VERSION)
}

/// Converts an FFI version.
pub(crate) fn to_semver(v: ApiVersion) -> semver::Version {
    semver::Version::new(v.major.into(), v.minor.into(), v.patch.into())
}

/// Whether a host speaking `host` accepts a plugin built against `plugin`.
pub(crate) fn api_compatible(plugin: &semver::Version, host: &semver::Version) -> bool {
    semver::Comparator {
        op: semver::Op::Caret,
        major: plugin.major,
        minor: Some(plugin.minor),
        patch: Some(plugin.patch),
        pre: plugin.pre.clone(),
    }
    .matches(host)
}

/// Checks the frozen part of the header: magic, header version, API version.
pub(crate) fn check_header_fields(
    path: &Path,
    magic: [u8; 8],
    header_version: u32,
    api_version: ApiVersion,
) -> Result<(), LoadError> {
    if magic != MAGIC {
        return Err(LoadError::NotAPlugin {
            path: path.to_owned(),
            reason: format!("{HEADER_SYMBOL} does not start with the plughost magic value"),
        });
    }
    if header_version != HEADER_VERSION {
        return Err(LoadError::NotAPlugin {
            path: path.to_owned(),
            reason: format!(
                "plugin header version {header_version} is not the {HEADER_VERSION} this host reads"
            ),
        });
    }
    let found = to_semver(api_version);
    let expected = host_api_version();
    if !api_compatible(&found, &expected) {
        return Err(LoadError::IncompatibleApi {
            path: path.to_owned(),
            found,
            expected,
        });
    }
    Ok(())
}

/// Compares the plugin's layout of [`PluginModule`] with the host's.
///
/// A fresh `CheckingGlobals` per check: abi_stable's global one keeps `'static` pointers into
/// the checked library, which dangle once it is unloaded and crash the next check
/// (docs/design.md, "Layout checks and the abi_stable pin").
pub(crate) fn check_layout(path: &Path, found: &'static TypeLayout) -> Result<(), LoadError> {
    let expected: &'static TypeLayout = <PluginModule as StableAbi>::LAYOUT;
    check_layout_compatibility_with_globals(expected, found, &CheckingGlobals::new()).map_err(
        |errors| LoadError::LayoutMismatch {
            path: path.to_owned(),
            expected: host_api_version(),
            summary: summarize_layout_errors(&errors),
        },
    )
}

/// Compares the plugin's layout of an optional export's type (`what`: "state hand-over",
/// "host callbacks") with the host's, with fresh checking globals as in [`check_layout`].
pub(crate) fn check_export_layout(
    path: &Path,
    what: &str,
    expected: &'static TypeLayout,
    found: &'static TypeLayout,
) -> Result<(), LoadError> {
    check_layout_compatibility_with_globals(expected, found, &CheckingGlobals::new()).map_err(
        |errors| LoadError::LayoutMismatch {
            path: path.to_owned(),
            expected: host_api_version(),
            summary: format!("{what} export: {}", summarize_layout_errors(&errors)),
        },
    )
}

/// abi_stable explains a mismatch in 100 to 350 lines. Say instead, for the first few places
/// that differ, where (the path of fields from `PluginModule` down) and what differs there.
fn summarize_layout_errors(errors: &AbiInstabilityErrors) -> String {
    const MAX_PLACES: usize = 3;
    let places: Vec<String> = errors
        .errors
        .iter()
        .filter_map(|error| {
            let first = error.errs.first()?;
            let mut path: Vec<String> = Vec::new();
            for step in error.stack_trace.iter() {
                match &step.expected {
                    TLFieldOrFunction::Field(field) => path.push(field.name().to_owned()),
                    // A fn-pointer field is followed by its function, named like the field.
                    TLFieldOrFunction::Function(function) => {
                        if path.last().map(String::as_str) == Some(function.name.as_str()) {
                            path.pop();
                        }
                        path.push(format!("{}()", function.name));
                    }
                }
            }
            let place = if path.is_empty() {
                "PluginModule".to_owned()
            } else {
                format!("PluginModule.{}", path.join("."))
            };
            let what = describe(first)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            Some(format!("{place}: {what}"))
        })
        .collect();
    let more = places.len().saturating_sub(MAX_PLACES);
    let mut summary = places
        .into_iter()
        .take(MAX_PLACES)
        .collect::<Vec<_>>()
        .join("; ");
    if more > 0 {
        summary.push_str(&format!(" (and {more} more)"));
    }
    summary
}

/// One difference, in a phrase.
fn describe(difference: &AbiInstability) -> String {
    use AbiInstability as D;
    match difference {
        D::Name(v) => format!("type {} expected, {} found", v.expected, v.found),
        D::Package(v) => format!("package {} expected, {} found", v.expected, v.found),
        D::PackageVersion(v) => format!("version {} expected, {} found", v.expected, v.found),
        D::Size(v) => format!("size {} expected, {} found", v.expected, v.found),
        D::Alignment(v) => format!("alignment {} expected, {} found", v.expected, v.found),
        D::FieldCountMismatch(v) => {
            format!(
                "{} fields or parameters expected, {} found",
                v.expected, v.found
            )
        }
        D::UnexpectedField(v) => format!(
            "field or parameter `{}` expected, `{}` found",
            v.expected.name(),
            v.found.name()
        ),
        D::MismatchedPrimitive(v) => format!("{:?} expected, {:?} found", v.expected, v.found),
        D::UnexpectedVariant(v) => format!("variant {} expected, {} found", v.expected, v.found),
        D::TooManyVariants(v) => format!("{} variants expected, {} found", v.expected, v.found),
        other => {
            // The variant's name is a fair description of the rarer kinds.
            let debug = format!("{other:?}");
            debug
                .split(['(', ' ', '{'])
                .next()
                .unwrap_or("layout differs")
                .to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> semver::Version {
        semver::Version::parse(s).unwrap()
    }

    #[test]
    fn version_rule_accepts_older_plugins_of_the_same_major() {
        assert!(api_compatible(&v("1.0.0"), &v("1.0.0")));
        assert!(api_compatible(&v("1.0.0"), &v("1.3.2")));
        assert!(
            !api_compatible(&v("1.4.0"), &v("1.3.2")),
            "plugin newer than host"
        );
        assert!(!api_compatible(&v("2.0.0"), &v("1.3.0")));
        assert!(!api_compatible(&v("0.9.0"), &v("1.3.0")));
        assert!(
            !api_compatible(&v("0.1.0"), &v("0.2.0")),
            "0.x minors are majors"
        );
        assert!(api_compatible(&v("0.2.0"), &v("0.2.5")));
    }
}
