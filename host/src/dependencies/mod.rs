//! The one home of the rules about requirements between plugins.
//!
//! - [`unmet`]: whether a plugin's requirements are met by the plugins that would serve them,
//!   and [`Unmet::refusal`], the one wording of the refusal;
//! - [`broken_dependent`]: whether a new version would leave a plugin that requires it out of
//!   range;
//! - [`cycle_through`]: whether requirements lead back to a plugin;
//! - [`start_order`]: a plugin starts after every plugin it requires, and among plugins whose
//!   requirements are met, higher `priority` first (then by name); [`needed_by`] picks what one
//!   plugin needs started first;
//! - [`stop_order`]: the other way, for shutdown.
//!
//! Nothing here loads or runs anything: the rules work on [`PluginInfo`]s, so they are tested
//! on their own below.

#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::plugin_info::{PluginInfo, Requirement};

/// Why a requirement switched off in the settings is missing. Not "in plughost.toml": the
/// settings may be the defaults (no file), or the plugin was disabled through the API.
pub(crate) const DISABLED: &str = "is disabled in the settings";

/// Why a requirement that is not in service is missing, when nothing else is known.
pub(crate) const NOT_LOADED: &str = "is not loaded";

/// Why a requirement is missing because it was refused itself.
pub(crate) const REFUSED: &str = "was refused";

/// A requirement that the plugins serving (or about to serve) cannot meet.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Unmet {
    /// No plugin of that name.
    Missing(Requirement),
    /// A plugin of that name, at a version outside the range.
    OutOfRange(Requirement, semver::Version),
}

impl Unmet {
    /// The refusal of `plugin`, from `path`, for this. `missing`: why a missing requirement
    /// is not there ("is not loaded", [`DISABLED`]...), given its name.
    pub(crate) fn refusal(
        self,
        path: &Path,
        plugin: &str,
        missing: impl FnOnce(&str) -> String,
    ) -> LoadError {
        match self {
            Unmet::Missing(requirement) => LoadError::MissingDependency {
                path: path.to_owned(),
                name: plugin.to_owned(),
                why: missing(&requirement.name),
                requirement: Box::new(requirement),
            },
            Unmet::OutOfRange(requirement, found) => LoadError::DependencyVersion {
                path: path.to_owned(),
                name: plugin.to_owned(),
                requirement: Box::new(requirement),
                found: Box::new(found),
            },
        }
    }
}

/// The first requirement of `plugin` not met, where `version_of(name)` is the version of the
/// plugin that would serve `name`, if any.
pub(crate) fn unmet(
    plugin: &PluginInfo,
    version_of: impl Fn(&str) -> Option<semver::Version>,
) -> Option<Unmet> {
    plugin
        .dependencies
        .iter()
        .find_map(|requirement| match version_of(&requirement.name) {
            None => Some(Unmet::Missing(requirement.clone())),
            Some(found) if !requirement.range.matches(&found) => {
                Some(Unmet::OutOfRange(requirement.clone(), found))
            }
            Some(_) => None,
        })
}

/// The first of `dependents` that requires `plugin`'s name at a range `plugin`'s version is
/// outside of, with that requirement: the refusal of a new version that would break it.
pub(crate) fn broken_dependent<'a>(
    plugin: &PluginInfo,
    dependents: impl IntoIterator<Item = &'a PluginInfo>,
) -> Option<Broken> {
    dependents.into_iter().find_map(|dependent| {
        dependent
            .dependencies
            .iter()
            .find(|r| r.name == plugin.name && !r.range.matches(&plugin.version))
            .map(|requirement| Broken {
                dependent: dependent.name.clone(),
                requirement: requirement.clone(),
            })
    })
}

/// Who a new version would break, and what they require.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Broken {
    /// The plugin that requires it.
    pub(crate) dependent: String,
    /// What that plugin requires.
    pub(crate) requirement: Requirement,
}

/// A plugin that may start: who it is, its file, its priority.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Its descriptor.
    pub(crate) info: PluginInfo,
    /// Its file.
    pub(crate) file: PathBuf,
    /// Its `priority` setting.
    pub(crate) priority: i64,
}

/// What [`start_order`] decided.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Indices into the candidates, in start order.
    pub(crate) order: Vec<usize>,
    /// Refused candidates, by index, each with its reason.
    pub(crate) refused: Vec<(usize, LoadError)>,
}

