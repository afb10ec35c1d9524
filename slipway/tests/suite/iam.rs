//! The IAM policies in `iam/` against the code: every AWS operation the code calls
//! is allowed by the policy of the process that calls it, and the policies allow
//! nothing the code does not need.
//!
//! The code spells every AWS call `ecr.<operation>()`, `ecs.<operation>()`, `ssm.<operation>()`
//! or `cloudwatch.<operation>()` (see `steps/src/aws/mod.rs`); this test reads the
//! source for those calls.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Service prefixes in IAM, by the name a client is bound to.
const CLIENTS: [(&str, &str); 4] = [("ecr", "ecr"), ("ecs", "ecs"), ("cloudwatch", "logs"), ("ssm", "ssm")];

/// Operations the server calls (the sweep deleting ECR images); the worker calls the rest.
const SERVER_OPERATIONS: [&str; 1] = ["ecr:BatchDeleteImage"];

/// Actions a policy needs that are not SDK calls of Slipway's: the registry
/// protocol of `docker push` with an ECR token, tags on what RunTask and
/// RegisterTaskDefinition create, and handing roles to tasks.
const NOT_CALLED_BUT_NEEDED: [&str; 7] = [
    "ecr:BatchCheckLayerAvailability",
    "ecr:InitiateLayerUpload",
    "ecr:UploadLayerPart",
    "ecr:CompleteLayerUpload",
    "ecr:PutImage",
    "ecs:TagResource",
    "iam:PassRole",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// `run_task` → `RunTask`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
        })
        .collect()
}

/// Every `client . operation ()` in the text, as `service:Operation`.
fn calls_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut found = BTreeSet::new();
    for (client, service) in CLIENTS {
        let mut from = 0;
        while let Some(at) = text[from..].find(client).map(|i| i + from) {
            from = at + client.len();
            // A binding of its own: not part of a longer name, not a field (`.ecs`).
            let before = text[..at].trim_end().bytes().last();
            if at > 0 && is_ident(bytes[at - 1]) || before == Some(b'.') {
                continue;
            }
            let rest = text[from..].trim_start();
            let Some(rest) = rest.strip_prefix('.') else { continue };
            let rest = rest.trim_start();
            let name: String = rest.bytes().take_while(|b| is_ident(*b)).map(char::from).collect();
            if !name.is_empty() && rest[name.len()..].trim_start().starts_with("()") {
                found.insert(format!("{service}:{}", pascal(&name)));
            }
        }
    }
    found
}

fn code_calls() -> BTreeSet<String> {
    let mut files = Vec::new();
    for crate_dir in ["steps/src", "worker/src", "engine/src", "slipway/src"] {
        rust_files(&workspace().join(crate_dir), &mut files);
    }
    files.iter().flat_map(|f| calls_in(&std::fs::read_to_string(f).unwrap())).collect()
}

fn policy_actions(name: &str) -> BTreeSet<String> {
    let path = workspace().join("iam").join(name);
    let policy: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert_eq!(policy["Version"], "2012-10-17", "{name}");
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow", "{name}");
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => actions.extend(list.iter().map(|a| a.as_str().unwrap().to_string())),
            other => panic!("{name}: Action {other}"),
        }
    }
    assert!(actions.iter().all(|a| !a.contains('*')), "{name} names actions one by one: {actions:?}");
    actions
}

#[test]
fn the_scan_finds_calls_spelled_as_the_code_spells_them() {
    let text = "let answer = ecs\n    .run_task()\n    .cluster(c);\nself.config.ecs.is_some();\nstate.ecr().await;\n\
                cloudwatch.get_log_events().send();\nspecs.clone();\necr.credentials(&r);";
    let found: Vec<String> = calls_in(text).into_iter().collect();
    assert_eq!(found, ["ecs:RunTask", "logs:GetLogEvents"]);
}

#[test]
fn every_aws_call_is_allowed_by_its_processes_policy_and_nothing_more() {
    let calls = code_calls();
    for expected in [
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:StopTask",
        "ecr:GetAuthorizationToken",
        "logs:GetLogEvents",
        "ssm:PutParameter",
    ] {
        assert!(calls.contains(expected), "the scan found {calls:?}, not {expected}");
    }
    let worker = policy_actions("worker-policy.json");
    let server = policy_actions("server-policy.json");
    for call in &calls {
        let (policy, actions) = if SERVER_OPERATIONS.contains(&call.as_str()) {
            ("server-policy.json", &server)
        } else {
            ("worker-policy.json", &worker)
        };
        assert!(actions.contains(call), "{call} is called but {policy} does not allow it");
    }
    for action in worker.iter().chain(&server) {
        assert!(
            calls.contains(action) || NOT_CALLED_BUT_NEEDED.contains(&action.as_str()),
            "{action} is allowed but nothing calls it"
        );
    }
    // The task execution role pulls images, writes logs and reads the task's
    // secrets (the project secrets Slipway writes, and those jobs refer to by ARN
    // under the prefixes the policy names), nothing else.
    let execution = policy_actions("task-execution-policy.json");
    let expected: BTreeSet<String> = [
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchGetImage",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "ssm:GetParameters",
        "secretsmanager:GetSecretValue",
    ]
    .map(String::from)
    .into();
    assert_eq!(execution, expected);
}
