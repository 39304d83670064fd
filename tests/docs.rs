//! Every workflow in the docs and the READMEs passes `shiphat validate`: a newcomer copies
//! them, so a broken one costs minutes (the docs/workflows.md example once gave 8 errors, and
//! the metrics-verifier README's example named an unknown step).
//!
//! A ```yaml block is a workflow when it has a top-level `steps:`, or a list of steps when it
//! starts with `- id:`; a list is checked inside `name: example` / `steps:`. A block whose
//! steps use a plugin file the reader builds (`uses: ./notify.wasm`) is checked as a workflow
//! file only, without plugins. Other YAML (a `with:` fragment, say) is left alone.

mod support;

use std::path::{Path, PathBuf};

use support::{Run, TestDir};

/// The Markdown files a newcomer reads.
fn documents() -> Vec<PathBuf> {
    let root = support::root();
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs"), root.join("plugins")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() && name != "target" && !name.starts_with('.') {
                dirs.push(path);
            } else if name.ends_with(".md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The ```yaml blocks of a Markdown text, with the line each starts on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let fence = line.trim_start();
        match &mut current {
            None if fence == "```yaml" || fence == "```yml" => {
                current = Some((n + 2, String::new()))
            }
            Some(_) if fence.starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, block)) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// The block as a whole workflow file, or `None` when it is not a workflow.
fn as_workflow(block: &str) -> Option<String> {
    let first = block
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))?;
    if block.lines().any(|l| l.starts_with("steps:")) {
        if block.lines().any(|l| l.starts_with("name:")) {
            return Some(block.to_owned());
        }
        return Some(format!("name: example\n{block}"));
    }
    if first.starts_with("- id:") {
        let indent = block
            .lines()
            .find(|l| l.trim_start().starts_with("- id:"))
            .map(|l| l.len() - l.trim_start().len())
            .unwrap_or(0);
        let steps: String = block
            .lines()
            .map(|l| format!("  {}\n", l.get(indent..).unwrap_or(l.trim_start())))
            .collect();
        return Some(format!("name: example\nsteps:\n{steps}"));
    }
    None
}

fn uses_a_local_file(workflow: &str) -> bool {
    workflow.lines().any(|l| {
        l.trim_start()
            .strip_prefix("uses:")
            .is_some_and(|u| u.trim().starts_with("./") || u.trim().ends_with(".wasm"))
    })
}

#[test]
fn every_workflow_in_the_docs_validates() {
    let dir = TestDir::new();
    let root = support::root();
    let mut checked = 0;
    let mut problems = Vec::new();
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let shown = doc
            .strip_prefix(&root)
            .unwrap_or(&doc)
            .display()
            .to_string();
        for (line, block) in yaml_blocks(&text) {
            let Some(workflow) = as_workflow(&block) else {
                continue;
            };
            checked += 1;
            let file = dir.write(&format!("{checked}.yaml"), &workflow);
            let problem = if uses_a_local_file(&workflow) {
                shiphat_workflow::parse(&workflow, Path::new(&file))
                    .err()
                    .map(|e| e.to_string())
            } else {
                let mut command = dir.shiphat();
                command.arg("validate").arg(&file);
                let run = Run::of(command);
                (run.code != 0).then_some(run.stderr)
            };
            if let Some(problem) = problem {
                problems.push(format!("{shown}:{line}:\n{problem}"));
            }
        }
    }
    assert!(checked >= 8, "only {checked} workflows found in the docs");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
