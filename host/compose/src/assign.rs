//! Sticky, weighted arm assignment: the arm is a function of the experiment's name, the
//! caller's key and the weights alone, so every replica (and every restart) agrees.

use sha2::{Digest, Sha256};

/// The index of the arm `key` gets among arms with these `weights` (finite, non-negative,
/// with a positive sum): the key's point in [0, 1) from SHA-256(experiment, key) falls into the
/// arm whose share of the cumulative weights covers it.
pub fn arm_for(experiment: &str, key: &str, weights: &[f64]) -> usize {
    let digest = Sha256::new().chain_update(b"quarry-arm\0").chain_update(experiment.as_bytes()).chain_update(b"\0").chain_update(key.as_bytes()).finalize();
    let bits = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    // 53 bits fill an f64's mantissa exactly.
    let point = (bits >> 11) as f64 / (1u64 << 53) as f64;
    let total: f64 = weights.iter().sum();
    let mut cumulative = 0.0;
    for (index, weight) in weights.iter().enumerate() {
        cumulative += weight;
        if point * total < cumulative {
            return index;
        }
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_weights_and_a_key_keeps_its_arm() {
        let weights = [70.0, 20.0, 10.0];
        let mut counts = [0usize; 3];
        for key in 0..20_000 {
            counts[arm_for("exp", &format!("user-{key}"), &weights)] += 1;
        }
        for (count, weight) in counts.iter().zip(weights) {
            let share = *count as f64 / 20_000.0 * 100.0;
            assert!((share - weight).abs() < 1.5, "share {share} for weight {weight}: {counts:?}");
        }
        assert_eq!(arm_for("exp", "user-7", &weights), arm_for("exp", "user-7", &weights));
    }

    #[test]
    fn a_zero_weight_arm_gets_nothing_and_experiments_hash_apart() {
        assert!((0..1000).all(|k| arm_for("e", &k.to_string(), &[1.0, 0.0]) == 0));
        let differ = (0..1000).filter(|k| arm_for("e1", &k.to_string(), &[1.0, 1.0]) != arm_for("e2", &k.to_string(), &[1.0, 1.0])).count();
        assert!((350..650).contains(&differ), "{differ}");
    }
}
