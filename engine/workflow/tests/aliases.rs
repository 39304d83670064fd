//! YAML alias bombs are refused by the pre-pass, quickly and before serde expands them.

use std::path::Path;
use std::time::{Duration, Instant};

use shiphat_workflow::{Error, MAX_EXPANDED_NODES, parse};

fn refused_quickly(text: &str) {
    let start = Instant::now();
    let err = parse(text, Path::new("bomb.yaml")).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let Error::Invalid(d) = &err else {
        panic!("unexpected error: {err}")
    };
    assert_eq!(d.0.len(), 1, "{err}");
    let message = &d.0[0].message;
    assert!(
        message.contains(&format!("past {MAX_EXPANDED_NODES} nodes")),
        "{message}"
    );
}

/// Nine levels of anchors, each a list of nine aliases to the level below, with long strings at
/// the bottom: about 131 KB of text that serde_yaml would expand to over a gigabyte.
#[test]
fn nested_alias_bomb_is_refused() {
    let pad = "x".repeat(120);
    let mut text = String::from("name: bomb\nsteps:\n  - id: a\n    uses: echo\n    with:\n");
    text.push_str("      l0: &l0 [");
    text.push_str(&vec![format!("\"{pad}\""); 1000].join(", "));
    text.push_str("]\n");
    for level in 1..=9 {
        let prev = level - 1;
        let aliases = vec![format!("*l{prev}"); 9].join(", ");
        text.push_str(&format!("      l{level}: &l{level} [{aliases}]\n"));
    }
    assert!(text.len() > 100_000, "{}", text.len());
    refused_quickly(&text);
}

#[test]
fn billion_laughs_is_refused() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, cur) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let aliases = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{cur}: &{cur} [{aliases}]\n"));
    }
    refused_quickly(&text);
}

#[test]
fn a_few_aliases_are_accepted() {
    let text = "\
name: shared config
steps:
  - id: a
    uses: echo
    with: &common
      region: eu
      tags: &tags [web, api]
  - id: b
    uses: echo
    with: *common
  - id: c
    uses: echo
    with:
      tags: *tags
";
    let w = parse(text, Path::new("ok.yaml")).unwrap();
    assert_eq!(w.steps.len(), 3);
}

#[test]
fn oversized_text_is_refused() {
    let text = format!("name: big\n# {}\n", "x".repeat(2 * 1024 * 1024));
    assert!(matches!(
        parse(&text, Path::new("big.yaml")),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn oversized_file_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, vec![b'#'; 2 * 1024 * 1024]).unwrap();
    let err = shiphat_workflow::load(&path).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("over the limit"), "{err}");
}
