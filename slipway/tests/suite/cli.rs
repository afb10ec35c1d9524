//! The command line as people meet it: its help, its completions, and flags written
//! where people write them.

use crate::common::*;

fn slipway(args: &[&str]) -> (bool, String, String) {
    let out = slipway_command().args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn server_help_groups_its_settings_and_shows_no_empty_variables() {
    for command in ["standalone", "server"] {
        let (ok, help, _) = slipway(&[command, "--help"]);
        assert!(ok);
        for heading in ["HTTP:", "Database:", "Orchestrator:", "Registry:", "Repositories:", "Example"] {
            assert!(help.contains(heading), "{command} --help has no {heading}:\n{help}");
        }
        if command == "standalone" {
            for heading in ["Worker:", "Docker:", "AWS:"] {
                assert!(help.contains(heading), "{command} --help has no {heading}:\n{help}");
            }
        }
        assert!(help.contains("[env: SLIPWAY_HTTP_ADDR]"), "{help}");
        assert!(!help.contains("=]"), "an unset variable is shown as `=`:\n{help}");
    }
}

#[test]
fn completions_are_printed_for_bash_zsh_and_fish() {
    for (shell, marker) in [("bash", "_slipway()"), ("zsh", "#compdef slipway"), ("fish", "complete -c slipway")] {
        let (ok, script, err) = slipway(&["completions", shell]);
        assert!(ok, "{err}");
        assert!(script.contains(marker) && script.contains("submit"), "{shell}: {script}");
    }
    let (ok, _, err) = slipway(&["completions", "tcsh"]);
    assert!(!ok && err.contains("tcsh"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_flags_go_before_or_after_the_command_and_a_bare_address_is_http() {
    let standalone = Standalone::start(&[]).await;
    let address = standalone.api().trim_start_matches("http://").to_string();
    let id =
        submit(&standalone.api(), &serde_json::json!({ "repo": standalone.repo, "image": "flags:dev" })).await["id"]
            .as_str()
            .unwrap()
            .to_string();
    for args in [vec!["--api", &address, "get", &id], vec!["get", &id, "--api", &address]] {
        let (ok, out, err) = slipway(&args);
        assert!(ok, "{args:?}: {err}");
        assert!(out.contains(&id), "{args:?}: {out}");
    }
    let (ok, _, err) = slipway(&["--api", "ftp://127.0.0.1:1", "get", &id]);
    assert!(!ok && err.contains("http:// or https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_is_named_by_the_start_of_its_id_when_no_other_job_s_starts_the_same() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    let body = serde_json::json!({ "repo": standalone.repo, "image": "prefix:dev", "requires": { "region": "mars" } });
    let first = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    let second = submit(&api, &body).await["id"].as_str().unwrap().to_string();
    // Ids are time-ordered: the two share a start, and differ further on.
    let shared = first.chars().zip(second.chars()).take_while(|(a, b)| a == b).count();
    assert!(shared >= 8, "{first} {second}");
    let unique_start = &second[..shared + 1];
    let env = [("SLIPWAY_API", api.as_str())];
    let run = |args: &[&str]| {
        let out = slipway_command().args(args).envs(env).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&["get", unique_start]);
    assert!(ok && out.contains(&second), "{err}");
    let (ok, out, err) = run(&["cancel", unique_start]);
    assert!(ok && out.contains("cancelled"), "{out}{err}");
    let (ok, _, err) = run(&["get", &first[..shared]]);
    assert!(!ok && err.contains("several jobs") && err.contains(&first), "{err}");
    let (ok, _, err) = run(&["get", &first[..7]]);
    assert!(!ok && err.contains("at least 8"), "{err}");
    let (ok, _, err) = run(&["logs", "ffffffff"]);
    assert!(!ok && err.contains("no job's id starts with `ffffffff`"), "{err}");
    assert_eq!(get_job(&api, &first).await["state"], "queued", "only the named job was cancelled");
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_passes_the_build_cache_flags() {
    let standalone = Standalone::start(&[]).await;
    let api = standalone.api();
    let submit_with = |extra: &[&str]| {
        let mut args = vec!["--api", &api, "submit", "--repo", &standalone.repo, "--image"];
        args.extend(["cache:dev", "--require", "region=mars"]);
        args.extend(extra);
        slipway(&args)
    };
    let (ok, out, err) = submit_with(&["--cache-from", "127.0.0.1:5000/app:a", "--cache-from", "127.0.0.1:5000/app:b"]);
    assert!(ok, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(job["spec"]["cache_from"], serde_json::json!(["127.0.0.1:5000/app:a", "127.0.0.1:5000/app:b"]));
    assert_eq!(job["spec"]["cache"], true);
    let (ok, out, err) = submit_with(&["--no-cache"]);
    assert!(ok, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((job["spec"]["cache"].as_bool(), job["spec"].get("cache_from")), (Some(false), None));
    let (ok, _, err) = submit_with(&["--no-cache", "--cache-from", "127.0.0.1:5000/app:a"]);
    assert!(!ok && err.contains("--no-cache") && err.contains("--cache-from"), "{err}");
    let (ok, _, err) = submit_with(&["--cache-from", "app:a"]);
    assert!(!ok && err.contains("cache_from[0]"), "{err}");
}
