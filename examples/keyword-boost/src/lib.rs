//! A strategy written the way a third party would: one file, only `quarry-sdk`.
//!
//! Ingest stores a dense embedding and the item's hashed words. Search takes the dense
//! nearest neighbours as candidates, ranks the ones holding at least half of the query's words
//! (`min-coverage`) by how many they hold, and fuses both rankings with reciprocal-rank fusion,
//! so exact terms (names, codes) the embedding blurs still count. A candidate sharing one
//! incidental word with a longer query is no keyword evidence and is left out of the keyword
//! ranking: in reciprocal-rank fusion any entry there outweighs a step in the dense ranking.
//! Every tie is broken by the dense ranking, never by id.

use quarry_sdk::serde_json::json;
use quarry_sdk::{encoders, reciprocal_rank_fusion, Context, Descriptor, FieldKind, FieldValue, Hit, Item, Query, Result, Strategy};

const EMBEDDING: &str = "embedding";
const TERMS: &str = "terms";

struct KeywordBoost;

/// Words too common to be evidence that a text is about the query.
const STOPWORDS: &[&str] = &[
    "about", "after", "all", "also", "and", "any", "are", "but", "can", "did", "does", "for", "from", "had", "has",
    "have", "her", "him", "his", "how", "into", "its", "not", "now", "off", "one", "our", "out", "over", "she",
    "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "under", "very",
    "was", "were", "what", "when", "where", "which", "while", "who", "why", "will", "with", "would", "you", "your",
];

/// Lower-cased words of at least three letters, stopwords left out, hashed (FNV-1a) to codes.
fn terms(text: &str) -> Vec<u32> {
    let mut codes: Vec<u32> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 3)
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| w.bytes().fold(0x811c9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x01000193)))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

impl Strategy for KeywordBoost {
    fn describe() -> Descriptor {
        Descriptor::new("keyword-boost", env!("CARGO_PKG_VERSION"))
            .description("Dense candidates re-ranked by keyword overlap, fused with RRF.")
            .model("text-model")
            .vector_field(EMBEDDING)
            .field(TERMS, FieldKind::Codes)
            .config_schema(json!({
                "type": "object",
                "properties": {
                    "text-model": {"type": "string"},
                    "candidates": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 50},
                    "min-coverage": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5, "description": "the share of the query's words a candidate must hold to enter the keyword ranking"}
                },
                "required": ["text-model"],
                "additionalProperties": false
            }))
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let model: String = ctx.param("text-model")?;
        let texts: Vec<String> = items.iter().map(|i| i.text.clone().unwrap_or_default()).collect();
        let vectors = encoders::embed_texts(&model, &texts)?;
        for ((item, text), vector) in items.iter().zip(&texts).zip(vectors) {
            ctx.collection().put_vector(&item.id, EMBEDDING, vector)?;
            ctx.collection().put_field(&item.id, TERMS, &FieldValue::Codes(terms(text)))?;
        }
        Ok(())
    }

    fn search(ctx: &Context, query: Query) -> Result<Vec<Hit>> {
        let model: String = ctx.param("text-model")?;
        let candidates: u32 = ctx.param_or("candidates", 50)?;
        let min_coverage: f32 = ctx.param_or("min-coverage", 0.5)?;
        let text = query.text.clone().unwrap_or_default();
        let dense = ctx.collection().nearest(EMBEDDING, &encoders::embed_text(&model, &text)?, candidates.max(query.k))?;
        let wanted = terms(&text);
        // At least one word, and at least `min-coverage` of the query's.
        let needed = ((wanted.len() as f32 * min_coverage).ceil() as usize).max(1);
        // Candidates holding enough of the query's words, in dense order; a stable sort by
        // overlap then keeps the dense order among equal overlaps.
        let mut keyword = Vec::new();
        for hit in &dense {
            let overlap = match ctx.collection().get_field(&hit.id, TERMS)? {
                Some(FieldValue::Codes(codes)) => wanted.iter().filter(|t| codes.binary_search(t).is_ok()).count(),
                _ => 0,
            };
            if overlap >= needed {
                keyword.push(Hit::new(hit.id.clone(), overlap as f32));
            }
        }
        keyword.sort_by(|a, b| b.score.total_cmp(&a.score));
        // Dense first: equal fused scores go the way the dense ranking has them.
        let mut fused = reciprocal_rank_fusion(&[dense, keyword], 60.0);
        fused.truncate(query.k as usize);
        Ok(strictly_decreasing(fused))
    }
}

/// Lower each score that equals the one before it by the smallest step, so the order survives
/// the host's sort (which orders equal scores by id).
fn strictly_decreasing(mut hits: Vec<Hit>) -> Vec<Hit> {
    for i in 1..hits.len() {
        if hits[i].score >= hits[i - 1].score {
            hits[i].score = hits[i - 1].score.next_down();
        }
    }
    hits
}

quarry_sdk::export_strategy!(KeywordBoost);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopwords_and_short_words_are_not_terms() {
        assert!(terms("the and for with a an of").is_empty());
        assert_eq!(terms("Trains, trains and TRAINS").len(), 1);
        assert_eq!(terms("night train to Vienna"), {
            let mut t = terms("vienna train night");
            t.sort_unstable();
            t
        });
    }

    #[test]
    fn equal_scores_keep_their_order_through_an_id_sort() {
        let hits = strictly_decreasing(vec![Hit::new("z", 0.5), Hit::new("a", 0.5), Hit::new("m", 0.25)]);
        assert!(hits[0].score > hits[1].score && hits[1].score > hits[2].score, "{hits:?}");
        let mut sorted = hits.clone();
        quarry_sdk::helpers::sort_hits(&mut sorted);
        assert_eq!(sorted, hits);
    }
}
