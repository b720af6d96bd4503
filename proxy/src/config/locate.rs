//! Maps a field path (`tenants[1].backend`, as serde_path_to_error prints it)
//! to its line and column in the YAML text, so that errors found after
//! deserializing (a tenant naming a backend that does not exist) still point
//! at the line to fix.
use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

#[derive(Default)]
pub struct Locations {
    by_path: HashMap<String, (usize, usize)>,
}

impl Locations {
    pub fn index(text: &str) -> Locations {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by serde_yaml with its own position; the
        // index then just holds what was read before it.
        let _ = parser.load(&mut walker, false);
        Locations {
            by_path: walker.found,
        }
    }

    /// The deepest field path on a 1-based line.
    pub fn path_at_line(&self, line: usize) -> Option<String> {
        self.by_path
            .iter()
            .filter(|(_, pos)| pos.0 == line)
            .max_by_key(|(path, pos)| (path.len(), pos.1))
            .map(|(path, _)| path.clone())
    }

    /// The 1-based line and column of `path`, or of its nearest ancestor that exists.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.by_path.get(&p) {
                return Some(*pos);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

enum Frame {
    Map {
        key: Option<String>,
        expecting_key: bool,
    },
    Seq {
        next: usize,
    },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    found: HashMap<String, (usize, usize)>,
}

impl Walker {
    fn path(&self) -> String {
        let mut out = String::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k), .. } => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Frame::Map { key: None, .. } => {}
                Frame::Seq { next } => out.push_str(&format!("[{}]", next.saturating_sub(1))),
            }
        }
        out
    }

    /// Called for every node; returns true when the node is a mapping key.
    fn enter_node(&mut self, key_text: Option<&str>, mark: Marker) -> bool {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            Some(Frame::Map { key, expecting_key }) if *expecting_key => {
                *key = key_text.map(str::to_string);
                *expecting_key = false;
                let p = self.path();
                self.found.entry(p).or_insert(pos);
                return true;
            }
            Some(Frame::Seq { next }) => *next += 1,
            _ => {}
        }
        let p = self.path();
        self.found.entry(p).or_insert(pos);
        false
    }

    fn value_done(&mut self) {
        if let Some(Frame::Map { expecting_key, .. }) = self.stack.last_mut() {
            *expecting_key = true;
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            // A scalar or an alias that is not a mapping key is a whole value.
            Event::Scalar(text, ..) if !self.enter_node(Some(&text), mark) => self.value_done(),
            Event::Alias(_) if !self.enter_node(None, mark) => self.value_done(),
            Event::Scalar(..) | Event::Alias(_) => {}
            Event::MappingStart(..) => {
                self.enter_node(None, mark);
                self.stack.push(Frame::Map {
                    key: None,
                    expecting_key: true,
                });
            }
            Event::SequenceStart(..) => {
                self.enter_node(None, mark);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_paths() {
        let text =
            "a: 1\ntenants:\n  - name: x\n    backend: nope\n  - name: y\n    api_keys: [k1, k2]\n";
        let loc = Locations::index(text);
        assert_eq!(loc.find("a"), Some((1, 1)));
        assert_eq!(loc.find("tenants[0].backend"), Some((4, 5)));
        assert_eq!(loc.find("tenants[1].name"), Some((5, 5)));
        assert_eq!(loc.find("tenants[1].api_keys[1]"), Some((6, 20)));
        // Missing leaf: falls back to the enclosing element.
        assert_eq!(
            loc.find("tenants[1].upstream_api_key").map(|p| p.0),
            Some(5)
        );
    }
}
