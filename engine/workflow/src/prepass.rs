//! A walk over the YAML events, before serde sees the text. It builds a light tree that remembers
//! where every node and key sits (serde_yaml forgets positions once deserialisation succeeds),
//! and it refuses documents whose aliases would expand past a budget.

use std::collections::{BTreeMap, HashMap};

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use crate::Location;

/// The most nodes a workflow may hold once every alias is expanded. A large workflow has a few
/// thousand nodes; a hundred thousand leaves ample room for anchors reused across steps while
/// keeping the expanded document (which serde_yaml materialises in full) to a few megabytes.
/// Without this, a 131 KB file of nested aliases expands to over a gigabyte.
pub const MAX_EXPANDED_NODES: u64 = 100_000;

/// A node of the document, with aliases left unexpanded.
#[derive(Debug)]
pub(crate) struct Node {
    pub location: Location,
    pub kind: Kind,
}

#[derive(Debug)]
pub(crate) enum Kind {
    Scalar(String),
    Seq(Vec<Node>),
    /// Entries as (key, key position, value).
    Map(Vec<(String, Location, Node)>),
    Alias,
}

/// Why the pre-pass refused the text.
pub(crate) enum Refusal {
    Syntax(Option<Location>, String),
    TooManyNodes(Location),
}

enum Frame {
    Seq {
        location: Location,
        items: Vec<Node>,
        anchor: usize,
        count: u64,
    },
    Map {
        location: Location,
        entries: Vec<(String, Location, Node)>,
        key: Option<(String, Location)>,
        anchor: usize,
        count: u64,
    },
}

fn location(mark: &Marker) -> Location {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Location {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

/// Parses `text` into a tree, counting the expanded size as it goes.
pub(crate) fn scan(text: &str) -> Result<Option<Node>, Refusal> {
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    // Expanded node count of every anchored node seen so far, by anchor id.
    let mut anchors: HashMap<usize, u64> = HashMap::new();
    let mut total: u64 = 0;
    let mut root = None;
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| Refusal::Syntax(Some(location(e.marker())), e.info().to_string()))?;
        let here = location(&mark);
        let done: Option<(Node, u64, usize)> = match event {
            Event::StreamEnd | Event::DocumentEnd => break,
            Event::Scalar(value, _, anchor, _) => Some((
                Node {
                    location: here,
                    kind: Kind::Scalar(value),
                },
                1,
                anchor,
            )),
            Event::Alias(id) => {
                let count = anchors.get(&id).copied().unwrap_or(1);
                Some((
                    Node {
                        location: here,
                        kind: Kind::Alias,
                    },
                    count,
                    0,
                ))
            }
            Event::SequenceStart(anchor, _) => {
                stack.push(Frame::Seq {
                    location: here,
                    items: Vec::new(),
                    anchor,
                    count: 1,
                });
                total += 1;
                None
            }
            Event::MappingStart(anchor, _) => {
                stack.push(Frame::Map {
                    location: here,
                    entries: Vec::new(),
                    key: None,
                    anchor,
                    count: 1,
                });
                total += 1;
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    location,
                    items,
                    anchor,
                    count,
                }) => Some((
                    Node {
                        location,
                        kind: Kind::Seq(items),
                    },
                    count,
                    anchor,
                )),
                Some(Frame::Map {
                    location,
                    entries,
                    anchor,
                    count,
                    ..
                }) => Some((
                    Node {
                        // yaml-rust2 marks a block mapping where it recognised the first key,
                        // past the key itself; the key's own position is what a reader expects.
                        location: entries.first().map_or(location, |e| e.1),
                        kind: Kind::Map(entries),
                    },
                    count,
                    anchor,
                )),
                None => None,
            },
            Event::Nothing | Event::StreamStart | Event::DocumentStart => None,
        };
        let Some((node, count, anchor)) = done else {
            if total > MAX_EXPANDED_NODES {
                return Err(Refusal::TooManyNodes(here));
            }
            continue;
        };
        // Scalars and aliases add themselves here; collections counted their start already.
        if matches!(node.kind, Kind::Scalar(_) | Kind::Alias) {
            total = total.saturating_add(count);
        }
        if total > MAX_EXPANDED_NODES {
            return Err(Refusal::TooManyNodes(here));
        }
        if anchor != 0 {
            anchors.insert(anchor, count);
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq {
                items, count: c, ..
            }) => {
                *c = c.saturating_add(count);
                items.push(node);
            }
            Some(Frame::Map {
                entries,
                key,
                count: c,
                ..
            }) => {
                *c = c.saturating_add(count);
                match key.take() {
                    None => {
                        let text = match &node.kind {
                            Kind::Scalar(s) => s.clone(),
                            _ => "<complex key>".to_string(),
                        };
                        *key = Some((text, node.location));
                    }
                    Some((k, at)) => entries.push((k, at, node)),
                }
            }
        }
    }
    Ok(root)
}

/// Where each node sits, by path: `steps[2].needs[0]`, `inputs.version`. A mapping entry's
/// position is its key's.
#[derive(Debug, Default)]
pub(crate) struct Positions(BTreeMap<String, Location>);

impl Positions {
    pub fn new(root: Option<&Node>) -> Self {
        let mut map = BTreeMap::new();
        if let Some(root) = root {
            map.insert(String::new(), root.location);
            collect(root, "", &mut map);
        }
        Positions(map)
    }

    /// The position of `path`, or of its nearest recorded ancestor.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some(l) = self.0.get(path) {
                return Some(*l);
            }
            if path.is_empty() {
                return None;
            }
            path = parent(path);
        }
    }

    /// Every recorded position under `prefix`, keyed by the path relative to `prefix`.
    pub fn under(&self, prefix: &str) -> Vec<(String, Location)> {
        // Paths under a prefix sort together, so this is a range scan, not a pass over the
        // whole document for every step.
        self.0
            .range::<str, _>((
                std::ops::Bound::Excluded(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, l)| {
                let rest = &k[prefix.len()..];
                let rest = match rest.as_bytes().first() {
                    Some(b'.') => &rest[1..],
                    Some(b'[') => rest,
                    _ => return None,
                };
                Some((rest.to_string(), *l))
            })
            .collect()
    }
}

/// The path one level up: `a.b[2]` → `a.b`, `a.b` → `a`.
pub(crate) fn parent(path: &str) -> &str {
    match path.rfind(['.', '[']) {
        Some(i) => &path[..i],
        None => "",
    }
}

pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

fn collect(node: &Node, path: &str, map: &mut BTreeMap<String, Location>) {
    match &node.kind {
        Kind::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                map.insert(p.clone(), item.location);
                collect(item, &p, map);
            }
        }
        Kind::Map(entries) => {
            for (k, at, value) in entries {
                let p = join(path, k);
                map.insert(p.clone(), *at);
                collect(value, &p, map);
            }
        }
        Kind::Scalar(_) | Kind::Alias => {}
    }
}