/// Orders `candidates`. `running`: plugins in service that no candidate replaces, which meet
/// requirements as they are. `disabled`: names switched off in the settings, for messages.
pub(crate) fn start_order(
    candidates: &[Candidate],
    running: &[PluginInfo],
    disabled: &dyn Fn(&str) -> bool,
) -> Plan {
    let by_name: HashMap<&str, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.info.name.as_str(), i))
        .collect();
    let mut refused: HashMap<usize, LoadError> = HashMap::new();

    // Requirements nobody here can meet.
    let version_of = |name: &str| {
        by_name
            .get(name)
            .map(|&p| &candidates[p].info)
            .or_else(|| running.iter().find(|r| r.name == name))
            .map(|provider| provider.version.clone())
    };
    for (i, candidate) in candidates.iter().enumerate() {
        if let Some(unmet) = unmet(&candidate.info, version_of) {
            let error = unmet.refusal(&candidate.file, &candidate.info.name, |name| {
                if disabled(name) {
                    DISABLED.into()
                } else {
                    "is not in the plugins folder".into()
                }
            });
            refused.insert(i, error);
        }
    }
    // Cycles, among those left.
    for i in 0..candidates.len() {
        if refused.contains_key(&i) {
            continue;
        }
        if let Some(cycle) = cycle_through(&candidates[i].info, candidates.iter().map(|c| &c.info))
        {
            refused.insert(
                i,
                LoadError::DependencyCycle {
                    path: candidates[i].file.clone(),
                    name: candidates[i].info.name.clone(),
                    cycle,
                },
            );
        }
    }
    // Whoever requires a refused plugin goes too, until nothing changes.
    loop {
        let mut more = Vec::new();
        for (i, candidate) in candidates.iter().enumerate() {
            if refused.contains_key(&i) {
                continue;
            }
            let failed = candidate.info.dependencies.iter().find(|r| {
                by_name
                    .get(r.name.as_str())
                    .is_some_and(|p| refused.contains_key(p))
            });
            if let Some(requirement) = failed {
                more.push((
                    i,
                    LoadError::MissingDependency {
                        path: candidate.file.clone(),
                        name: candidate.info.name.clone(),
                        requirement: Box::new(requirement.clone()),
                        why: REFUSED.into(),
                    },
                ));
            }
        }
        if more.is_empty() {
            break;
        }
        refused.extend(more);
    }

    // Kahn's algorithm, the ready set ordered by priority (highest first), then name.
    let waits_on = |i: usize| -> Vec<usize> {
        candidates[i]
            .info
            .dependencies
            .iter()
            .filter_map(|r| by_name.get(r.name.as_str()).copied())
            .collect()
    };
    let mut started = vec![false; candidates.len()];
    let mut ready = BTreeSet::new();
    // `Reverse`, not `-priority`: negating `i64::MIN` overflows.
    let key = |i: usize| {
        (
            Reverse(candidates[i].priority),
            candidates[i].info.name.clone(),
            i,
        )
    };
    for i in 0..candidates.len() {
        if !refused.contains_key(&i) && waits_on(i).is_empty() {
            ready.insert(key(i));
        }
    }
    let mut order = Vec::new();
    while let Some(next) = ready.pop_first() {
        let i = next.2;
        started[i] = true;
        order.push(i);
        for j in 0..candidates.len() {
            if started[j] || refused.contains_key(&j) || !waits_on(j).contains(&i) {
                continue;
            }
            if waits_on(j).iter().all(|&k| started[k]) {
                ready.insert(key(j));
            }
        }
    }
    let mut refused: Vec<(usize, LoadError)> = refused.into_iter().collect();
    refused.sort_by_key(|(i, _)| *i);
    Plan { order, refused }
}

/// The cycle through `plugin`, if its requirements lead back to it through `others` (any of
/// them with `plugin`'s name stands replaced by `plugin`): `[a, b, a]`. Loads one at a time
/// cannot form a cycle otherwise, but a new version of a plugin can start requiring one of its
/// dependents, or itself.
pub(crate) fn cycle_through<'a>(
    plugin: &'a PluginInfo,
    others: impl IntoIterator<Item = &'a PluginInfo>,
) -> Option<Vec<String>> {
    let mut by_name: HashMap<&str, &PluginInfo> =
        others.into_iter().map(|p| (p.name.as_str(), p)).collect();
    by_name.insert(&plugin.name, plugin);
    // In reverse, so popping walks the requirements in their declared order.
    let requires = |name: &str| -> Vec<&str> {
        by_name.get(name).map_or_else(Vec::new, |p| {
            p.dependencies
                .iter()
                .rev()
                .map(|r| r.name.as_str())
                .collect()
        })
    };
    // Depth first, keeping the path walked so the cycle can be named.
    let mut path = vec![plugin.name.as_str()];
    let mut next = vec![requires(&plugin.name)];
    let mut seen = std::collections::HashSet::new();
    while let Some(frontier) = next.last_mut() {
        let Some(name) = frontier.pop() else {
            next.pop();
            path.pop();
            continue;
        };
        if name == plugin.name {
            path.push(name);
            return Some(path.into_iter().map(str::to_owned).collect());
        }
        if seen.insert(name) {
            next.push(requires(name));
            path.push(name);
        }
    }
    None
}

/// The order to stop `plugins` in: a plugin before any plugin it requires; otherwise the
/// given order (pass newest first).
pub(crate) fn stop_order(plugins: &[PluginInfo]) -> Vec<usize> {
    let mut left: Vec<usize> = (0..plugins.len()).collect();
    let mut order = Vec::with_capacity(plugins.len());
    while !left.is_empty() {
        // The first one no remaining plugin requires; with a cycle (refused at start, so only
        // by mistake), the first one.
        let pick = left
            .iter()
            .position(|&i| {
                !left.iter().any(|&j| {
                    j != i
                        && plugins[j]
                            .dependencies
                            .iter()
                            .any(|r| r.name == plugins[i].name)
                })
            })
            .unwrap_or(0);
        order.push(left.remove(pick));
    }
    order
}

/// Which of `candidates` must start for plugin `name` to start: the ones it requires, theirs,
/// and so on, and itself; by index, each once. Requirements not among the candidates (or
/// `skip`ped: running already, say) are left out: the start refuses them, naming them.
pub(crate) fn needed_by(
    name: &str,
    candidates: &[Candidate],
    skip: impl Fn(&str) -> bool,
) -> Vec<usize> {
    let mut needed = Vec::new();
    let mut next = vec![name.to_owned()];
    while let Some(name) = next.pop() {
        let Some(i) = candidates.iter().position(|c| c.info.name == name) else {
            continue;
        };
        // Each once, so a cycle ends here; `start_order` refuses it.
        if needed.contains(&i) {
            continue;
        }
        needed.push(i);
        next.extend(
            candidates[i]
                .info
                .dependencies
                .iter()
                .map(|r| r.name.clone())
                .filter(|r| !skip(r)),
        );
    }
    needed
}

#[cfg(test)]
mod tests;
