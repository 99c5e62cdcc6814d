//! In-memory indexes over stored fields, rebuilt from the store on first use and kept current
//! on every commit. Vector fields get an exact inner-product top-k.

use crate::store::{FieldValue, Store, WriteBatch};
use anyhow::{Result, bail};
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};

/// A scored item id, higher is better.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub id: String,
    pub score: f32,
}

/// All vectors of one field, row-major, with exact search.
#[derive(Debug, Default)]
pub struct FlatIndex {
    dim: usize,
    ids: Vec<String>,
    rows: HashMap<String, usize>,
    data: Vec<f32>,
}

impl FlatIndex {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Insert or replace `id`'s vector. The first vector fixes the field's dimension.
    pub fn upsert(&mut self, id: &str, vector: &[f32]) -> Result<()> {
        if self.ids.is_empty() {
            self.dim = vector.len();
        } else if vector.len() != self.dim {
            bail!("vector for `{id}` has {} dimensions but the field holds {}-dimensional vectors", vector.len(), self.dim);
        }
        if let Some(&row) = self.rows.get(id) {
            self.data[row * self.dim..(row + 1) * self.dim].copy_from_slice(vector);
        } else {
            self.rows.insert(id.to_string(), self.ids.len());
            self.ids.push(id.to_string());
            self.data.extend_from_slice(vector);
        }
        Ok(())
    }

    /// The `k` rows with the largest inner product with `query`, best first, ties by id.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Scored>> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        if query.len() != self.dim {
            bail!("query has {} dimensions but the field holds {}-dimensional vectors; is the query embedded with the same model?", query.len(), self.dim);
        }
        let mut heap: BinaryHeap<Worst> = BinaryHeap::with_capacity(k + 1);
        for (row, vector) in self.data.chunks_exact(self.dim).enumerate() {
            let score = dot(query, vector);
            if heap.len() < k {
                heap.push(Worst { score, row, ids: &self.ids });
            } else if let Some(top) = heap.peek()
                && (Worst { score, row, ids: &self.ids }) < *top
            {
                heap.pop();
                heap.push(Worst { score, row, ids: &self.ids });
            }
        }
        let mut out: Vec<Scored> = heap.into_iter().map(|w| Scored { id: self.ids[w.row].clone(), score: w.score }).collect();
        out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        Ok(out)
    }
}

/// Heap entry whose maximum is the worst kept hit (lowest score, then largest id).
struct Worst<'a> {
    score: f32,
    row: usize,
    ids: &'a [String],
}
impl PartialEq for Worst<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst<'_> {}
impl PartialOrd for Worst<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.score.total_cmp(&self.score).then_with(|| self.ids[self.row].cmp(&other.ids[other.row]))
    }
}

/// Inner product, written with independent accumulators so the compiler vectorises it.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

type FieldKey = (String, String);

/// The vector indexes of every collection, loaded lazily from the store.
pub struct Indexes {
    store: Arc<Store>,
    vectors: RwLock<HashMap<FieldKey, Arc<RwLock<FlatIndex>>>>,
}

impl Indexes {
    pub fn new(store: Arc<Store>) -> Self {
        Indexes { store, vectors: RwLock::new(HashMap::new()) }
    }

    fn vector_index(&self, collection: &str, field: &str) -> Result<Arc<RwLock<FlatIndex>>> {
        let key = (collection.to_string(), field.to_string());
        if let Some(index) = self.vectors.read().unwrap().get(&key) {
            return Ok(index.clone());
        }
        let mut map = self.vectors.write().unwrap();
        if let Some(index) = map.get(&key) {
            return Ok(index.clone());
        }
        let mut index = FlatIndex::default();
        for (id, value) in self.store.scan_field(collection, field)? {
            if let FieldValue::Vector(v) = value {
                index.upsert(&id, &v)?;
            }
        }
        let index = Arc::new(RwLock::new(index));
        map.insert(key, index.clone());
        Ok(index)
    }

    /// Exact nearest neighbours by inner product on a vector field.
    pub fn nearest(&self, collection: &str, field: &str, query: &[f32], k: usize) -> Result<Vec<Scored>> {
        let index = self.vector_index(collection, field)?;
        let index = index.read().unwrap();
        index.search(query, k)
    }

    /// Check a batch against the indexes before it is committed, so a bad vector fails the call
    /// instead of leaving the store and the index out of step.
    pub fn check(&self, batch: &WriteBatch) -> Result<()> {
        let mut dims: HashMap<(&str, &str), usize> = HashMap::new();
        for (collection, id, field, value) in &batch.fields {
            if let FieldValue::Vector(v) = value {
                let expected = match dims.get(&(collection.as_str(), field.as_str())) {
                    Some(&d) => Some(d),
                    None => {
                        let index = self.vector_index(collection, field)?;
                        let index = index.read().unwrap();
                        (!index.is_empty()).then(|| index.dim())
                    }
                };
                match expected {
                    Some(d) if d != v.len() => bail!(
                        "vector for `{id}` in field `{field}` has {} dimensions but the field holds {d}-dimensional vectors",
                        v.len()
                    ),
                    _ => {
                        dims.insert((collection.as_str(), field.as_str()), v.len());
                    }
                }
            }
        }
        Ok(())
    }

    /// Apply a committed batch to loaded indexes.
    pub fn apply(&self, batch: &WriteBatch) -> Result<()> {
        for (collection, id, field, value) in &batch.fields {
            if let FieldValue::Vector(v) = value {
                self.vector_index(collection, field)?.write().unwrap().upsert(id, v)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute_force(data: &[(String, Vec<f32>)], q: &[f32], k: usize) -> Vec<Scored> {
        let mut all: Vec<Scored> = data.iter().map(|(id, v)| Scored { id: id.clone(), score: v.iter().zip(q).map(|(a, b)| a * b).sum() }).collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
        all.truncate(k);
        all
    }

    #[test]
    fn exact_search_equals_brute_force() {
        // Deterministic pseudo-random data (xorshift), 37 dims to exercise the dot-product tail.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 2000) as f32 / 1000.0 - 1.0
        };
        let data: Vec<(String, Vec<f32>)> = (0..500).map(|i| (format!("item-{i}"), (0..37).map(|_| next()).collect())).collect();
        let mut index = FlatIndex::default();
        for (id, v) in &data {
            index.upsert(id, v).unwrap();
        }
        for _ in 0..10 {
            let q: Vec<f32> = (0..37).map(|_| next()).collect();
            let got = index.search(&q, 10).unwrap();
            let want = brute_force(&data, &q, 10);
            assert_eq!(got.iter().map(|s| &s.id).collect::<Vec<_>>(), want.iter().map(|s| &s.id).collect::<Vec<_>>());
            for (g, w) in got.iter().zip(&want) {
                assert!((g.score - w.score).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn upsert_replaces_and_checks_dimensions() {
        let mut index = FlatIndex::default();
        index.upsert("a", &[1.0, 0.0]).unwrap();
        index.upsert("b", &[0.0, 1.0]).unwrap();
        index.upsert("a", &[0.0, 0.5]).unwrap();
        assert_eq!(index.len(), 2);
        let hits = index.search(&[0.0, 1.0], 5).unwrap();
        assert_eq!(hits, vec![Scored { id: "b".into(), score: 1.0 }, Scored { id: "a".into(), score: 0.5 }]);
        assert!(index.upsert("c", &[1.0]).is_err());
        assert!(index.search(&[1.0, 2.0, 3.0], 1).is_err());
    }
}
