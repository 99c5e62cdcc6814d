//! Code sequences of one field as a prefix trie: "which codes may follow this prefix", the
//! search space of constrained (generative) decoding, and "which items have this sequence".

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct Node {
    /// Child codes, ascending, and the child nodes at the same positions: "which codes follow"
    /// is then a copy of one slice, the question a beam search asks at every step.
    codes: Vec<u32>,
    children: Vec<usize>,
    /// Items whose sequence has this node's prefix; a node at zero is unlinked and reused.
    count: usize,
}

impl Node {
    fn child(&self, code: u32) -> Option<usize> {
        self.codes.binary_search(&code).ok().map(|i| self.children[i])
    }
}

#[derive(Debug)]
pub struct CodeTrie {
    nodes: Vec<Node>,
    free: Vec<usize>,
    by_item: HashMap<String, Vec<u32>>,
    by_codes: HashMap<Vec<u32>, BTreeSet<String>>,
}

impl Default for CodeTrie {
    fn default() -> Self {
        CodeTrie { nodes: vec![Node::default()], free: Vec::new(), by_item: HashMap::new(), by_codes: HashMap::new() }
    }
}

impl CodeTrie {
    /// Set `id`'s sequence, replacing any previous one.
    pub fn upsert(&mut self, id: &str, codes: &[u32]) {
        self.remove(id);
        let mut node = 0;
        self.nodes[0].count += 1;
        for &code in codes {
            node = match self.nodes[node].codes.binary_search(&code) {
                Ok(i) => self.nodes[node].children[i],
                Err(i) => {
                    let child = self.alloc();
                    let parent = &mut self.nodes[node];
                    parent.codes.insert(i, code);
                    parent.children.insert(i, child);
                    child
                }
            };
            self.nodes[node].count += 1;
        }
        self.by_item.insert(id.to_string(), codes.to_vec());
        self.by_codes.entry(codes.to_vec()).or_default().insert(id.to_string());
    }

    pub fn remove(&mut self, id: &str) {
        let Some(codes) = self.by_item.remove(id) else { return };
        if let Some(ids) = self.by_codes.get_mut(&codes) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_codes.remove(&codes);
            }
        }
        let mut node = 0;
        self.nodes[0].count -= 1;
        for code in codes {
            let i = self.nodes[node].codes.binary_search(&code).expect("a stored sequence is in the trie");
            let child = self.nodes[node].children[i];
            self.nodes[child].count -= 1;
            if self.nodes[child].count == 0 {
                self.nodes[node].codes.remove(i);
                self.nodes[node].children.remove(i);
                self.release(child);
                return;
            }
            node = child;
        }
    }

    /// The codes that follow `prefix` in some item's sequence, ascending.
    pub fn next_codes(&self, prefix: &[u32]) -> Vec<u32> {
        let mut node = 0;
        for &code in prefix {
            match self.nodes[node].child(code) {
                Some(child) => node = child,
                None => return Vec::new(),
            }
        }
        self.nodes[node].codes.clone()
    }

    /// The items whose sequence is exactly `codes`, in id order.
    pub fn items_with(&self, codes: &[u32]) -> Vec<String> {
        self.by_codes.get(codes).map(|ids| ids.iter().cloned().collect()).unwrap_or_default()
    }

    fn alloc(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        }
    }

    /// Return a subtree whose counts all reached zero to the free list. Iterative: a sequence
    /// of millions of codes is a path of millions of nodes, too deep for the stack.
    fn release(&mut self, node: usize) {
        let mut stack = vec![node];
        while let Some(node) = stack.pop() {
            stack.extend(std::mem::take(&mut self.nodes[node].children));
            self.nodes[node].codes = Vec::new();
            self.nodes[node].count = 0;
            self.free.push(node);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: scan every sequence.
    fn naive_next(items: &HashMap<String, Vec<u32>>, prefix: &[u32]) -> Vec<u32> {
        let set: BTreeSet<u32> = items.values().filter(|c| c.len() > prefix.len() && c.starts_with(prefix)).map(|c| c[prefix.len()]).collect();
        set.into_iter().collect()
    }

    #[test]
    fn answers_like_a_naive_scan_through_inserts_updates_and_deletes() {
        let mut state = 0x9E3779B97F4A7C15u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut trie = CodeTrie::default();
        let mut reference: HashMap<String, Vec<u32>> = HashMap::new();
        for step in 0..3_000 {
            let id = format!("item-{}", next(300));
            if next(4) == 0 {
                trie.remove(&id);
                reference.remove(&id);
            } else {
                let codes: Vec<u32> = (0..1 + next(4)).map(|_| next(5) as u32).collect();
                trie.upsert(&id, &codes);
                reference.insert(id, codes);
            }
            if step % 100 == 0 {
                for prefix in [vec![], vec![0], vec![1, 2], vec![3, 3, 3], vec![4, 0, 1]] {
                    assert_eq!(trie.next_codes(&prefix), naive_next(&reference, &prefix), "prefix {prefix:?} at step {step}");
                    let mut want: Vec<String> = reference.iter().filter(|(_, c)| **c == prefix).map(|(id, _)| id.clone()).collect();
                    want.sort();
                    assert_eq!(trie.items_with(&prefix), want);
                }
            }
        }
        // Deleting everything leaves an empty trie whose nodes are all reusable.
        for id in reference.keys() {
            trie.remove(id);
        }
        assert!(trie.next_codes(&[]).is_empty());
        assert_eq!(trie.nodes[0].count, 0);
        assert_eq!(trie.free.len() + 1, trie.nodes.len());
    }

    #[test]
    fn a_very_long_sequence_is_replaced_and_removed_without_recursion() {
        let mut trie = CodeTrie::default();
        let long: Vec<u32> = (0..2_000_000).collect();
        trie.upsert("long", &long);
        assert_eq!(trie.next_codes(&long[..10]), [10]);
        trie.upsert("long", &[1]);
        assert_eq!(trie.next_codes(&[]), [1]);
        trie.remove("long");
        assert!(trie.next_codes(&[]).is_empty());
        assert_eq!(trie.free.len() + 1, trie.nodes.len());
    }

    #[test]
    fn shared_sequences_map_to_all_their_items() {
        let mut trie = CodeTrie::default();
        trie.upsert("a", &[1, 2, 3]);
        trie.upsert("b", &[1, 2, 3]);
        trie.upsert("c", &[1, 2]);
        assert_eq!(trie.items_with(&[1, 2, 3]), ["a", "b"]);
        assert_eq!(trie.next_codes(&[1]), [2]);
        assert_eq!(trie.next_codes(&[1, 2]), [3]);
        trie.remove("a");
        assert_eq!(trie.items_with(&[1, 2, 3]), ["b"]);
        trie.upsert("b", &[7]);
        assert_eq!(trie.next_codes(&[1, 2]), Vec::<u32>::new());
        assert_eq!(trie.next_codes(&[]), [1, 7]);
    }
}
