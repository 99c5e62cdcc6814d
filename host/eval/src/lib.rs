//! The pure-logic core of `quarry eval`: retrieval evaluation with the metrics the papers use.
//!
//! - [`metrics`]: Recall@K, CIRCO's mAP@K, CIRR's Recall@K and Recall_subset@K, the FashionIQ
//!   averages, and latency percentiles, all over one [`metrics::Ranked`] list per query.
//! - [`datasets`]: loaders for the benchmark files a user brings (Karpathy-split Flickr30K/COCO,
//!   CIRR, CIRCO, FashionIQ), each checked against its image folder.
//! - [`report`]: aligned plain-text tables, side-by-side comparisons and JSON results.
//!
//! Nothing here runs a model or touches the host: a caller ranks the gallery for each query and
//! hands the ranked ids over.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod datasets;
pub mod metrics;
pub mod report;

/// Longest piece of user data (an id, a name) quoted in an error message, in characters.
const MESSAGE_CLIP_CHARS: usize = 120;

/// Shortens user data quoted in an error so a hostile multi-megabyte id cannot flood a terminal.
/// Error messages print it with `{:?}`, which also escapes control characters.
pub(crate) fn clip(s: &str) -> String {
    if s.chars().count() <= MESSAGE_CLIP_CHARS {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(MESSAGE_CLIP_CHARS - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_keeps_short_strings_and_shortens_long_ones() {
        assert_eq!(clip("abc"), "abc");
        let long = "x".repeat(1000);
        let clipped = clip(&long);
        assert_eq!(clipped.chars().count(), super::MESSAGE_CLIP_CHARS);
        assert!(clipped.ends_with('…'));
    }
}
