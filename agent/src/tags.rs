//! The flow tag index: which installed flows carry which tags, so that a topology change deletes
//! exactly the kernel flows that depended on what changed (MidoNet's FlowTagIndexer).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

/// Maps tags to the flows that carry them, and flows back to their tags.
///
/// `T` is the tag type produced by the simulation, `F` the agent's flow identifier (a UFID).
#[derive(Debug)]
pub struct TagIndex<T, F> {
    by_tag: HashMap<T, HashSet<F>>,
    by_flow: HashMap<F, Box<[T]>>,
}

impl<T, F> Default for TagIndex<T, F> {
    fn default() -> Self {
        Self {
            by_tag: HashMap::new(),
            by_flow: HashMap::new(),
        }
    }
}

impl<T: Hash + Eq + Copy, F: Hash + Eq + Copy> TagIndex<T, F> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `flow` with `tags`, replacing any tags it had before.
    pub fn insert(&mut self, flow: F, tags: &[T]) {
        self.remove(flow);
        let mut unique: Vec<T> = Vec::with_capacity(tags.len());
        for &tag in tags {
            if !unique.contains(&tag) {
                unique.push(tag);
            }
        }
        for &tag in &unique {
            self.by_tag.entry(tag).or_default().insert(flow);
        }
        self.by_flow.insert(flow, unique.into_boxed_slice());
    }

    /// Forgets `flow`; returns whether it was known.
    pub fn remove(&mut self, flow: F) -> bool {
        let Some(tags) = self.by_flow.remove(&flow) else {
            return false;
        };
        for tag in tags.iter() {
            if let Some(flows) = self.by_tag.get_mut(tag) {
                flows.remove(&flow);
                if flows.is_empty() {
                    self.by_tag.remove(tag);
                }
            }
        }
        true
    }

    /// Removes and returns every flow that carries `tag`.
    pub fn invalidate(&mut self, tag: T) -> Vec<F> {
        let Some(flows) = self.by_tag.remove(&tag) else {
            return Vec::new();
        };
        let flows: Vec<F> = flows.into_iter().collect();
        for &flow in &flows {
            self.remove(flow);
        }
        flows
    }

    /// Removes and returns every flow that carries any of `tags`, each once.
    pub fn invalidate_all(&mut self, tags: impl IntoIterator<Item = T>) -> Vec<F> {
        let mut out = Vec::new();
        for tag in tags {
            out.extend(self.invalidate(tag));
        }
        out
    }

    pub fn tags_of(&self, flow: F) -> Option<&[T]> {
        self.by_flow.get(&flow).map(|t| &t[..])
    }

    pub fn contains(&self, flow: F) -> bool {
        self.by_flow.contains_key(&flow)
    }

    pub fn len(&self) -> usize {
        self.by_flow.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_flow.is_empty()
    }

    /// Number of distinct tags in use.
    pub fn tag_count(&self) -> usize {
        self.by_tag.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Tag {
        Port(u32),
        Route(u32),
    }

    #[test]
    fn invalidating_a_tag_returns_exactly_its_flows() {
        let mut idx = TagIndex::new();
        idx.insert(1u128, &[Tag::Port(1), Tag::Route(7)]);
        idx.insert(2, &[Tag::Port(2), Tag::Route(7)]);
        idx.insert(3, &[Tag::Port(3)]);

        let mut hit = idx.invalidate(Tag::Route(7));
        hit.sort();
        assert_eq!(hit, vec![1, 2]);
        assert!(!idx.contains(1) && !idx.contains(2));
        assert!(idx.contains(3));
        // The other tags of the removed flows are gone too: nothing leaks.
        assert!(idx.invalidate(Tag::Port(1)).is_empty());
        assert_eq!(idx.tag_count(), 1);
    }

    #[test]
    fn reinserting_a_flow_replaces_its_tags() {
        let mut idx = TagIndex::new();
        idx.insert(9u128, &[Tag::Port(1)]);
        idx.insert(9, &[Tag::Port(2), Tag::Port(2)]);
        assert!(idx.invalidate(Tag::Port(1)).is_empty());
        assert_eq!(idx.tags_of(9), Some(&[Tag::Port(2)][..]));
        assert_eq!(idx.invalidate_all([Tag::Port(2), Tag::Port(2)]), vec![9]);
        assert!(idx.is_empty());
        assert_eq!(idx.tag_count(), 0);
    }

    #[test]
    fn removing_an_unknown_flow_is_harmless() {
        let mut idx: TagIndex<Tag, u128> = TagIndex::new();
        assert!(!idx.remove(42));
        assert!(idx.invalidate(Tag::Port(1)).is_empty());
    }
}
