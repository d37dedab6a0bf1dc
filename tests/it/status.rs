//! `teatime status` (checked against docs/status.schema.json), `pause` and `resume`.

use serde_json::Value;

use crate::harness::{Tree, connected_pair, put_file, remove, wait_converged_to, wait_for};

/// Checks `v` against a JSON schema: the subset the status schema uses (`type`, `enum`,
/// `required`, `properties`, `items`, `minimum`). Returns every violation, by path.
fn violations(schema: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    let type_ok = |t: &str| match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "null" => v.is_null(),
        _ => false,
    };
    match &schema["type"] {
        Value::String(t) if !type_ok(t) => out.push(format!("{at}: {v} is not {t}")),
        Value::Array(ts) if !ts.iter().filter_map(Value::as_str).any(type_ok) => {
            out.push(format!("{at}: {v} is none of {ts:?}"))
        }
        _ => {}
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        out.push(format!("{at}: {v} not in {allowed:?}"));
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64())
        && n < min
    {
        out.push(format!("{at}: {n} < {min}"));
    }
    if let Some(obj) = v.as_object() {
        for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !obj.contains_key(key) {
                out.push(format!("{at}: missing {key}"));
            }
        }
        for (key, sub) in schema["properties"].as_object().into_iter().flatten() {
            if let Some(val) = obj.get(key) {
                violations(sub, val, &format!("{at}.{key}"), out);
            }
        }
    }
    if let Some(items) = v.as_array() {
        for (i, item) in items.iter().enumerate() {
            violations(&schema["items"], item, &format!("{at}[{i}]"), out);
        }
    }
}

pub fn check_schema(v: &Value) {
    let schema: Value =
        serde_json::from_str(include_str!("../../docs/status.schema.json")).expect("the schema is JSON");
    let mut out = Vec::new();
    violations(&schema, v, "status", &mut out);
    assert!(out.is_empty(), "status --json does not fit its schema:\n{}\n{v:#}", out.join("\n"));
}

#[test]
fn status_reports_peers_and_pause_holds_changes_until_resume() {
    let mut expected = Tree::new();
    put_file(&mut expected, "notes.md", "one\n");
    let (a, mut b) = connected_pair(&expected);

    let status = wait_for("a's status to show b connected", || {
        let v = a.cli_json(&["status", a.dir_arg(), "--json"]);
        let b_peer = v["peers"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "b").cloned());
        match b_peer {
            Some(p) if p["connected"] == true => Ok(v),
            other => Err(format!("{other:?}")),
        }
    });
    check_schema(&status);
    let peer = &status["peers"][0];
    assert_eq!((status["running"].as_bool(), status["paused"].as_bool()), (Some(true), Some(false)));
    assert_eq!(peer["path"]["kind"], "direct", "{status:#}");
    assert_eq!(status["role"], "owner");
    // The human form names the peer and how it is connected.
    let human = a.cli_ok(&["status", a.dir_arg()]);
    assert!(human.contains("peer b") && human.contains("connected since"), "{human}");

    // Files B's own rules exclude are reported as ignored there.
    b.write(".teatime/ignore", "*.log\n");
    a.write("build.log", "noise\n");
    put_file(&mut expected, "build.log", "noise\n");
    wait_for("a's status to count build.log as ignored on b", || {
        let v = a.cli_json(&["status", a.dir_arg(), "--json"]);
        if v["peers"][0]["ignored_there"] == 1 { Ok(()) } else { Err(format!("{}", v["peers"][0])) }
    });
    remove(&mut expected, "build.log");
    a.remove_file("build.log");

    // Paused: no sessions, changes wait (and say why); resumed, they go out.
    a.cli_ok(&["pause", a.dir_arg()]);
    let paused = wait_for("a to report b disconnected by the pause", || {
        let v = a.cli_json(&["status", a.dir_arg(), "--json"]);
        if v["peers"][0]["connected"] == false { Ok(v) } else { Err(format!("{v}")) }
    });
    check_schema(&paused);
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["peers"][0]["waiting_because"], "paused");
    a.write("while-paused.md", "held back\n");
    b.write("from-b.md", "also held back\n");
    // The peers keep dialing and A keeps refusing: after a few refused sessions, check.
    wait_for("a to refuse sessions at least twice", || {
        let n = a.log_text().matches("refusing a session: syncing is paused").count();
        if n >= 2 { Ok(()) } else { Err(format!("{n}")) }
    });
    assert_eq!(b.read("while-paused.md"), None);
    assert_eq!(a.read("from-b.md"), None);
    a.cli_ok(&["resume", a.dir_arg()]);
    put_file(&mut expected, "while-paused.md", "held back\n");
    put_file(&mut expected, "from-b.md", "also held back\n");
    wait_converged_to(&[&a, &b], &expected);

    // A stopped folder still answers, as not running; `status` alone lists every folder.
    b.stop();
    let stopped = b.cli_json(&["status", b.dir_arg(), "--json"]);
    check_schema(&stopped);
    assert_eq!(stopped["running"], false);
    let all = b.cli_json(&["status", "--json"]);
    let all = all.as_array().expect("an array of folders");
    assert_eq!(all.len(), 1);
    check_schema(&all[0]);
}
