//! Start order from the plugins' requirements: a plugin starts after every plugin it requires,
//! and among plugins whose requirements are met, higher `priority` first (then by name). A
//! plugin is refused, naming both sides, when a requirement is missing, disabled, at a version
//! outside the range, refused itself, or part of a cycle. Shutdown runs the other way:
//! [`stop_order`].

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::error::LoadError;
use crate::metadata::PluginInfo;

/// Why a requirement switched off in the settings is missing. Not "in plughost.toml": the
/// settings may be the defaults (no file), or the plugin was disabled through the API.
pub(crate) const DISABLED: &str = "is disabled in the settings";

/// A plugin that may start: who it is, its file, its priority.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its descriptor.
    pub info: PluginInfo,
    /// Its file.
    pub file: PathBuf,
    /// Its `priority` setting.
    pub priority: i64,
}

/// What [`start_order`] decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Indices into the candidates, in start order.
    pub order: Vec<usize>,
    /// Refused candidates, by index, each with its reason.
    pub refused: Vec<(usize, LoadError)>,
}

/// Orders `candidates`. `running`: plugins in service that no candidate replaces, which meet
/// requirements as they are. `disabled`: names switched off in the settings, for messages.
pub fn start_order(
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
    for (i, candidate) in candidates.iter().enumerate() {
        for requirement in &candidate.info.dependencies {
            let provider = by_name
                .get(requirement.name.as_str())
                .map(|&p| &candidates[p].info)
                .or_else(|| running.iter().find(|r| r.name == requirement.name));
            let error = match provider {
                None => Some(LoadError::MissingDependency {
                    path: candidate.file.clone(),
                    name: candidate.info.name.clone(),
                    requirement: Box::new(requirement.clone()),
                    why: if disabled(&requirement.name) {
                        DISABLED.into()
                    } else {
                        "is not in the plugins folder".into()
                    },
                }),
                Some(provider) if !requirement.range.matches(&provider.version) => {
                    Some(LoadError::DependencyVersion {
                        path: candidate.file.clone(),
                        name: candidate.info.name.clone(),
                        requirement: Box::new(requirement.clone()),
                        found: Box::new(provider.version.clone()),
                    })
                }
                Some(_) => None,
            };
            if let Some(error) = error {
                refused.entry(i).or_insert(error);
            }
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
                        why: "was refused".into(),
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
pub fn stop_order(plugins: &[PluginInfo]) -> Vec<usize> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Requirement;

    fn info(name: &str, version: &str, requires: &[(&str, &str)]) -> PluginInfo {
        PluginInfo {
            name: name.into(),
            version: version.parse().unwrap(),
            api_version: semver::Version::new(1, 3, 0),
            description: String::new(),
            author: String::new(),
            license: String::new(),
            capabilities: vec![],
            tags: vec![],
            config_schema: vec![],
            dependencies: requires
                .iter()
                .map(|(n, r)| Requirement {
                    name: (*n).into(),
                    range: r.parse().unwrap(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_new_version_requiring_a_dependent_is_a_cycle() {
        // notes requires storage; storage's new version starts requiring notes.
        let running = [
            info("storage", "1.0.0", &[]),
            info("notes", "1.0.0", &[("storage", "*")]),
        ];
        assert_eq!(
            cycle_through(&info("storage", "1.1.0", &[("notes", "*")]), &running),
            Some(vec!["storage".into(), "notes".into(), "storage".into()])
        );
        // Through a third plugin too.
        let running = [
            info("a", "1.0.0", &[]),
            info("b", "1.0.0", &[("a", "*")]),
            info("c", "1.0.0", &[("b", "*")]),
            info("d", "1.0.0", &[]),
        ];
        assert_eq!(
            cycle_through(&info("a", "1.1.0", &[("d", "*"), ("c", "*")]), &running),
            Some(vec!["a".into(), "c".into(), "b".into(), "a".into()])
        );
    }

    #[test]
    fn requiring_itself_is_a_cycle_and_a_diamond_is_not() {
        assert_eq!(
            cycle_through(&info("a", "1.0.0", &[("a", "*")]), &[]),
            Some(vec!["a".into(), "a".into()])
        );
        let running = [
            info("base", "1.0.0", &[]),
            info("left", "1.0.0", &[("base", "*")]),
            info("right", "1.0.0", &[("base", "*")]),
        ];
        assert_eq!(
            cycle_through(
                &info("top", "1.0.0", &[("left", "*"), ("right", "*")]),
                &running
            ),
            None
        );
        // The version being replaced does not count: its old requirements are gone.
        let running = [info("a", "1.0.0", &[("b", "*")]), info("b", "1.0.0", &[])];
        assert_eq!(cycle_through(&info("b", "1.1.0", &[]), &running), None);
    }

    fn candidate(info: PluginInfo, priority: i64) -> Candidate {
        let file = PathBuf::from(format!("lib{}.so", info.name));
        Candidate {
            info,
            file,
            priority,
        }
    }

    fn names(candidates: &[Candidate], plan: &Plan) -> Vec<String> {
        plan.order
            .iter()
            .map(|&i| candidates[i].info.name.clone())
            .collect()
    }

    #[test]
    fn requirements_first_then_priority() {
        let candidates = [
            candidate(info("app", "1.0.0", &[("storage", "^1.2")]), 100),
            candidate(info("storage", "1.3.0", &[]), 0),
            candidate(info("metrics", "1.0.0", &[]), 5),
        ];
        let plan = start_order(&candidates, &[], &|_| false);
        assert!(plan.refused.is_empty());
        assert_eq!(names(&candidates, &plan), ["metrics", "storage", "app"]);
    }

    #[test]
    fn extreme_priorities_order_without_overflow() {
        let candidates = [
            candidate(info("low", "1.0.0", &[]), i64::MIN),
            candidate(info("middle", "1.0.0", &[]), 0),
            candidate(info("high", "1.0.0", &[]), i64::MAX),
            candidate(info("lowest-too", "1.0.0", &[]), i64::MIN),
        ];
        let plan = start_order(&candidates, &[], &|_| false);
        assert!(plan.refused.is_empty());
        assert_eq!(
            names(&candidates, &plan),
            ["high", "middle", "low", "lowest-too"]
        );
    }

    #[test]
    fn a_disabled_requirement_is_named_as_disabled_in_the_settings() {
        let candidates = [candidate(info("app", "1.0.0", &[("storage", "^1")]), 0)];
        let plan = start_order(&candidates, &[], &|name| name == "storage");
        let messages: Vec<String> = plan.refused.iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            messages,
            ["libapp.so: plugin app requires storage ^1, which is disabled in the settings"]
        );
    }

    #[test]
    fn refusals_name_both_sides() {
        let candidates = [
            candidate(info("app", "1.0.0", &[("storage", "^2")]), 0),
            candidate(info("storage", "1.3.0", &[]), 0),
            candidate(info("report", "1.0.0", &[("app", "*")]), 0),
            candidate(info("lonely", "1.0.0", &[("nobody", "^1")]), 0),
        ];
        let plan = start_order(&candidates, &[], &|_| false);
        assert_eq!(names(&candidates, &plan), ["storage"]);
        let messages: Vec<String> = plan.refused.iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "libapp.so: plugin app requires storage ^2, but storage 1.3.0 is loaded",
                "libreport.so: plugin report requires app *, which was refused",
                "liblonely.so: plugin lonely requires nobody ^1, which is not in the plugins folder",
            ]
        );
    }

    #[test]
    fn cycles_are_named() {
        let candidates = [
            candidate(info("a", "1.0.0", &[("b", "*")]), 0),
            candidate(info("b", "1.0.0", &[("a", "*")]), 0),
            candidate(info("c", "1.0.0", &[("a", "*")]), 0),
        ];
        let plan = start_order(&candidates, &[], &|_| false);
        assert!(plan.order.is_empty());
        let messages: Vec<String> = plan.refused.iter().map(|(_, e)| e.to_string()).collect();
        assert_eq!(
            messages,
            [
                "liba.so: plugin a is in a dependency cycle: a -> b -> a",
                "libb.so: plugin b is in a dependency cycle: b -> a -> b",
                "libc.so: plugin c requires a *, which was refused",
            ]
        );
    }

    #[test]
    fn running_plugins_meet_requirements_and_stop_last() {
        let storage = info("storage", "1.3.0", &[]);
        let candidates = [candidate(info("app", "1.0.0", &[("storage", "^1")]), 0)];
        let plan = start_order(&candidates, std::slice::from_ref(&storage), &|_| false);
        assert_eq!(plan.order, [0]);
        // Newest first would stop storage first; app requires it, so app goes first.
        let running = [storage, candidates[0].info.clone()];
        assert_eq!(stop_order(&running), [1, 0]);
    }
}
