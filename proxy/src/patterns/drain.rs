//! A Drain-style template miner (He et al., "Drain: An Online Log Parsing
//! Approach with Fixed Depth Tree", ICWS 2017), written for Weir's limits.
//!
//! A message is split at whitespace and masked (`mask.rs`). Messages of one
//! token count that start with the same `depth` tokens share a leaf of a
//! fixed-depth prefix tree; a token that holds a value (or a digit), or one
//! past a node's `max_children`, goes down the `<*>` branch instead, so ids in
//! leading position do not blow up the tree. In its leaf the message joins the
//! most similar cluster (share of the template's constant tokens it equals) if
//! that share reaches `similarity`, and the template becomes their merge
//! (differing tokens turn into wildcards); otherwise it starts a cluster.
//!
//! Memory is bounded: at most `max_patterns` clusters (past it the least
//! recently seen one is evicted, and counted), each template at most
//! `max_tokens` tokens of at most `max_message_bytes` of its message (what is
//! past the cut is one trailing `<*>`), and the tree holds only paths to live
//! clusters (an eviction prunes its branch).
use super::mask::{has_wild, mask, merge, token_matches, WILD};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct MinerLimits {
    pub max_patterns: usize,
    pub max_tokens: usize,
    /// Only this much of a message is mined (cut at whitespace).
    pub max_message_bytes: usize,
    /// Share of a template's tokens a message must equal to join it (0 to 1).
    pub similarity: f64,
    /// Leading tokens that route a message in the tree.
    pub depth: usize,
    /// Children per tree node before new tokens go down the `<*>` branch.
    pub max_children: usize,
}

impl Default for MinerLimits {
    fn default() -> Self {
        MinerLimits {
            max_patterns: 1000,
            max_tokens: 64,
            max_message_bytes: 1024,
            similarity: 0.4,
            depth: 2,
            max_children: 100,
        }
    }
}

/// One pattern: its template and what the caller keeps with it.
#[derive(Debug)]
pub struct Cluster<T> {
    /// Never reused, so a report's ids stay valid across evictions.
    pub id: u64,
    pub tokens: Vec<Box<str>>,
    /// Messages mined into it.
    pub size: u64,
    /// When it last got a message, in messages mined (for eviction).
    last_seen: u64,
    /// The tree path to its leaf: token count, then the routing keys.
    path: (usize, Vec<Box<str>>),
    pub data: T,
}

impl<T> Cluster<T> {
    /// The template as text: tokens joined by one space.
    pub fn template(&self) -> String {
        self.tokens.join(" ")
    }
}

#[derive(Default, Debug)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Slots of the clusters in this leaf.
    clusters: Vec<usize>,
}

/// What [`Miner::add`] did with a message.
pub struct Added {
    /// The cluster's slot, for [`Miner::get_mut`] (valid until the next add).
    pub slot: usize,
    /// The message was looked at up to here (whitespace): an example is this prefix.
    pub used: usize,
    pub created: bool,
}

pub struct Miner<T> {
    limits: MinerLimits,
    slots: Vec<Option<Cluster<T>>>,
    free: Vec<usize>,
    live: usize,
    /// By token count.
    root: HashMap<usize, Node>,
    next_id: u64,
    clock: u64,
    pub evicted: u64,
}

/// The masked tokens of `message` within the limits, and how many bytes of it
/// they cover; past a limit the rest is one trailing wildcard.
pub fn tokenize<'a>(
    message: &'a str,
    limits: &MinerLimits,
) -> (Vec<std::borrow::Cow<'a, str>>, usize) {
    let mut tokens = Vec::new();
    let mut used = 0;
    for tok in message.split_whitespace() {
        let start = tok.as_ptr() as usize - message.as_ptr() as usize;
        let end = start + tok.len();
        if tokens.len() == limits.max_tokens || end > limits.max_message_bytes {
            tokens.push(std::borrow::Cow::Borrowed(WILD));
            return (tokens, used);
        }
        tokens.push(mask(tok));
        used = end;
    }
    (tokens, message.len())
}

/// A token routes down the tree by itself only if it holds no value.
fn route_key(token: &str) -> &str {
    if has_wild(token) || token.bytes().any(|b| b.is_ascii_digit()) {
        WILD
    } else {
        token
    }
}

/// Share of `template`'s tokens that `tokens` equal (a wildcard-only token
/// counts as no evidence either way, as in Drain), and the wildcard count.
/// A token with a wildcard inside (`uid=<*>`, `<*>:`) counts as equal when it
/// matches: counting only those with a word in them as evidence split
/// OpenSSH's `Bye Bye` from `disconnected by user` (0.787 to 0.995 grouping
/// accuracy) but merged away Linux's largest template (0.690 to 0.235).
fn similarity(template: &[Box<str>], tokens: &[std::borrow::Cow<str>]) -> (f64, usize) {
    if template.is_empty() {
        return (1.0, 0);
    }
    let (mut same, mut wild) = (0usize, 0usize);
    for (t, m) in template.iter().zip(tokens) {
        let (t, m) = (&**t, &**m);
        // Equal tokens first: the common case, and a byte comparison.
        if t == WILD {
            wild += 1;
        } else if t == m || token_matches(t, m) {
            same += 1;
        }
    }
    (same as f64 / template.len() as f64, wild)
}

impl<T> Miner<T> {
    pub fn new(limits: MinerLimits) -> Miner<T> {
        Miner {
            limits,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            root: HashMap::new(),
            next_id: 1,
            clock: 0,
            evicted: 0,
        }
    }

