//! Every hostile fixture, as an OCI layout and (where possible) as a docker
//! archive: it fails with exit 1 and the expected message (or, for the one
//! that is legitimately accepted, loads into a safe merged view), nothing
//! outside the store changes, and nothing of it is visible in the store.

#![allow(clippy::print_stderr)]

mod common;

use std::path::Path;

use common::{outside_state, Env};
use storectl_fixtures::catalogue::{hostile, Expect, Hostile, Sentinel};
use storectl_fixtures::{
    assert_trees_eq, expected_tree, snapshot, write_docker_archive, write_oci_layout,
};

/// Size of the gzip bomb (the fixture expands to this many GiB of zeros).
const BOMB_GIB: u64 = 2;

/// `T/sentinel` with a file the hardlink escapes aim at.
fn sentinel(env: &Env) -> Sentinel {
    let dir = env.path("sentinel");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(Sentinel::TARGET), "do not touch\n").unwrap();
    // The store is `T/store`; a layer's diff is `store/overlay/<id>/diff`.
    Sentinel::new(&dir, 4)
}

/// Paths an escape one level deeper than planned would reach (beside `T`).
fn beyond(env: &Env) -> Vec<std::path::PathBuf> {
    let parent = env.dir().parent().unwrap().join("sentinel");
    ["dotdot-deep-evil", "dotdot-evil", "evil-rel"]
        .iter()
        .map(|n| parent.join(n))
        .collect()
}

fn run_case(case: &Hostile, docker: bool) {
    let env = Env::new();
    let s = sentinel(&env);
    // The fixture is generated against this env's sentinel.
    let bomb = if case.name == "gzip-bomb" {
        BOMB_GIB
    } else {
        0
    };
    let case = hostile(&s, bomb)
        .into_iter()
        .find(|c| c.name == case.name)
        .unwrap();
    let what = format!(
        "{} ({})",
        case.name,
        if docker { "docker-archive" } else { "oci" }
    );
    let source = if docker {
        let p = env.path("image.tar");
        write_docker_archive(&p, std::slice::from_ref(&case.image)).unwrap();
        p
    } else {
        let p = env.path("oci");
        write_oci_layout(&p, std::slice::from_ref(&case.image)).unwrap();
        p
    };
    let before = outside_state(env.dir(), "store");
    let mut args = vec!["load".to_string(), source.display().to_string()];
    if let Some(max) = case.max_layer_size {
        args.push("--max-layer-size".into());
        args.push(max.into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = env.run(&argv);
    match &case.expect {
        Expect::Reject { any_of } => {
            let line = r.err();
            let l = line.to_lowercase();
            assert!(
                any_of.iter().any(|w| l.contains(&w.to_lowercase())),
                "{what}: the error should mention one of {any_of:?}: {line}"
            );
            env.assert_store_empty(&what);
        }
        Expect::Accept => {
            let out = r.ok();
            let id = out.lines().last().unwrap_or("").trim().to_string();
            assert!(common::is_id(&id), "{what}: load printed {out:?}");
            let m = env.mount(&id);
            assert_trees_eq(
                &expected_tree(&case.image),
                &snapshot(&m.path).unwrap(),
                &what,
            );
            m.umount();
            env.run(&["rmi", &id]).ok();
            env.assert_store_empty(&what);
        }
    }
    let after = outside_state(env.dir(), "store");
    assert_eq!(before, after, "{what}: something outside the store changed");
    for p in beyond(&env) {
        assert!(!p.exists(), "{what}: {} was written", p.display());
    }
    assert_sentinel_untouched(&s.dir, &what);
}

fn assert_sentinel_untouched(dir: &Path, what: &str) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [Sentinel::TARGET], "{what}: sentinel dir changed");
    assert_eq!(
        std::fs::read(dir.join(Sentinel::TARGET)).unwrap(),
        b"do not touch\n"
    );
}

/// The catalogue, generated against a throwaway sentinel (names and
/// expectations only; each case regenerates against its own env).
fn cases() -> Vec<Hostile> {
    hostile(&Sentinel::new(Path::new("/nonexistent/sentinel"), 4), 0)
}

fn case(name: &str) -> Hostile {
    cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no hostile fixture {name}"))
}

macro_rules! hostile_tests {
    ($($fn:ident => $name:literal),* $(,)?) => {
        $(
            #[test]
            #[ignore = "needs root"]
            fn $fn() {
                require_root!();
                let c = case($name);
                run_case(&c, false);
                if c.docker_archive {
                    run_case(&c, true);
                }
            }
        )*

        #[test]
        fn every_hostile_fixture_has_a_test() {
            let tested: Vec<&str> = vec![$($name),*];
            let all: Vec<&str> = cases().iter().map(|c| c.name).collect();
            assert_eq!(tested, all);
        }
    };
}

hostile_tests! {
    dotdot => "dotdot",
    dotdot_deep => "dotdot-deep",
    absolute => "absolute",
    symlink_entry_absolute => "symlink-entry-absolute",
    symlink_entry_relative => "symlink-entry-relative",
    hardlink_dotdot => "hardlink-dotdot",
    hardlink_dotdot_passwd => "hardlink-dotdot-passwd",
    hardlink_absolute => "hardlink-absolute",
    whiteout_dotdot => "whiteout-dotdot",
    whiteout_dotdot_nested => "whiteout-dotdot-nested",
    duplicate_file => "duplicate-file",
    symlink_earlier_layer => "symlink-earlier-layer",
    truncated => "truncated",
    gzip_bomb => "gzip-bomb",
}
