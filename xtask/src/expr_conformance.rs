//! `cargo xtask expr-conformance DIR [NAME...]`: runs GitHub's own expression test data (the
//! JSON files of actions/languageservices `expressions/testdata`, or those whose names contain
//! a NAME) through the real `shiphat` binary, with the harness `tests/expressions.rs` uses,
//! and prints how many cases agree, file by file, and every case that does not. Fails when any
//! case disagrees.
//!
//! GitHub's data is not in this repository (we may read it, not copy it), so this is a run on
//! demand rather than a test: point it at a checkout of that folder.
//!
//! Each file maps a group name to a list of cases `{expr, contexts?, result?: {kind, value},
//! err?: {kind, value}}`. A `result` is the expected value (its `kind`, one of `Null`
//! `Boolean` `Number` `String` `Array` `Object`, must match the value's JSON type); an `err` of
//! kind `lexing` or `parsing` means shiphat must refuse the workflow, one of kind `evaluation`
//! that the step fails. Messages are not compared.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

#[path = "../../tests/support/expressions.rs"]
mod expressions;

use expressions::{Case, Expect, Shiphat};

pub fn run(args: &[String]) -> Result<()> {
    let Some((dir, only)) = args.split_first() else {
        bail!(
            "usage: cargo xtask expr-conformance DIR [NAME...], where DIR holds GitHub's expression test data (expressions/testdata of actions/languageservices) and NAMEs pick the files whose names contain them"
        );
    };
    let mut files = cases_by_file(Path::new(dir))?;
    if !only.is_empty() {
        files.retain(|(name, _)| only.iter().any(|o| name.contains(o.as_str())));
        if files.is_empty() {
            bail!("no file of `{dir}` has a name containing any of {only:?}");
        }
    }
    crate::plugins()?;
    crate::run(
        crate::cargo()
            .current_dir(crate::root())
            .args(["build", "--workspace"]),
    )?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"));
    let cache = tempfile::tempdir().context("cannot make a temporary directory")?;
    let shiphat = Shiphat {
        binary: target_dir.join("debug/shiphat"),
        plugin_path: crate::root().join("plugins/target/wasm32-wasip2/release"),
        cache_dir: cache.path().to_owned(),
    };
    let cases: Vec<Case> = files.iter().flat_map(|(_, cases)| cases.clone()).collect();
    eprintln!(
        "xtask: running {} cases from {} files through {}",
        cases.len(),
        files.len(),
        shiphat.binary.display()
    );
    let started = std::time::Instant::now();
    let verdicts = expressions::run_cases(&shiphat, &cases);
    let mut groups = Vec::new();
    let mut rest = verdicts.as_slice();
    for (name, file_cases) in &files {
        let (these, after) = rest.split_at(file_cases.len());
        groups.push((name.as_str(), these));
        rest = after;
    }
    let disagreements = expressions::disagreements(&cases, &verdicts);
    if !disagreements.is_empty() {
        println!("disagreements:\n\n{disagreements}");
    }
    println!("{}", expressions::table(&groups));
    let disagree = verdicts.iter().filter(|v| !v.agrees()).count();
    eprintln!(
        "xtask: {} of {} cases agree with GitHub, both as a value and as `if:` ({:.1} s)",
        cases.len() - disagree,
        cases.len(),
        started.elapsed().as_secs_f64()
    );
    if disagree > 0 {
        bail!("{disagree} of {} cases disagree with GitHub", cases.len());
    }
    Ok(())
}

/// Every `*.json` file of `dir`, by name, with its cases in file order.
fn cases_by_file(dir: &Path) -> Result<Vec<(String, Vec<Case>)>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read `{}`", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "json"));
    paths.sort();
    if paths.is_empty() {
        bail!(
            "`{}` holds no .json files; give the folder of GitHub's expression test data",
            dir.display()
        );
    }
    paths
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read `{}`", path.display()))?;
            let groups: Map<String, Value> = serde_json::from_str(&text)
                .with_context(|| format!("`{name}` is not a JSON object of case groups"))?;
            let mut cases = Vec::new();
            for (group, list) in &groups {
                let Value::Array(list) = list else {
                    bail!("`{name}`: group `{group}` is not a list of cases");
                };
                for entry in list {
                    cases.push(
                        case(&format!("{name} :: {group}"), entry)
                            .with_context(|| format!("`{name}`: a case of group `{group}`"))?,
                    );
                }
            }
            Ok((name.into_owned(), cases))
        })
        .collect()
}

/// One case of GitHub's data.
fn case(label: &str, entry: &Value) -> Result<Case> {
    let Some(expr) = entry["expr"].as_str() else {
        bail!("no `expr` string");
    };
    let contexts = match &entry["contexts"] {
        Value::Null => Map::new(),
        Value::Object(contexts) => contexts.clone(),
        other => bail!("`contexts` is not an object: {other}"),
    };
    let expect = match (&entry["result"], &entry["err"]) {
        (Value::Object(result), Value::Null) => {
            let value = result.get("value").cloned().unwrap_or(Value::Null);
            let kind = result.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind != expressions::kind(&value) {
                bail!("result kind `{kind}` does not fit its value {value}");
            }
            Expect::Value(value)
        }
        (Value::Null, Value::Object(err)) => match err.get("kind").and_then(Value::as_str) {
            Some("lexing" | "parsing") => Expect::Refused,
            Some("evaluation") => Expect::Fails,
            other => bail!("unknown error kind {other:?}"),
        },
        _ => bail!("a case has exactly one of `result` and `err`"),
    };
    Ok(Case {
        label: label.to_owned(),
        expr: expr.to_owned(),
        contexts,
        expect,
    })
}
