//! A YAML tree that remembers where every node and key came from.
//!
//! serde_yaml turns a spec into typed structs but forgets positions once it succeeds. The
//! checks that run after parsing (unknown keys, missing `needs`, cycles, types) still have
//! to point at a line and column, so the file is also read once with yaml-rust2's event
//! parser into this small tree of [`Node`]s, each with its [`Pos`].

use std::fmt;
use std::path::{Path, PathBuf};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in a file: 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

impl Pos {
    fn from_marker(m: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Self {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

/// A place in a spec file: file path plus position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The file.
    pub path: PathBuf,
    /// Where in it.
    pub pos: Pos,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.path.display(),
            self.pos.line,
            self.pos.col
        )
    }
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it is.
    pub kind: NodeKind,
}

/// The shape of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar and whether it was quoted (quoted scalars are always strings).
    Scalar(String, bool),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping: (key, key position, value), in file order.
    Map(Vec<(String, Pos, Node)>),
    /// An alias or anything else kiln does not look into.
    Other,
}

impl Node {
    /// The value under `key` of a mapping node, with the key's position.
    pub fn get(&self, key: &str) -> Option<(&Pos, &Node)> {
        match &self.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, p, v)| (p, v)),
            _ => None,
        }
    }

    /// The entries of a mapping node (empty for other nodes).
    pub fn entries(&self) -> &[(String, Pos, Node)] {
        match &self.kind {
            NodeKind::Map(entries) => entries,
            _ => &[],
        }
    }

    /// The items of a sequence node (empty for other nodes).
    pub fn items(&self) -> &[Node] {
        match &self.kind {
            NodeKind::Seq(items) => items,
            _ => &[],
        }
    }

    /// Follows a path of mapping keys.
    pub fn at(&self, path: &[&str]) -> Option<&Node> {
        let mut node = self;
        for key in path {
            node = node.get(key)?.1;
        }
        Some(node)
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    /// Where.
    pub pos: Pos,
    /// The parser's message.
    pub message: String,
}

/// Parses `source` into a [`Node`] tree (the first document; an empty file is an empty map).
///
/// # Errors
/// A [`SyntaxError`] with the scanner's position.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        pos: Pos::from_marker(*e.marker()),
        message: e.info().to_owned(),
    })?;
    Ok(builder.root.unwrap_or(Node {
        pos: Pos { line: 1, col: 1 },
        kind: NodeKind::Map(Vec::new()),
    }))
}

/// Collects events into nodes with a stack of open containers.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    root: Option<Node>,
}

enum Open {
    Seq(Pos, Vec<Node>),
    /// A map and the key waiting for its value.
    Map(Pos, Vec<(String, Pos, Node)>, Option<(String, Pos)>),
}

impl Builder {
    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Seq(_, items)) => items.push(node),
            Some(Open::Map(_, entries, pending)) => match pending.take() {
                Some((key, pos)) => entries.push((key, pos, node)),
                None => {
                    let key = match &node.kind {
                        NodeKind::Scalar(s, _) => s.clone(),
                        _ => String::from("<complex key>"),
                    };
                    *pending = Some((key, node.pos));
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(value, style, _, _) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.push_node(Node {
                    pos,
                    kind: NodeKind::Scalar(value, quoted),
                });
            }
            Event::SequenceStart(..) => self.stack.push(Open::Seq(pos, Vec::new())),
            Event::MappingStart(..) => self.stack.push(Open::Map(pos, Vec::new(), None)),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Open::Seq(pos, items)) => Node {
                        pos,
                        kind: NodeKind::Seq(items),
                    },
                    Some(Open::Map(pos, entries, _)) => Node {
                        pos,
                        kind: NodeKind::Map(entries),
                    },
                    None => return,
                };
                self.push_node(node);
            }
            Event::Alias(_) => self.push_node(Node {
                pos,
                kind: NodeKind::Other,
            }),
            _ => {}
        }
    }
}

/// Reads a file to a string, naming the file on failure.
pub(crate) fn read(path: &Path) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let doc = "name: x\nstages:\n  a:\n    uses: shell\n    needs: [b, c]\n";
        let root = parse(doc).expect("valid yaml");
        let (key_pos, _) = root.get("name").expect("name");
        assert_eq!(*key_pos, Pos { line: 1, col: 1 });
        let uses = root.at(&["stages", "a", "uses"]).expect("uses");
        assert_eq!(uses.pos, Pos { line: 4, col: 11 });
        let needs = root.at(&["stages", "a", "needs"]).expect("needs");
        assert_eq!(needs.items()[1].pos, Pos { line: 5, col: 16 });
        assert_eq!(needs.items()[1].kind, NodeKind::Scalar("c".into(), false));
    }

    #[test]
    fn syntax_errors_have_positions() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("unterminated flow sequence");
        assert!(err.pos.line >= 1, "{err:?}");
    }
}
