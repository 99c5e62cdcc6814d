//! Writes an `avg` collection from given identifiers, for the gallery-size benchmark: encoding a
//! million images is not what it measures.
//!
//! Config: `codebook`, an `avg-codebook` blob in hex. Ingest reads each item's metadata
//! `codes` (its identifier) and writes `identifier` and `embedding` (the codebook's normalised
//! reconstruction of the identifier), the fields `avg` searches; build stores the codebook.

use quarry_sdk::serde_json::{self, Value};
use quarry_sdk::{Context, Descriptor, Error, FieldKind, FieldValue, Hit, Item, Metric, Query, Result, Strategy};

/// The blob's header: magic, format, reserved, then dim, k and levels as u32.
const HEADER: usize = 24;

struct Codebook {
    bytes: Vec<u8>,
    dim: usize,
    words: Vec<f32>,
}

fn codebook(ctx: &Context) -> Result<Codebook> {
    let hex: String = ctx.param("codebook")?;
    let bytes = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| Error::invalid(format!("codebook: {e}"))))
        .collect::<Result<Vec<u8>>>()?;
    if bytes.len() < HEADER || &bytes[..8] != b"QAVGCBK\0" {
        return Err(Error::invalid("codebook: not an avg-codebook blob"));
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let (dim, k) = (word(12), word(16));
    let words: Vec<f32> = bytes[HEADER..].chunks_exact(4).take(k * dim).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    if words.len() != k * dim {
        return Err(Error::invalid("codebook: truncated"));
    }
    Ok(Codebook { bytes, dim, words })
}

struct AvgSynthetic;

impl Strategy for AvgSynthetic {
    fn describe() -> Descriptor {
        Descriptor::new("avg-synthetic", "0.1.0")
            .description("writes avg's fields from given identifiers (benchmarks)")
            .vector_field_with("embedding", Metric::InnerProduct)
            .field("identifier", FieldKind::Codes)
    }

    fn ingest(ctx: &Context, items: Vec<Item>) -> Result<()> {
        let book = codebook(ctx)?;
        let c = ctx.collection();
        for item in items {
            let meta: Value = serde_json::from_str(&item.metadata).map_err(|e| Error::invalid(e.to_string()))?;
            let codes: Vec<u32> = meta["codes"].as_array().into_iter().flatten().filter_map(Value::as_u64).map(|c| c as u32).collect();
            let mut v = vec![0f32; book.dim];
            for &code in &codes {
                let word = book.words.get(code as usize * book.dim..(code as usize + 1) * book.dim).ok_or_else(|| Error::invalid("code out of range"))?;
                v.iter_mut().zip(word).for_each(|(a, b)| *a += b);
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            v.iter_mut().for_each(|x| *x /= norm);
            c.put_field(&item.id, "identifier", &FieldValue::Codes(codes))?;
            c.put_vector(&item.id, "embedding", v)?;
        }
        Ok(())
    }

    fn build(ctx: &Context) -> Result<()> {
        ctx.collection().put_blob("avg-codebook", &codebook(ctx)?.bytes)
    }

    fn search(_ctx: &Context, _query: Query) -> Result<Vec<Hit>> {
        Err(Error::unsupported("avg-synthetic only writes collections; route them to avg to search"))
    }
}

quarry_sdk::export_strategy!(AvgSynthetic);
