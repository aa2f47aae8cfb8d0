//! The requirement rules on made-up plugins: orders, refusals and their wording.

use super::*;

fn info(name: &str, version: &str, requires: &[(&str, &str)]) -> PluginInfo {
    PluginInfo {
        dependencies: requires
            .iter()
            .map(|(n, r)| Requirement {
                name: (*n).into(),
                range: r.parse().unwrap(),
            })
            .collect(),
        ..PluginInfo::named(name, version)
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

#[test]
fn needed_by_follows_requirements_through_the_candidates() {
    let candidates = [
        candidate(info("app", "1.0.0", &[("storage", "^1"), ("log", "*")]), 0),
        candidate(info("storage", "1.3.0", &[("disk", "*")]), 0),
        candidate(info("disk", "1.0.0", &[]), 0),
        candidate(info("log", "1.0.0", &[]), 0),
        candidate(info("unrelated", "1.0.0", &[]), 0),
    ];
    let mut needed = needed_by("app", &candidates, |_| false);
    needed.sort();
    assert_eq!(needed, [0, 1, 2, 3]);
    // A running requirement is not started again, nor what it requires.
    let mut needed = needed_by("app", &candidates, |name| name == "storage");
    needed.sort();
    assert_eq!(needed, [0, 3]);
    // A cycle ends; the unknown name gives nothing.
    let cycle = [
        candidate(info("a", "1.0.0", &[("b", "*")]), 0),
        candidate(info("b", "1.0.0", &[("a", "*")]), 0),
    ];
    assert_eq!(needed_by("a", &cycle, |_| false), [0, 1]);
    assert!(needed_by("nobody", &cycle, |_| false).is_empty());
}

#[test]
fn one_wording_for_unmet_requirements_and_broken_dependents() {
    let app = info("app", "1.0.0", &[("storage", "^1.2")]);
    let at = |v: &'static str| move |_: &str| Some(v.parse().unwrap());
    assert_eq!(unmet(&app, at("1.3.0")), None);
    let error = unmet(&app, at("1.1.0")).unwrap().refusal(
        Path::new("libapp.so"),
        "app",
        |_| unreachable!(),
    );
    assert_eq!(
        error.to_string(),
        "libapp.so: plugin app requires storage ^1.2, but storage 1.1.0 is loaded"
    );
    let error = unmet(&app, |_| None)
        .unwrap()
        .refusal(Path::new("libapp.so"), "app", |name| {
            format!("({name}) is gone")
        });
    assert_eq!(
        error.to_string(),
        "libapp.so: plugin app requires storage ^1.2, which (storage) is gone"
    );
    let broken = broken_dependent(&info("storage", "2.0.0", &[]), [&app]).unwrap();
    assert_eq!(broken.dependent, "app");
    assert_eq!(broken.requirement.to_string(), "storage ^1.2");
    assert_eq!(
        broken_dependent(&info("storage", "1.4.0", &[]), [&app]),
        None
    );
}
