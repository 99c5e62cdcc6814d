//! Team-draft interleaving (Radlinski, Kurup and Joachims, "How does clickthrough data reflect
//! retrieval quality?", CIKM 2008), as Solr's and OpenSearch's `TeamDraftInterleaving` do it:
//! the team with fewer picks picks next, a coin decides when the teams are equal, and each
//! team picks its best id not yet shown. The coin here is a function of a seed, so an
//! impression can be replayed.

use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// Which arm a shown id was picked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Team {
    A,
    B,
}

/// The merged list: ids in display order, each with its team.
pub type Interleaved = Vec<(String, Team)>;

/// Merge two best-first lists into at most `k` ids. Following the paper, the merge stops when
/// either list has nothing left to show. `seed` drives the coin (flip `n` is bit 0 of
/// SHA-256(seed, n)), so the same seed gives the same merge.
pub fn team_draft(a: &[String], b: &[String], k: usize, seed: &[u8]) -> Interleaved {
    let mut shown: HashSet<&str> = HashSet::new();
    let mut out = Vec::with_capacity(k.min(a.len() + b.len()));
    let (mut picks_a, mut picks_b, mut next_a, mut next_b, mut flips) = (0usize, 0usize, 0usize, 0usize, 0u64);
    loop {
        while next_a < a.len() && shown.contains(a[next_a].as_str()) {
            next_a += 1;
        }
        while next_b < b.len() && shown.contains(b[next_b].as_str()) {
            next_b += 1;
        }
        if out.len() >= k || next_a >= a.len() || next_b >= b.len() {
            return out;
        }
        let a_picks = picks_a < picks_b
            || (picks_a == picks_b && {
                flips += 1;
                coin(seed, flips - 1)
            });
        let (id, team) = if a_picks {
            picks_a += 1;
            (&a[next_a], Team::A)
        } else {
            picks_b += 1;
            (&b[next_b], Team::B)
        };
        shown.insert(id.as_str());
        out.push((id.clone(), team));
    }
}

fn coin(seed: &[u8], flip: u64) -> bool {
    let digest = Sha256::new().chain_update(b"quarry-team-draft\0").chain_update(seed).chain_update(flip.to_le_bytes()).finalize();
    digest[0] & 1 == 1
}

/// Who an impression's clicks favour: the team whose picks got more of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Win(Team),
    Tie,
}

/// Credit the clicks of one impression (ids not shown in it are ignored).
pub fn credit(shown: &[(String, Team)], clicks: &HashSet<String>) -> Outcome {
    let (mut a, mut b) = (0usize, 0usize);
    for (id, team) in shown {
        if clicks.contains(id) {
            match team {
                Team::A => a += 1,
                Team::B => b += 1,
            }
        }
    }
    match a.cmp(&b) {
        std::cmp::Ordering::Greater => Outcome::Win(Team::A),
        std::cmp::Ordering::Less => Outcome::Win(Team::B),
        std::cmp::Ordering::Equal => Outcome::Tie,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn teams_alternate_in_pairs_and_never_show_an_id_twice() {
        let a = ids(&["1", "2", "3", "4", "5"]);
        let b = ids(&["3", "1", "6", "7", "8"]);
        for seed in 0..64u32 {
            let merged = team_draft(&a, &b, 10, &seed.to_le_bytes());
            let unique: HashSet<&str> = merged.iter().map(|(id, _)| id.as_str()).collect();
            assert_eq!(unique.len(), merged.len());
            // After every pair of picks the teams are equal.
            for pair in merged.chunks(2).filter(|c| c.len() == 2) {
                assert_ne!(pair[0].1, pair[1].1, "seed {seed}: {merged:?}");
            }
            // Each team's picks keep its own list's order.
            for (team, list) in [(Team::A, &a), (Team::B, &b)] {
                let picked: Vec<usize> = merged.iter().filter(|(_, t)| *t == team).map(|(id, _)| list.iter().position(|x| x == id).unwrap()).collect();
                assert!(picked.windows(2).all(|w| w[0] < w[1]), "seed {seed}: {merged:?}");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_merge_and_seeds_vary_who_starts() {
        let a = ids(&["a1", "a2", "a3"]);
        let b = ids(&["b1", "b2", "b3"]);
        assert_eq!(team_draft(&a, &b, 6, b"q-1"), team_draft(&a, &b, 6, b"q-1"));
        let starts_a = (0..200u32).filter(|s| team_draft(&a, &b, 6, &s.to_le_bytes())[0].1 == Team::A).count();
        assert!((70..130).contains(&starts_a), "A started {starts_a} of 200 merges");
    }

    #[test]
    fn the_merge_stops_at_k_or_when_a_list_runs_out() {
        let a = ids(&["x", "y"]);
        let b = ids(&["x", "z", "w", "v"]);
        assert_eq!(team_draft(&a, &b, 1, b"s").len(), 1);
        for seed in 0..32u32 {
            let merged = team_draft(&a, &b, 10, &seed.to_le_bytes());
            let shown: Vec<&str> = merged.iter().map(|(id, _)| id.as_str()).collect();
            assert!(shown.contains(&"x") && shown.contains(&"y") && !shown.contains(&"v"), "seed {seed}: {merged:?}");
        }
        assert!(team_draft(&a, &[], 10, b"s").is_empty());
    }

    #[test]
    fn clicks_credit_the_team_that_picked_them() {
        let shown = vec![("p".to_string(), Team::A), ("q".to_string(), Team::B), ("r".to_string(), Team::B)];
        let clicks = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        assert_eq!(credit(&shown, &clicks(&["p"])), Outcome::Win(Team::A));
        assert_eq!(credit(&shown, &clicks(&["p", "q", "r"])), Outcome::Win(Team::B));
        assert_eq!(credit(&shown, &clicks(&["p", "q", "unknown"])), Outcome::Tie);
        assert_eq!(credit(&shown, &clicks(&[])), Outcome::Tie);
    }
}