    pub fn limits(&self) -> &MinerLimits {
        &self.limits
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Cluster<T>> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub fn clusters(&self) -> impl Iterator<Item = &Cluster<T>> {
        self.slots.iter().flatten()
    }

    pub fn clusters_mut(&mut self) -> impl Iterator<Item = &mut Cluster<T>> {
        self.slots.iter_mut().flatten()
    }

    /// Mines `message` into a cluster; `fresh` makes the data of a new one.
    pub fn add(&mut self, message: &str, fresh: impl FnOnce() -> T) -> Added {
        self.clock += 1;
        let (tokens, used) = tokenize(message, &self.limits);
        let route = self.route(tokens.len(), &tokens);
        let best = self.best_in_leaf(tokens.len(), &route, &tokens);
        if let Some(slot) = best {
            let clock = self.clock;
            let c = self.slots[slot].as_mut().expect("a leaf holds live slots");
            for (t, m) in c.tokens.iter_mut().zip(&tokens) {
                if **t != **m {
                    *t = merge(t, m).into();
                }
            }
            c.size += 1;
            c.last_seen = clock;
            return Added {
                slot,
                used,
                created: false,
            };
        }
        if self.live >= self.limits.max_patterns {
            self.evict_least_recent();
        }
        let path = (tokens.len(), route.iter().map(|k| Box::from(*k)).collect());
        let cluster = Cluster {
            id: self.next_id,
            tokens: tokens.iter().map(|t| Box::from(&**t)).collect(),
            size: 1,
            last_seen: self.clock,
            path,
            data: fresh(),
        };
        self.next_id += 1;
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s] = Some(cluster);
                s
            }
            None => {
                self.slots.push(Some(cluster));
                self.slots.len() - 1
            }
        };
        self.live += 1;
        let path = &self.slots[slot].as_ref().unwrap().path;
        let (len, keys) = (path.0, path.1.clone());
        self.node_mut(len, &keys).clusters.push(slot);
        Added {
            slot,
            used,
            created: true,
        }
    }

    /// The most similar cluster of the leaf at `path`, if similar enough.
    fn best_in_leaf(
        &self,
        len: usize,
        route: &[&str],
        tokens: &[std::borrow::Cow<str>],
    ) -> Option<usize> {
        let node = self.find(len, route)?;
        let mut best: Option<(f64, usize, usize)> = None;
        for &slot in &node.clusters {
            let c = self.slots[slot].as_ref()?;
            let (sim, wild) = similarity(&c.tokens, tokens);
            // Ties go to the more general template, as in Drain.
            if best.is_none_or(|(s, w, _)| sim > s || (sim == s && wild > w)) {
                best = Some((sim, wild, slot));
            }
        }
        best.filter(|(s, _, _)| *s >= self.limits.similarity)
            .map(|(_, _, slot)| slot)
    }

    /// The routing keys of a message's leaf, without allocating a key: its
    /// leading tokens (a value routes as `<*>`), and `<*>` for a token new to
    /// a node that has `max_children` already.
    fn route<'a>(&self, len: usize, tokens: &'a [std::borrow::Cow<'a, str>]) -> Vec<&'a str> {
        let mut node = self.root.get(&len);
        tokens
            .iter()
            .take(self.limits.depth)
            .map(|t| {
                let k = route_key(t);
                let key = match node {
                    Some(n)
                        if !n.children.contains_key(k)
                            && n.children.len() >= self.limits.max_children =>
                    {
                        WILD
                    }
                    _ => k,
                };
                node = node.and_then(|n| n.children.get(key));
                key
            })
            .collect()
    }

    fn find(&self, len: usize, keys: &[&str]) -> Option<&Node> {
        let mut node = self.root.get(&len)?;
        for k in keys {
            node = node.children.get(*k)?;
        }
        Some(node)
    }

    fn node_mut(&mut self, len: usize, keys: &[Box<str>]) -> &mut Node {
        let mut node = self.root.entry(len).or_default();
        for k in keys {
            node = node.children.entry(k.clone()).or_default();
        }
        node
    }

    /// Drops the least recently seen cluster (the smaller on a tie) and the
    /// tree branch that only led to it.
    fn evict_least_recent(&mut self) {
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| (c.last_seen, c.size, i)))
            .min();
        let Some((_, _, slot)) = victim else { return };
        let c = self.slots[slot].take().expect("a live slot");
        self.free.push(slot);
        self.live -= 1;
        self.evicted += 1;
        let (len, keys) = c.path;
        if let Some(root) = self.root.get_mut(&len) {
            if prune(root, &keys, slot) {
                self.root.remove(&len);
            }
        }
    }
}

#[cfg(test)]
impl<T> Miner<T> {
    /// Nodes of the prefix tree, token-count roots included.
    pub fn tree_nodes(&self) -> usize {
        fn count(n: &Node) -> usize {
            1 + n.children.values().map(count).sum::<usize>()
        }
        self.root.values().map(count).sum()
    }
}

/// Removes `slot` from the leaf at `keys` below `node`; true when `node` is
/// left with neither clusters nor children (its parent drops it).
fn prune(node: &mut Node, keys: &[Box<str>], slot: usize) -> bool {
    match keys.split_first() {
        None => node.clusters.retain(|&s| s != slot),
        Some((k, rest)) => {
            if let Some(child) = node.children.get_mut(k) {
                if prune(child, rest, slot) {
                    node.children.remove(k);
                }
            }
        }
    }
    node.clusters.is_empty() && node.children.is_empty()
}
